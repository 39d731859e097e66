"""The silver assets on feeds as they come: conflicts, label reports, zones, rescued columns."""

import datetime
import json

import dagster as dg
import polars as pl
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.settings import load_settings

DAY1, DAY2, DAY3 = (datetime.date(2026, 1, d) for d in (1, 2, 3))
TX_HEADER = (
    "transaction_id,event_time,card_id,merchant_id,merchant_category,amount,currency,country,"
    "card_country,channel,entry_mode,device_type,device_id"
)
LABEL_HEADER = "transaction_id,card_id,reported_at,chargeback_reason,is_fraud"
SELECTION = [
    dg.AssetKey(["bronze", "transactions"]),
    dg.AssetKey(["quarantine", "bronze_transactions"]),
    dg.AssetKey(["bronze", "labels"]),
    dg.AssetKey(["quarantine", "bronze_labels"]),
    dg.AssetKey(["silver", "transactions"]),
    dg.AssetKey(["quarantine", "silver_transactions"]),
    dg.AssetKey(["silver", "labels"]),
    dg.AssetKey(["quarantine", "silver_labels"]),
]


def tx(tx_id: str, time: str, amount: str = "10.00", channel: str = "pos") -> str:
    return f"{tx_id},{time},card_1,m_1,grocery,{amount},EUR,DE,DE,{channel},chip,terminal,dev_1"


def land(root, source: str, day: datetime.date, name: str, lines: list[str]) -> None:
    folder = root / "dev" / "landing" / source / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(lines) + "\n")


def run(root, days, environ=None):
    settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev", **(environ or {})})
    defs = build_definitions(settings)
    job = defs.resolve_job_def("medallion_daily")
    instance = dg.DagsterInstance.ephemeral()
    results = []
    for day in days:
        result = job.execute_in_process(
            partition_key=day.isoformat(), instance=instance, asset_selection=SELECTION
        )
        assert result.success
        results.append(result)
    return instance, results


def table(root, name: str) -> pl.DataFrame:
    return scan_table(root / "dev" / "lake" / name).collect()


def metadata(instance, *key: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(list(key)))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def checks(result) -> dict[tuple[str, str], bool]:
    return {
        (e.asset_key.to_user_string(), e.check_name): e.passed
        for e in result.get_asset_check_evaluations()
    }


@pytest.mark.parametrize("engine", ["polars", pytest.param("spark", marks=pytest.mark.slow)])
def test_conflicts_go_to_quarantine_with_their_reason_and_warn(tmp_path, engine):
    land(
        tmp_path,
        "transactions",
        DAY1,
        "a.csv",
        [TX_HEADER, tx("tx_1", "2026-01-01T10:00:00Z"), tx("tx_2", "2026-01-01T11:00:00Z")],
    )
    land(
        tmp_path,
        "transactions",
        DAY2,
        "b.csv",
        [
            TX_HEADER,
            tx("tx_1", "2026-01-01T10:00:00Z"),  # re-sent as it was: a duplicate
            tx("tx_2", "2026-01-01T11:00:00Z", amount="99.00"),  # differs from day 1
            tx("tx_3", "2026-01-02T09:00:00+01:00"),
            tx("tx_3", "2026-01-02T09:00:00+01:00", channel="online"),
            tx("tx_4", "2026-01-02T12:00:00Z"),
        ],
    )
    instance, results = run(tmp_path, [DAY1, DAY2], {"MLOPS_ENGINE": engine})
    silver = table(tmp_path, "silver/transactions").sort("transaction_id")
    assert silver["transaction_id"].to_list() == ["tx_1", "tx_2", "tx_4"]
    assert silver.filter(pl.col("transaction_id") == "tx_2")["amount"].item() == 10.0
    quarantine = table(tmp_path, "quarantine/silver_transactions").sort("_line_number")
    assert quarantine["_line_number"].to_list() == [3, 4, 5]
    reasons = quarantine["reason"].to_list()
    assert reasons[0] == (
        "transaction_id 'tx_2' conflicts with the published record of partition "
        "landing_date=2026-01-01 (transactions/2026-01-01/a.csv:3), which stays: it differs "
        "in amount"
    )
    assert reasons[1] == (
        "conflicting versions of transaction_id 'tx_3': transactions/2026-01-02/b.csv:5 "
        "differs in channel"
    )
    assert json.loads(quarantine["raw"][0])["amount"] == "99.00"
    meta = metadata(instance, "silver", "transactions")
    assert (meta["conflicts"], meta["conflicting_keys"], meta["duplicates_of_other_days"]) == (
        3,
        2,
        1,
    )
    day2 = checks(results[1])
    assert day2[("silver/transactions", "no_conflicting_records")] is False
    assert day2[("silver/transactions", "transaction_id_unique")] is True
    assert checks(results[0])[("silver/transactions", "no_conflicting_records")] is True


