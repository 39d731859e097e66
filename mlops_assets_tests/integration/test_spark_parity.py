"""The same landing days built by polars and by Spark: equal tables, and each reads the other.

One Spark session (local[2]) for the module; small simulated days. Every table is read back
with polars/delta-rs, so the comparison also proves that Spark's tables read as polars' do.
"""

import datetime
import shutil

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.resources import SparkResource
from mlops_assets.defs.runner import run_days
from mlops_assets.lakehouse import delta_io, spark_io
from mlops_assets.lakehouse.delta_io import (
    DuplicateKeyError,
    PartitionMismatchError,
    SchemaChangeError,
    SchemaPolicy,
    read_lineage,
    scan_table,
)
from mlops_assets.settings import load_settings
from mlops_assets.simulate import Scenario, simulate

pytestmark = pytest.mark.slow

START = datetime.date(2026, 1, 1)
# Two days: the second repeats events of the first and brings late ones.
DAYS = [START + datetime.timedelta(days=i) for i in range(2)]
# The scenario sends no malformed label lines: these tables stay empty on both engines.
EMPTY_IN_THIS_SCENARIO = {"quarantine/bronze_labels", "quarantine/silver_labels"}
# Columns stamped with the wall clock of the run that wrote them.
RUN_TIME_COLUMNS = ("_ingested_at", "quarantined_at")
TABLE_KEYS = {
    "bronze/transactions": ["_source_file", "_line_number"],
    "bronze/labels": ["_source_file", "_line_number"],
    "quarantine/bronze_transactions": ["_source_file", "_line_number"],
    "quarantine/bronze_labels": ["_source_file", "_line_number"],
    "quarantine/silver_transactions": ["_source_file", "_line_number"],
    "quarantine/silver_labels": ["_source_file", "_line_number"],
    "silver/transactions": ["transaction_id"],
    "silver/labels": ["transaction_id"],
    "gold/merchant_category_daily": ["event_date", "merchant_category"],
    "features/card_behaviour": ["card_id", "transaction_id"],
    "features/merchant_daily": ["merchant_id", "day"],
    "features/merchant_risk": ["merchant_id", "day"],
}


@pytest.fixture(scope="module")
def spark():
    return SparkResource.from_settings(load_settings({"MLOPS_SPARK_MASTER": "local[2]"})).session


def build_lake(root, engine: str) -> None:
    settings = load_settings(
        {"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev", "MLOPS_ENGINE": engine}
    )
    defs = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        assert all(r.success for r in run_days(defs, DAYS, instance, log_level="ERROR"))
        features = run_days(defs, DAYS, instance, job_name="features_daily", log_level="ERROR")
        assert [r.success for r in features] == [True] * len(DAYS)


@pytest.fixture(scope="module")
def lakes(tmp_path_factory, spark):
    polars_root = tmp_path_factory.mktemp("polars")
    spark_root = tmp_path_factory.mktemp("spark")
    scenario = Scenario.demo(
        days=len(DAYS), transactions_per_day=800, n_cards=120, seed=3, start_date=START
    )
    simulate(scenario, polars_root / "dev" / "landing")
    shutil.copytree(polars_root / "dev" / "landing", spark_root / "dev" / "landing")
    build_lake(polars_root, "polars")
    build_lake(spark_root, "spark")
    return polars_root / "dev" / "lake", spark_root / "dev" / "lake"


def read(lake, name: str) -> pl.DataFrame:
    frame = scan_table(lake / name).collect()
    return frame.drop([c for c in RUN_TIME_COLUMNS if c in frame.columns])


@pytest.mark.parametrize("name", sorted(TABLE_KEYS))
def test_spark_builds_the_same_table_as_polars(lakes, name):
    polars_lake, spark_lake = lakes
    expected, actual = read(polars_lake, name), read(spark_lake, name)
    assert (expected.height == 0) == (name in EMPTY_IN_THIS_SCENARIO), name
    assert actual.schema == expected.schema
    keys = TABLE_KEYS[name]
    assert_frame_equal(
        actual.sort(keys), expected.sort(keys), check_exact=False, rel_tol=1e-9, abs_tol=1e-9
    )


def test_spark_commits_carry_lineage_that_delta_rs_reads(lakes):
    _, spark_lake = lakes
    lineage = read_lineage(spark_lake / "features" / "card_behaviour", DAYS[-1].isoformat())
    assert lineage is not None
    assert lineage["sources"]["silver/transactions"] >= 0
    assert lineage["lookback_days"] == 7


def day_frame(day: datetime.date, values: list[str], **extra) -> pl.DataFrame:
    stamp = datetime.datetime.combine(day, datetime.time(12), datetime.UTC)
    return pl.DataFrame(
        {
            "id": values,
            "at": [stamp] * len(values),
            "amount": [1.5] * len(values),
            "day": [day] * len(values),
            **extra,
        }
    )


