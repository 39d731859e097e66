"""Ingestion edge cases: unusable files, labels reported twice."""

import datetime

import dagster as dg
import polars as pl

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.bronze import ingest_day
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.settings import load_settings

DAY1, DAY2 = datetime.date(2026, 1, 1), datetime.date(2026, 1, 2)
NOW = datetime.datetime(2026, 1, 3, tzinfo=datetime.UTC)
LABEL_HEADER = "transaction_id,card_id,reported_at,chargeback_reason,is_fraud\n"


def land(root, source: str, day: datetime.date, name: str, text: str) -> None:
    folder = root / "dev" / "landing" / source / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_a_day_without_a_usable_header_quarantines_every_line_and_adds_no_record(tmp_path):
    land(tmp_path, "labels", DAY1, "a.csv", "a,,b\n1,2,3\n")
    land(tmp_path, "labels", DAY1, "b.csv", "")
    lakehouse = LakehouseResource(env="dev", data_root=str(tmp_path))
    store = lakehouse.store("bronze")
    day = ingest_day(store, lakehouse.landing_root, "labels", DAY1, NOW)
    assert store.count(day.records) == 0
    assert store.count(day.quarantine) == 2
    assert (day.files, day.lines) == (2, 2)
    reasons = store.to_polars(day.quarantine).get_column("reason")
    assert set(reasons) == {"header 'a,,b' has an empty column name"}
    # The empty file adds no line; the records keep bronze's bounded schema.
    assert store.to_polars(day.records).columns == [
        "transaction_id",
        "reported_at",
        "is_fraud",
        "card_id",
        "chargeback_reason",
        "_rescued_data",
        "_source_file",
        "_line_number",
        "_ingested_at",
        "landing_date",
    ]


def test_a_label_reported_again_on_another_day_lands_once(tmp_path):
    land(
        tmp_path,
        "labels",
        DAY1,
        "l.csv",
        LABEL_HEADER + "tx_1,card_1,2026-01-01T10:00:00Z,fraud_card_not_present,1\n",
    )
    land(
        tmp_path,
        "labels",
        DAY2,
        "l.csv",
        LABEL_HEADER + "tx_1,card_1,2026-01-02T09:00:00Z,fraud_card_not_present,1\n"
        "tx_2,card_2,2026-01-02T09:30:00Z,fraud_card_present,1\n",
    )
    settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ENV": "dev"})
    defs = build_definitions(settings)
    selection = [
        dg.AssetKey(["bronze", "labels"]),
        dg.AssetKey(["quarantine", "bronze_labels"]),
        dg.AssetKey(["silver", "labels"]),
        dg.AssetKey(["quarantine", "silver_labels"]),
    ]
    job = defs.resolve_job_def("medallion_daily")
    with dg.DagsterInstance.ephemeral() as instance:
        for day in (DAY1, DAY2):
            result = job.execute_in_process(
                partition_key=day.isoformat(), instance=instance, asset_selection=selection
            )
            assert result.success
    labels = scan_table(tmp_path / "dev" / "lake" / "silver" / "labels").collect()
    assert sorted(labels["transaction_id"]) == ["tx_1", "tx_2"]
    first = labels.filter(pl.col("transaction_id") == "tx_1")
    assert first["landing_date"].item() == DAY1
