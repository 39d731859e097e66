"""The table store: one interface, the same answers on delta-rs and on Spark."""

import datetime

import narwhals as nw
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.defs.resources import LakehouseResource, SparkResource
from mlops_assets.lakehouse.catalog import AccessDeniedError, TableRef
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.lakehouse.store import DeltaRsStore, SparkStore, TableMissingError
from mlops_assets.settings import load_settings

DAY1, DAY2 = datetime.date(2026, 1, 1), datetime.date(2026, 1, 2)
TABLE = TableRef("silver", "store_test")
UTC = datetime.UTC

ENGINES = ["polars", pytest.param("spark", marks=pytest.mark.slow)]


def rows(day: datetime.date, ids: list[str], amount: float = 1.0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": ids,
            "amount": [amount] * len(ids),
            "event_time": [datetime.datetime.combine(day, datetime.time(12), UTC)] * len(ids),
            "day": [day] * len(ids),
        },
        schema={
            "id": pl.String,
            "amount": pl.Float64,
            "event_time": pl.Datetime("us", "UTC"),
            "day": pl.Date,
        },
    )


@pytest.fixture(scope="module")
def spark_session():
    settings = load_settings({"MLOPS_SPARK_MASTER": "local[2]"})
    return SparkResource.from_settings(settings).session


@pytest.fixture(params=ENGINES)
def store(request, tmp_path):
    settings = load_settings(
        {"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ENV": "dev", "MLOPS_ENGINE": request.param}
    )
    if request.param == "spark":
        request.getfixturevalue("spark_session")  # one local[2] session for the module
    chosen = LakehouseResource.from_settings(settings).store("silver")
    assert chosen.engine == request.param
    assert isinstance(chosen, SparkStore if request.param == "spark" else DeltaRsStore)
    return chosen


def table(store, ref=TABLE, version=None) -> pl.DataFrame:
    return scan_table(store.uri(ref), version=version).collect().sort("day", "id")


def test_a_missing_table_is_named_when_read(store):
    assert not store.exists(TABLE)
    assert store.version(TABLE) is None
    with pytest.raises(TableMissingError, match="silver/store_test does not exist"):
        store.scan(TABLE)
    with pytest.raises(TableMissingError, match="silver/store_test"):
        store.read_window(TABLE, "day", DAY1, DAY2, ["id"])


def test_replacing_a_partition_leaves_the_others_as_they_were(store):
    first = store.replace_partition(TABLE, store.from_polars(rows(DAY1, ["a", "b"])), {"day": DAY1})
    store.replace_partition(TABLE, store.from_polars(rows(DAY2, ["c"])), {"day": DAY2})
    again = store.replace_partition(TABLE, store.from_polars(rows(DAY1, ["d"], 2.0)), {"day": DAY1})
    assert (first.rows_written, again.rows_written) == (2, 1)
    assert again.version == store.version(TABLE) == first.version + 2
    assert table(store).select("id", "amount").rows() == [("d", 2.0), ("c", 1.0)]
    back = store.to_polars(store.read_partition(TABLE, {"day": DAY1}))
    assert back.get_column("id").to_list() == ["d"]
    # Timestamps come back as UTC instants from both engines.
    assert back.schema["event_time"] == pl.Datetime("us", "UTC")
    assert store.to_polars(store.read_written(again)).get_column("id").to_list() == ["d"]


def test_merging_a_partition_updates_inserts_and_deletes_within_it(store):
    store.replace_partition(TABLE, store.from_polars(rows(DAY1, ["a", "b"])), {"day": DAY1})
    store.replace_partition(TABLE, store.from_polars(rows(DAY2, ["z"])), {"day": DAY2})
    merged = store.merge_partition(
        TABLE,
        store.from_polars(pl.concat([rows(DAY1, ["b"], 5.0), rows(DAY1, ["c"])])),
        {"day": DAY1},
        keys=["id"],
        lineage={"source": "test"},
    )
    assert merged.rows_written == 2
    assert table(store).select("id", "amount").rows() == [("b", 5.0), ("c", 1.0), ("z", 1.0)]