def test_both_engines_write_partitions_of_one_table_in_turn(spark, tmp_path):
    uri = str(tmp_path / "shared")
    one, two = DAYS[0], DAYS[1]
    delta_io.write_partition(uri, day_frame(one, ["a", "b"]), {"day": one})
    written = spark_io.write_partition(
        spark, uri, spark.createDataFrame(day_frame(two, ["c"]).to_arrow()), {"day": two}
    )
    assert (written.rows_written, written.table_rows) == (1, 3)
    # Spark reads polars' partition, polars reads Spark's.
    assert sorted(r["id"] for r in spark_io.read_table(spark, uri).collect()) == ["a", "b", "c"]
    assert scan_table(uri).collect().sort("id")["id"].to_list() == ["a", "b", "c"]
    # Spark replaces the partition polars wrote, polars the one Spark wrote; nothing else moves.
    spark_io.write_partition(
        spark, uri, spark.createDataFrame(day_frame(one, ["d"]).to_arrow()), {"day": one}
    )
    delta_io.write_partition(uri, day_frame(two, ["e", "f"]), {"day": two})
    table = scan_table(uri).collect().sort("id")
    assert table.select("id", "day").rows() == [("d", one), ("e", two), ("f", two)]
    assert table.schema["at"] == pl.Datetime("us", "UTC")
    spark_rows = spark_io.read_table(spark, uri).orderBy("id").collect()
    assert [(r["id"], r["day"]) for r in spark_rows] == [("d", one), ("e", two), ("f", two)]
    # pyspark's rows hold the process's local wall time: the instant is 12:00 UTC.
    assert spark_rows[0]["at"].astimezone(datetime.UTC) == datetime.datetime(
        2026, 1, 1, 12, tzinfo=datetime.UTC
    )


def test_spark_follows_the_schema_policies(spark, tmp_path):
    uri = str(tmp_path / "policy")
    one, two = DAYS[0], DAYS[1]
    delta_io.write_partition(uri, day_frame(one, ["a"]), {"day": one}, policy=SchemaPolicy.ADDITIVE)
    wider = spark.createDataFrame(day_frame(two, ["b"], terminal=["t1"]).to_arrow())
    with pytest.raises(SchemaChangeError, match="added columns terminal"):
        spark_io.write_partition(spark, uri, wider, {"day": two})
    written = spark_io.write_partition(
        spark, uri, wider, {"day": two}, policy=SchemaPolicy.ADDITIVE
    )
    assert written.added_columns == ("terminal",)
    narrower = spark.createDataFrame(day_frame(two, ["c"]).drop("amount").to_arrow())
    spark_io.write_partition(spark, uri, narrower, {"day": two}, policy=SchemaPolicy.ADDITIVE)
    table = scan_table(uri).collect().sort("id")
    assert table.columns == ["id", "at", "amount", "day", "terminal"]
    assert table.select("id", "amount", "terminal").rows() == [("a", 1.5, None), ("c", None, None)]
    retyped = spark.createDataFrame(day_frame(two, ["d"]).to_arrow()).selectExpr(
        "id", "at", "cast(amount as string) as amount", "day"
    )
    with pytest.raises(SchemaChangeError, match="amount: double -> string"):
        spark_io.write_partition(spark, uri, retyped, {"day": two}, policy=SchemaPolicy.ADDITIVE)
    naive = spark.createDataFrame(day_frame(two, ["e"]).to_arrow()).selectExpr(
        "id", "cast(at as timestamp_ntz) as at", "amount", "day"
    )
    with pytest.raises(SchemaChangeError, match="at have no time zone"):
        spark_io.write_partition(spark, uri, naive, {"day": two}, policy=SchemaPolicy.ADDITIVE)
    stray = spark.createDataFrame(day_frame(one, ["f"]).to_arrow())
    with pytest.raises(PartitionMismatchError, match="1 rows lie outside partition day=2026-01-02"):
        spark_io.write_partition(spark, uri, stray, {"day": two}, policy=SchemaPolicy.ADDITIVE)


def test_merges_by_either_engine_update_insert_and_delete_within_the_day(spark, tmp_path):
    uri = str(tmp_path / "keyed")
    one, two = DAYS[0], DAYS[1]
    delta_io.merge_partition(uri, day_frame(one, ["a", "b"]), {"day": one}, keys=["id"])
    delta_io.merge_partition(uri, day_frame(two, ["x"]), {"day": two}, keys=["id"])
    changed = day_frame(one, ["b", "c"]).with_columns(pl.Series("amount", [9.0, 2.0]))
    written = spark_io.merge_partition(
        spark,
        uri,
        spark.createDataFrame(changed.to_arrow()),
        {"day": one},
        keys=["id"],
        lineage={"day": one.isoformat(), "by": "spark"},
    )
    assert (written.rows_written, written.table_rows) == (2, 3)
    table = scan_table(uri).collect().sort("id")
    assert table.select("id", "amount").rows() == [("b", 9.0), ("c", 2.0), ("x", 1.5)]
    assert read_lineage(uri, one.isoformat()) == {"day": one.isoformat(), "by": "spark"}
    twice = spark.createDataFrame(day_frame(one, ["a", "a"]).to_arrow())
    with pytest.raises(DuplicateKeyError, match="1 rows repeat a key"):
        spark_io.merge_partition(spark, uri, twice, {"day": one}, keys=["id"])
    delta_io.merge_partition(uri, day_frame(one, ["c"]), {"day": one}, keys=["id"])
    assert sorted(r["id"] for r in spark_io.read_table(spark, uri).collect()) == ["c", "x"]


