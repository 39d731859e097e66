"""Readers of silver labels on both engines: a reversal (fraud, then not fraud) and a re-send.

Silver labels hold reports. Gold's merchant table and the merchant features read them as
labels: per transaction, the latest report with `reported_at` no later than the time they
work at. The lake here is written by hand (silver transactions and label reports), then the
real asset code runs on delta-rs/polars and on Spark.
"""

import datetime

import dagster as dg
import polars as pl
import pytest

from mlops_assets.defs.features import feature_assets
from mlops_assets.defs.gold import build_day
from mlops_assets.defs.resources import LakehouseResource, SparkResource
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.settings import load_settings
from mlops_assets.transforms.features import merchant_risk

UTC = datetime.UTC
D = datetime.date(2026, 1, 1)
ENGINES = ["polars", pytest.param("spark", marks=pytest.mark.slow)]
SILVER_TRANSACTIONS = TableRef("silver", "transactions")
SILVER_LABELS = TableRef("silver", "labels")
MERCHANT_DAILY = TableRef("features", "merchant_daily")


def day(n: int) -> datetime.date:
    return D + datetime.timedelta(days=n)


def at(n: int, hour: int) -> datetime.datetime:
    return datetime.datetime.combine(day(n), datetime.time(hour), UTC)


TRANSACTIONS = pl.DataFrame(
    {
        "transaction_id": ["t1", "t2", "t3", "t4"],
        "event_time": [at(0, h) for h in (1, 2, 3, 4)],
        "card_id": ["c1", "c2", "c3", "c4"],
        "merchant_id": ["m1", "m1", "m2", "m2"],
        "merchant_category": ["grocery", "grocery", "travel", "travel"],
        "amount": [10.0, 20.0, 30.0, 40.0],
    }
).with_columns(
    pl.col("event_time").dt.date().alias("event_date"),
    pl.col("event_time").dt.date().alias("landing_date"),
)
# t1: fraud, then reversed (not fraud). t2: fraud, then the same report re-sent. t3: a dispute
# (not fraud), later reported fraud. t4: never reported.
REPORTS = [
    ("t1", True, at(1, 10)),
    ("t2", True, at(1, 11)),
    ("t2", True, at(2, 8)),
    ("t3", False, at(2, 9)),
    ("t1", False, at(3, 9)),
    ("t3", True, at(4, 9)),
]
LABELS = pl.DataFrame(
    {
        "transaction_id": [r[0] for r in REPORTS],
        "is_fraud": [r[1] for r in REPORTS],
        "reported_at": [r[2] for r in REPORTS],
    },
    schema={
        "transaction_id": pl.String,
        "is_fraud": pl.Boolean,
        "reported_at": pl.Datetime("us", "UTC"),
    },
).with_columns(
    pl.col("reported_at").dt.date().alias("reported_date"),
    pl.col("reported_at").dt.date().alias("landing_date"),
)


@pytest.fixture(scope="module")
def spark_session():
    return SparkResource.from_settings(load_settings({"MLOPS_SPARK_MASTER": "local[2]"})).session


def write_by_landing_day(store, table: TableRef, rows: pl.DataFrame, upto: int) -> None:
    for landing in sorted(set(rows.get_column("landing_date").to_list())):
        if landing <= day(upto):
            part = rows.filter(pl.col("landing_date") == landing)
            store.replace_partition(table, store.from_polars(part), {"landing_date": landing})


@pytest.fixture(params=ENGINES)
def lake(request, tmp_path):
    """A lake of hand-written silver tables, on the engine of the parameter."""
    settings = load_settings(
        {
            "MLOPS_DATA_ROOT": str(tmp_path),
            "MLOPS_ENV": "dev",
            "MLOPS_ENGINE": request.param,
            "MLOPS_START_DATE": D.isoformat(),
        }
    )
    if request.param == "spark":
        request.getfixturevalue("spark_session")
    lakehouse = LakehouseResource.from_settings(settings)
    silver = lakehouse.store("silver")
    write_by_landing_day(silver, SILVER_TRANSACTIONS, TRANSACTIONS, 0)
    return settings, lakehouse


def gold_day(lakehouse) -> dict[str, dict]:
    store = lakehouse.store("gold")
    _, totals = build_day(store, D)
    table = scan_table(store.uri(TableRef("gold", "merchant_category_daily"))).collect()
    rows = {r["merchant_category"]: r for r in table.to_dicts()}
    return {"totals": totals, **rows}