@pytest.mark.parametrize("engine", ["polars", pytest.param("spark", marks=pytest.mark.slow)])
def test_label_reports_keep_reversals_drop_resends_and_count_unknown_transactions(tmp_path, engine):
    land(tmp_path, "transactions", DAY1, "a.csv", [TX_HEADER, tx("tx_1", "2026-01-01T10:00:00Z")])
    land(tmp_path, "transactions", DAY2, "a.csv", [TX_HEADER, tx("tx_9", "2026-01-02T10:00:00Z")])
    land(
        tmp_path,
        "labels",
        DAY2,
        "l.csv",
        [
            LABEL_HEADER,
            "tx_1,card_1,2026-01-02T08:00:00Z,fraud_card_not_present,1",
            "tx_1,card_1,2026-01-02T09:00:00Z,fraud_card_not_present,1",
            "tx_7,card_1,2026-01-02T09:00:00Z,fraud_card_not_present,1",
        ],
    )
    land(
        tmp_path,
        "labels",
        DAY3,
        "l.csv",
        [
            LABEL_HEADER,
            "tx_1,card_1,2026-01-03T08:00:00Z,duplicate_processing,0",
            "tx_1,card_1,2026-01-03T09:00:00Z,duplicate_processing,0",
            "tx_9,card_1,2026-01-03T09:00:00Z,fraud_card_present,1",
            "tx_9,card_1,2026-01-03T09:00:00Z,fraud_card_present,0",
        ],
    )
    land(tmp_path, "transactions", DAY3, "a.csv", [TX_HEADER])
    instance, results = run(tmp_path, [DAY1, DAY2, DAY3], {"MLOPS_ENGINE": engine})
    labels = table(tmp_path, "silver/labels").sort("transaction_id", "reported_at")
    assert list(
        zip(
            labels["transaction_id"],
            labels["reported_at"].dt.hour(),
            labels["is_fraud"],
            strict=True,
        )
    ) == [("tx_1", 8, True), ("tx_1", 8, False), ("tx_7", 9, True)]
    assert labels["reported_at"].dt.day().to_list() == [2, 3, 2]
    day2, day3 = checks(results[1]), checks(results[2])
    assert day2[("silver/labels", "transactions_known")] is False
    assert day3[("silver/labels", "transactions_known")] is True
    assert day3[("silver/labels", "no_conflicting_records")] is False
    assert day3[("silver/labels", "transaction_id_reported_at_unique")] is True
    meta = metadata(instance, "silver", "labels")
    assert (meta["duplicates_within_day"], meta["conflicts"]) == (1, 2)
    assert meta["labels_for_unknown_transactions"] == 0
    quarantine = table(tmp_path, "quarantine/silver_labels")
    assert set(quarantine["_line_number"]) == {4, 5}
    assert "conflicting versions of transaction_id 'tx_9' reported_at" in quarantine["reason"][0]


@pytest.mark.parametrize("zone", [None, "Europe/Berlin"])
def test_times_without_offset_follow_the_declared_zone_of_the_source(tmp_path, zone, monkeypatch):
    if zone:
        monkeypatch.setenv("MLOPS_SOURCE_TIMEZONES", json.dumps({"transactions": zone}))
    land(
        tmp_path,
        "transactions",
        DAY1,
        "a.csv",
        [TX_HEADER, tx("tx_1", "2026-01-01T10:00:00"), tx("tx_2", "2026-01-01T10:00:00-05")],
    )
    instance, _ = run(tmp_path, [DAY1])
    silver = table(tmp_path, "silver/transactions").sort("transaction_id")
    times = dict(zip(silver["transaction_id"], silver["event_time"], strict=True))
    assert times["tx_2"] == datetime.datetime(2026, 1, 1, 15, tzinfo=datetime.UTC)
    if zone:
        assert times["tx_1"] == datetime.datetime(2026, 1, 1, 9, tzinfo=datetime.UTC)
        assert metadata(instance, "silver", "transactions")["source_timezone"] == zone
    else:
        assert "tx_1" not in times
        reason = table(tmp_path, "quarantine/silver_transactions")["reason"].item()
        assert reason == (
            "'2026-01-01T10:00:00' in event_time has no UTC offset and source transactions "
            "declares no time zone (MLOPS_SOURCE_TIMEZONES)"
        )


def test_rescued_source_columns_are_reported_and_kept_out_of_silver(tmp_path):
    land(
        tmp_path,
        "transactions",
        DAY1,
        "a.csv",
        [
            TX_HEADER + ",loyalty_tier",
            tx("tx_1", "2026-01-01T10:00:00Z") + ",gold",
            tx("tx_2", "2026-01-01T10:00:00Z", amount="-1") + ",silver",
        ],
    )
    instance, _ = run(tmp_path, [DAY1])
    bronze = table(tmp_path, "bronze/transactions")
    if "_rescued_data" not in bronze.columns:
        pytest.skip("bronze does not rescue source columns outside the contract")
    silver = table(tmp_path, "silver/transactions")
    assert "_rescued_data" not in silver.columns
    assert "loyalty_tier" not in silver.columns
    meta = metadata(instance, "silver", "transactions")
    assert meta["unmapped_source_columns"] == ["loyalty_tier"]
    raw = json.loads(table(tmp_path, "quarantine/silver_transactions")["raw"].item())
    assert json.loads(raw["_rescued_data"]) == {"loyalty_tier": "silver"}