def test_a_window_is_read_at_one_version_and_names_it(store):
    store.replace_partition(TABLE, store.from_polars(rows(DAY1, ["a"])), {"day": DAY1})
    written = store.replace_partition(TABLE, store.from_polars(rows(DAY2, ["b"])), {"day": DAY2})
    window, version = store.read_window(TABLE, "day", DAY2, DAY2, ["id", "day"])
    assert version == written.version
    assert store.to_polars(window).rows() == [("b", DAY2)]
    assert store.count(store.scan(TABLE, version=version - 1)) == 1


def test_frames_on_the_engine_stack_by_name_and_keep_their_schema(store):
    stacked = store.concat(
        [store.from_polars(pl.DataFrame({"a": [1]})), store.from_polars(pl.DataFrame({"b": ["x"]}))]
    )
    out = store.to_polars(stacked).sort("a", nulls_last=True)
    assert out.rows() == [(1, None), (None, "x")]
    empty = store.empty({"id": pl.String, "day": pl.Date})
    assert store.count(empty) == 0
    with store.kept(store.lazy(store.from_polars(rows(DAY1, ["a"])))) as kept:
        assert store.count(kept.filter(nw.col("id") == "a")) == 1


def test_writes_go_to_the_active_environment_and_reads_follow_the_policy(tmp_path):
    prod = LakehouseResource(env="prod", data_root=str(tmp_path)).store("silver")
    prod.replace_partition(TABLE, prod.from_polars(rows(DAY1, ["p"])), {"day": DAY1})
    dev = LakehouseResource(env="dev", data_root=str(tmp_path)).store("silver")
    # dev may read prod, read-only; prod may not read dev.
    assert store_ids(dev, env="prod") == ["p"]
    assert not dev.exists(TABLE)
    assert dev.write_uri(TABLE).startswith(str(tmp_path / "dev"))
    with pytest.raises(AccessDeniedError, match="'prod' may not read table .* of 'dev'"):
        prod.scan(TABLE, env="dev")


def store_ids(store, env):
    return store.to_polars(store.scan(TABLE, env=env)).get_column("id").to_list()


def test_both_engines_agree_on_figures(tmp_path, spark_session):
    data = pl.concat([rows(DAY1, ["a", "b", "c"], 3.0), rows(DAY1, [None], 4.0)])
    figures = {}
    for engine in ("polars", "spark"):
        settings = load_settings(
            {"MLOPS_DATA_ROOT": str(tmp_path / engine), "MLOPS_ENV": "dev", "MLOPS_ENGINE": engine}
        )
        store = LakehouseResource.from_settings(settings).store("silver")
        written = store.replace_partition(TABLE, store.from_polars(data), {"day": DAY1})
        figures[engine] = store.to_polars(
            store.written(store.from_polars(data), written).select(
                nw.len().alias("rows"),
                nw.col("id").n_unique().alias("ids"),
                nw.col("id").is_null().cast(nw.Int64).sum().alias("null_ids"),
                nw.col("amount").sum().alias("amount"),
                nw.col("event_time").max().alias("latest"),
            )
        )
    assert_frame_equal(figures["polars"], figures["spark"], check_dtypes=False)
    assert figures["polars"].row(0) == (
        4,
        4,
        1,
        13.0,
        datetime.datetime(2026, 1, 1, 12, tzinfo=UTC),
    )


test_both_engines_agree_on_figures = pytest.mark.slow(test_both_engines_agree_on_figures)


def test_the_groups_without_an_engine_setting_append_and_overwrite_on_delta_rs(tmp_path):
    settings = load_settings(
        {"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ENV": "dev", "MLOPS_ENGINE": "spark"}
    )
    store = LakehouseResource.from_settings(settings).store("ml")
    assert isinstance(store, DeltaRsStore)  # no JVM started for the ml group
    ref = TableRef("ml", "store_test")
    first = store.overwrite(ref, store.from_polars(rows(DAY1, ["a", "b"])), lineage={"n": 1})
    again = store.overwrite(ref, store.from_polars(rows(DAY2, ["c"])))
    assert (first.rows_written, again.rows_written, again.version) == (2, 1, first.version + 1)
    assert table(store, ref).get_column("id").to_list() == ["c"]
    log = TableRef("serving", "store_test")
    store.append(log, store.from_polars(rows(DAY1, ["a"])), partition_by=["day"])
    store.append(log, store.from_polars(rows(DAY2, ["b"])), partition_by=["day"])
    assert table(store, log).get_column("id").to_list() == ["a", "b"]