def test_gold_counts_each_transaction_by_its_latest_report(lake):
    settings, lakehouse = lake
    silver = lakehouse.store("silver")
    # Known at the end of day 2: t1 fraud, t2 fraud (re-sent, counted once), t3 not fraud.
    write_by_landing_day(silver, SILVER_LABELS, LABELS, 2)
    before = gold_day(lakehouse)
    assert before["totals"]["fraud_transactions"] == 2
    assert (before["grocery"]["fraud_transactions"], before["grocery"]["labelled"]) == (2, 2)
    assert (before["travel"]["fraud_transactions"], before["travel"]["labelled"]) == (0, 1)
    assert before["grocery"]["fraud_amount"] == 30.0
    # Then t1's fraud is reversed (day 3) and t3 reported fraud (day 4).
    write_by_landing_day(silver, SILVER_LABELS, LABELS, 4)
    after = gold_day(lakehouse)
    assert after["totals"]["fraud_transactions"] == 2
    assert (after["grocery"]["fraud_transactions"], after["grocery"]["labelled"]) == (1, 2)
    assert after["grocery"]["fraud_amount"] == 20.0
    assert after["grocery"]["fraud_rate"] == 0.5
    assert (after["travel"]["fraud_transactions"], after["travel"]["labelled"]) == (1, 1)


def materialize(settings, lakehouse, key: str, n: int) -> dg.MaterializeResult:
    assets = {a.key.to_user_string(): a for a in feature_assets(settings)}
    result = dg.materialize(
        [assets[key]],
        partition_key=day(n).isoformat(),
        resources={"lakehouse": lakehouse},
        selection=[dg.AssetKey.from_user_string(key)],
    )
    assert result.success
    return result.asset_materializations_for_node(assets[key].op.name)[0]


def test_merchant_features_take_back_a_reversed_fraud_and_ignore_a_re_send(lake):
    settings, lakehouse = lake
    write_by_landing_day(lakehouse.store("silver"), SILVER_LABELS, LABELS, 4)
    for n in range(5):
        done = materialize(settings, lakehouse, "features/merchant_daily", n)
        assert done.metadata["unmatched_chargebacks"].value == 0
    store = lakehouse.store("features")
    daily = scan_table(store.uri(MERCHANT_DAILY)).collect()
    rows = {
        (r["merchant_id"], r["day"].day - 1, r["fraud_day"].day - 1): (
            r["transactions"],
            r["fraud_reported"],
            r["chargebacks_reported"],
            r["fraud_reversed"],
        )
        for r in daily.to_dicts()
    }
    assert rows == {
        ("m1", 0, 0): (2, 0, 0, 0),
        ("m2", 0, 0): (2, 0, 0, 0),
        ("m1", 1, 1): (0, 2, 2, 0),  # t1 and t2 reported fraud
        ("m2", 2, 2): (0, 0, 1, 0),  # t3's dispute; t2's re-send counts nothing
        ("m1", 3, 3): (0, 0, 1, 0),  # t1's reversal is a report of day 3 ...
        ("m1", 3, 1): (0, 0, 0, 1),  # ... taking back the fraud reported on day 1
        ("m2", 4, 4): (0, 1, 1, 0),  # t3 reported fraud after its dispute
    }
    # Merchant risk as known at the end of each day: frauds whose label then is fraud; on day
    # 31 the day-1 frauds left the window, and t1's reversal takes nothing back.
    expected = {1: (2, 0), 2: (2, 0), 3: (1, 0), 4: (1, 1), 30: (1, 1), 31: (0, 1)}
    for n, (m1, m2) in expected.items():
        frauds = dict(
            merchant_risk(daily, day(n)).select("merchant_id", "fraud_reported_30d").rows()
        )
        assert (frauds.get("m1", 0), frauds.get("m2", 0)) == (m1, m2), n
    # The risk asset itself, on the store's engine.
    risk_table = store.uri(TableRef("features", "merchant_risk"))
    for n in (3, 31):
        materialize(settings, lakehouse, "features/merchant_risk", n)
        risk = scan_table(risk_table).collect().filter(pl.col("day") == day(n))
        frauds = dict(risk.select("merchant_id", "fraud_reported_30d").rows())
        assert (frauds.get("m1", 0), frauds.get("m2", 0)) == expected[n], n