def on_both(spark, frame: pl.DataFrame, compute) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`compute` on a polars frame and on the same rows as a Spark frame, both as polars."""
    expected = compute(frame)
    actual = compute(spark.createDataFrame(frame.to_arrow()))
    return expected, pl.from_arrow(actual.toArrow())


def test_card_windows_agree_at_their_edges_and_on_equal_times(spark):
    from mlops_assets.transforms.features import card_behaviour

    day = DAYS[1]
    noon = datetime.datetime.combine(day, datetime.time(12), datetime.UTC)
    hour, micro = datetime.timedelta(hours=1), datetime.timedelta(microseconds=1)
    times = [
        noon - datetime.timedelta(days=7),  # exactly 7 days before: outside the 7-day window
        noon - datetime.timedelta(days=7) + micro,  # just inside it
        noon - hour,  # exactly 1 h before noon: outside the 1 h window
        noon - hour + micro,
        noon,
        noon,  # the same instant twice
        datetime.datetime.combine(day, datetime.time(3), datetime.UTC),  # a night transaction
    ]
    transactions = pl.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(len(times))],
            "card_id": ["c1"] * (len(times) - 1) + ["c2"],
            "event_time": times,
            "amount": [10.0, 20.0, 5.0, 7.5, 100.0, 1.25, 3.0],
            "channel": ["online", "pos", "pos", "online", "atm", "online", "pos"],
            "country": ["DE", "FR", None, "DE", "DE", "DE", "DE"],
            "card_country": ["DE", "DE", "DE", None, "DE", "FR", "DE"],
        }
    ).with_columns(pl.col("event_time").dt.date().alias("event_date"))
    expected, actual = on_both(spark, transactions, lambda f: card_behaviour(f, day))
    assert expected.height == 5  # the day's transactions
    assert actual.schema == expected.schema
    keys = ["card_id", "transaction_id"]
    assert_frame_equal(actual.sort(keys), expected.sort(keys), check_exact=False, rel_tol=1e-12)
    at_noon = expected.filter(pl.col("transaction_id") == "t4").row(0, named=True)
    assert (at_noon["txn_count_1h"], at_noon["txn_count_7d"]) == (3, 5)


def test_silver_parsing_agrees_on_awkward_values(spark):
    from mlops_assets.transforms.silver import TRANSACTIONS, validate

    amounts = [" 12.5 ", "5.", ".5", "1e5", "inf", "nan", "-3", "2000000", "abc", "", "7"]
    times = [
        "2026-01-02T10:00:00Z",
        "2026-01-02 10:00:00+00:00",
        "2026-01-02T10:00:00.123456+0000",
        "2026-01-02T10:00:00.5",
        "2026-02-30T10:00:00Z",  # matches the pattern, is no date
        "2026-01-02T25:00:00Z",
        "2025-11-01T10:00:00Z",  # more than 30 days before its landing day
        "2026-01-04T03:00:00Z",  # more than 2 h after it
        "2026-01-02T10:00:00",
        " 2026-01-02T23:59:59Z ",
        "2026-01-02T10:00:00.123456789Z",
    ]
    channels = ["pos", "online", "atm", "POS", "x", ""]
    # Every amount with every time, so that each value meets each other rule.
    pairs = [(a, t) for a in amounts for t in times]
    count = len(pairs)
    bronze = pl.DataFrame(
        {
            "transaction_id": [f"t{i:03d}" for i in range(count)],
            "event_time": [t for _, t in pairs],
            "card_id": ["c"] * count,
            "merchant_id": ["m"] * count,
            "merchant_category": ["food"] * count,
            "amount": [a for a, _ in pairs],
            "currency": ["EUR"] * count,
            "channel": [channels[i % 7] if i % 7 < len(channels) else "pos" for i in range(count)],
            "_source_file": ["f.csv"] * count,
            "_line_number": list(range(2, count + 2)),
            "_ingested_at": [datetime.datetime(2026, 1, 3, tzinfo=datetime.UTC)] * count,
            "landing_date": [DAYS[1]] * count,
        }
    )

    def check(frame):
        import narwhals as nw

        valid, rejected = validate(nw.from_native(frame), TRANSACTIONS, "landing_date")
        return valid.to_native(), rejected.to_native()

    valid_pl, rejected_pl = check(bronze)
    valid_sp, rejected_sp = check(spark.createDataFrame(bronze.to_arrow()))
    valid_sp = pl.from_arrow(valid_sp.toArrow())
    rejected_sp = pl.from_arrow(rejected_sp.toArrow())
    assert 0 < valid_pl.height < count
    assert rejected_pl.get_column("reason").n_unique() >= 6
    assert_frame_equal(valid_sp.sort("transaction_id"), valid_pl.sort("transaction_id"))
    assert_frame_equal(rejected_sp.sort("transaction_id"), rejected_pl.sort("transaction_id"))
