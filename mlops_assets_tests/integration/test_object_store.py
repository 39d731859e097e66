"""The lake on an S3-compatible object store: a real SeaweedFS on 127.0.0.1, free ports.

One server for the module (`stack.seaweedfs.scratch_s3`, stopped with its process group);
each test writes under a prefix of its own. Both Parquet writers of `delta_io` run on the
store; concurrent writers must all land; the medallion runs in Dagster on a lake on s3 and
equals the same days built on the local disk; Spark (local[2], in a process of its own so
that its JVM loads the S3A connector) writes and reads the same table as delta-rs.
"""

import datetime
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake
from polars.testing import assert_frame_equal
from pyarrow.fs import S3FileSystem

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.runner import run_days
from mlops_assets.lakehouse import delta_io
from mlops_assets.lakehouse.catalog import Catalog, TableRef
from mlops_assets.lakehouse.delta_io import (
    SchemaChangeError,
    SchemaPolicy,
    Writer,
    append_table,
    commit_versions,
    merge_partition,
    read_lineage,
    read_partition,
    scan_table,
    table_exists,
    table_version,
    write_partition,
)
from mlops_assets.settings import load_settings, project_root
from mlops_assets.simulate import Scenario, simulate

DAY1, DAY2, DAY3 = (datetime.date(2026, 1, d) for d in (1, 2, 3))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A SeaweedFS server (master, volume, filer, S3 gateway) with a bucket `lake`."""
    from mlops_assets.stack.process import StackError
    from mlops_assets.stack.seaweedfs import scratch_s3, weed_binary

    try:
        weed_binary()
    except StackError as error:
        pytest.skip(str(error))
    with scratch_s3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def options(s3):
    return s3.object_store().storage_options()


@pytest.fixture
def prefix(s3, request):
    """An s3:// folder of this test's own."""
    return f"s3://{s3.bucket}/tests/{request.node.name.replace('[', '-').strip(']')}"


def objects(s3, uri: str) -> list[str]:
    """Keys under an s3:// folder, read from the store itself."""
    store = S3FileSystem(
        access_key=s3.credentials.access_key_id,
        secret_key=s3.credentials.secret_access_key,
        region="us-east-1",
        scheme="http",
        endpoint_override=f"127.0.0.1:{s3.ports.s3}",
    )
    from pyarrow.fs import FileSelector

    infos = store.get_file_info(FileSelector(uri.removeprefix("s3://"), recursive=True))
    return [info.path for info in infos if info.is_file]


def day_frame(day: datetime.date, n: int, start: int = 0, **extra: str) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            "id": [f"{day}-{i}" for i in range(start, start + n)],
            "amount": [float(i) for i in range(start, start + n)],
            "landing_date": [day] * n,
        }
    )
    return frame.with_columns(pl.lit(v).alias(k) for k, v in extra.items())


@pytest.fixture(params=[Writer.DELTA_RS, Writer.POLARS])
def writer(request, monkeypatch):
    """Each Parquet writer of delta_io in turn, on the object store."""
    monkeypatch.setitem(delta_io.WRITERS, "object_store", request.param)
    return request.param


def test_partitions_are_replaced_merged_appended_and_read_back_on_s3(s3, options, prefix, writer):
    uri = f"{prefix}/t"
    for day, n in ((DAY1, 5), (DAY2, 7), (DAY3, 3)):
        write_partition(uri, day_frame(day, n), {"landing_date": day}, storage_options=options)
    before = table_version(uri, storage_options=options)
    replaced = write_partition(
        uri, day_frame(DAY2, 2, start=100), {"landing_date": DAY2}, storage_options=options
    )
    assert replaced.version == before + 1
    assert (replaced.rows_written, replaced.table_rows) == (2, 10)
    table = scan_table(uri, storage_options=options).collect()
    assert sorted(table.filter(pl.col("landing_date") == DAY2)["id"]) == [
        f"{DAY2}-100",
        f"{DAY2}-101",
    ]
    assert table.filter(pl.col("landing_date") != DAY2).height == 8
    assert read_partition(uri, {"landing_date": DAY1}, storage_options=options).height == 5
    # Additive schema on the store: a new column, older rows read it as null.
    added = write_partition(
        uri,
        day_frame(DAY3, 1, terminal_id="t9"),
        {"landing_date": DAY3},
        policy=SchemaPolicy.ADDITIVE,
        storage_options=options,
    )
    assert added.added_columns == ("terminal_id",)
    assert scan_table(uri, storage_options=options).collect()["terminal_id"].null_count() == 7
    with pytest.raises(SchemaChangeError, match="added columns extra"):
        write_partition(
            uri,
            day_frame(DAY1, 1, terminal_id="t", extra="x"),
            {"landing_date": DAY1},
            storage_options=options,
        )
    # Everything is in the bucket: data files and the log, nothing on the local disk.
    keys = objects(s3, uri)
    assert any("/_delta_log/" in k for k in keys)
    assert any(k.endswith(".parquet") and "landing_date=2026-01-02" in k for k in keys)

    features = f"{prefix}/features"
    frame = pl.DataFrame({"k": ["a", "b", "c"], "event_date": [DAY1] * 3, "v": [1, 2, 3]})
    merge_partition(
        features,
        frame,
        {"event_date": DAY1},
        keys=["k"],
        lineage={"v": 1},
        storage_options=options,
    )
    merged = merge_partition(
        features,
        frame.head(2).with_columns(pl.col("v") * 10),
        {"event_date": DAY1},
        keys=["k"],
        lineage={"v": 2},
        storage_options=options,
    )
    assert merged.table_rows == 2
    assert read_lineage(features, storage_options=options) == {"v": 2}
    assert scan_table(features, storage_options=options).collect().sort("k")["v"].to_list() == [
        10,
        20,
    ]

    log = f"{prefix}/log"
    days = [DAY1, DAY2]
    first = append_table(
        log,
        pl.DataFrame({"day": days * 2, "x": [1, 2, 3, 4]}),
        partition_by=["day"],
        storage_options=options,
    )
    second = append_table(
        log,
        pl.DataFrame({"day": [DAY1], "x": [5], "y": ["new"]}),
        partition_by=["day"],
        metadata={"source": "file-1"},
        storage_options=options,
    )
    assert (first.table_rows, second.table_rows, second.added_columns) == (4, 5, ("y",))
    assert second.version == table_version(log, storage_options=options)
    entry = DeltaTable(log, storage_options=options).history(1)[0]
    assert entry["source"] == "file-1"
    assert commit_versions(log, "source", "file-1", storage_options=options) == [second.version]
    assert commit_versions(log, "source", "file-2", storage_options=options) == []
    assert table_exists(log, storage_options=options)
    assert not table_exists(f"{prefix}/none", storage_options=options)


def test_the_settings_give_the_lake_its_options(s3, prefix, monkeypatch):
    for name, value in s3.environ().items():
        monkeypatch.setenv(name, value)
    uri = f"{prefix}/t"
    written = write_partition(uri, day_frame(DAY1, 4), {"landing_date": DAY1})
    assert written.table_rows == 4
    assert scan_table(uri).collect().height == 4
    monkeypatch.setenv("MLOPS_S3_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(Exception, match="(?i)signature|403|forbidden|denied"):
        scan_table(uri).collect()


def test_a_streamed_files_log_commit_is_found_on_s3(s3, prefix, monkeypatch):
    from mlops_assets.serving.scoring import STREAM_FILE_KEY, streamed_version

    for name, value in s3.environ().items():
        monkeypatch.setenv(name, value)
    uri = f"{prefix}/inference_log"
    assert streamed_version(uri, "a.csv") is None
    append_table(uri, day_frame(DAY1, 2), metadata={STREAM_FILE_KEY: "a.csv"})
    append_table(uri, day_frame(DAY1, 2, start=2), metadata={STREAM_FILE_KEY: "b.csv"})
    append_table(uri, day_frame(DAY1, 1, start=4))
    assert (streamed_version(uri, "a.csv"), streamed_version(uri, "b.csv")) == (0, 1)
    assert streamed_version(uri, "c.csv") is None


def test_concurrent_writers_all_land_and_nothing_is_lost(s3, options, prefix, writer):
    uri = f"{prefix}/t"
    days = [DAY1 + datetime.timedelta(days=i) for i in range(5)]

    def replace(day):
        return write_partition(
            uri, day_frame(day, 3), {"landing_date": day}, storage_options=options
        )

    def append(number):
        rows = pl.DataFrame({"day": [DAY1], "n": [number]})
        return append_table(f"{prefix}/log", rows, partition_by=["day"], storage_options=options)

    with ThreadPoolExecutor(max_workers=10) as pool:
        replaced = list(pool.map(replace, days))
        appended = list(pool.map(append, range(10)))
    assert scan_table(uri, storage_options=options).collect().height == 15
    log = scan_table(f"{prefix}/log", storage_options=options).collect()
    assert sorted(log["n"]) == list(range(10))
    for results, table in ((replaced, uri), (appended, f"{prefix}/log")):
        versions = [r.version for r in results]
        assert len(set(versions)) == len(versions), versions
        history = DeltaTable(table, storage_options=options).history()
        ids = [e.get(delta_io.WRITE_ID_KEY) for e in history if e.get(delta_io.WRITE_ID_KEY)]
        # One commit per write: none lost, none committed twice.
        assert len(ids) == len(set(ids)) == len(results)


def test_a_commit_that_loses_the_race_is_retried_on_top_of_the_winner(s3, options, prefix):
    """Two handles at the same version commit in turn: the store refuses the second PUT of
    that version (conditional put), so the second commit lands one version later."""
    uri = f"{prefix}/t"
    write_partition(uri, day_frame(DAY1, 2), {"landing_date": DAY1}, storage_options=options)
    first = DeltaTable(uri, storage_options=options)
    second = DeltaTable(uri, storage_options=options)
    start = first.version()
    write_deltalake(first, day_frame(DAY2, 3).to_arrow(), mode="append")
    write_deltalake(second, day_frame(DAY3, 4).to_arrow(), mode="append")
    assert (first.version(), second.version()) == (start + 1, start + 2)
    table = scan_table(uri, storage_options=options).collect()
    assert table.group_by("landing_date").len().sort("landing_date")["len"].to_list() == [2, 3, 4]


START = datetime.date(2026, 1, 1)
DAYS = [START, START + datetime.timedelta(days=1)]
MEDALLION = [
    TableRef("bronze", "transactions"),
    TableRef("bronze", "labels"),
    TableRef("silver", "transactions"),
    TableRef("silver", "labels"),
    TableRef("gold", "merchant_category_daily"),
    TableRef("quarantine", "bronze_transactions"),
    TableRef("quarantine", "silver_transactions"),
]
KEYS = {
    "bronze": ["_source_file", "_line_number"],
    "quarantine": ["_source_file", "_line_number"],
    "silver": ["transaction_id"],
    "gold": ["event_date", "merchant_category"],
}
RUN_TIME_COLUMNS = ("_ingested_at", "quarantined_at")


def build_medallion(root, environ):
    """The medallion (bronze, silver, gold, quarantine) of DAYS, in Dagster, in-process.

    The lakehouse resource reads the process's settings, so the lake's variables are set in
    the environment while the runs go.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith(("MLOPS_LAKE", "MLOPS_S3_"))]:
            patch.delenv(name)
        for name, value in environ.items():
            patch.setenv(name, value)
        settings = load_settings({**environ, "MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev"})
        defs = build_definitions(settings)
        with dg.DagsterInstance.ephemeral() as instance:
            runs = run_days(defs, DAYS, instance, log_level="ERROR")
            assert [r.success for r in runs] == [True] * len(DAYS)
            gold = run_days(
                defs,
                DAYS,
                instance,
                selection=[dg.AssetKey(["gold", "merchant_category_daily"])],
                log_level="ERROR",
            )
            assert all(r.success for r in gold)
    return settings


def test_the_medallion_runs_in_dagster_on_a_lake_on_s3(s3, tmp_path):
    scenario = Scenario.demo(
        days=len(DAYS), transactions_per_day=1_500, n_cards=200, seed=5, start_date=START
    )
    local_root, s3_root = tmp_path / "local", tmp_path / "s3"
    manifests = simulate(scenario, local_root / "dev" / "landing")
    simulate(scenario, s3_root / "dev" / "landing")
    local = build_medallion(local_root, {})
    remote = build_medallion(s3_root, s3.environ(prefix="medallion"))
    # The tables are on the store: no lake folder on the local disk.
    assert not (s3_root / "dev" / "lake").exists()
    on_s3, on_disk = Catalog(remote), Catalog(local)
    options = remote.storage_options
    for ref in MEDALLION:
        uri = on_s3.uri_for_read(ref)
        assert uri == f"s3://{s3.bucket}/medallion/dev/{ref.layer}/{ref.name}"
        stored = scan_table(uri, storage_options=options).collect()
        expected = scan_table(on_disk.uri_for_read(ref)).collect()
        keys = KEYS[ref.layer]
        drop = [c for c in RUN_TIME_COLUMNS if c in stored.columns]
        assert_frame_equal(
            stored.drop(drop).sort(keys),
            expected.drop(drop).sort(keys),
            check_column_order=False,
        )
    silver = scan_table(
        on_s3.uri_for_read(TableRef("silver", "transactions")), storage_options=options
    )
    assert silver.collect().height == sum(m.valid_transactions for m in manifests)


SPARK_ON_S3 = textwrap.dedent(
    """
    import datetime, json, sys
    import polars as pl
    from pyspark.sql import SparkSession
    from mlops_assets.lakehouse import delta_io, spark_io
    from mlops_assets.lakehouse.spark_session import spark_config
    from mlops_assets.settings import load_settings, project_root

    settings = load_settings()
    uri = sys.argv[1]
    conf = spark_config("local[2]", project_root() / ".jars")
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    day = datetime.date(2026, 1, 1)
    rows = spark.createDataFrame(
        [(f"s{i}", float(i), day) for i in range(6)], "id string, amount double, landing_date date"
    )
    by_spark = spark_io.write_partition(spark, uri, rows, {"landing_date": day})
    # delta-rs adds a day to the table Spark created; Spark reads both.
    other = datetime.date(2026, 1, 2)
    frame = pl.DataFrame({"id": ["p0", "p1"], "amount": [1.0, 2.0], "landing_date": [other] * 2})
    by_polars = delta_io.write_partition(uri, frame, {"landing_date": other})
    seen = spark_io.read_table(spark, uri).groupBy("landing_date").count().collect()
    print(json.dumps({
        "spark_version": by_spark.version,
        "spark_rows": by_spark.rows_written,
        "polars_version": by_polars.version,
        "spark_reads": {str(r["landing_date"]): r["count"] for r in seen},
        "spark_table_version": spark_io.table_version(spark, uri),
    }))
    spark.stop()
    """
)


@pytest.mark.slow
def test_spark_writes_and_reads_the_same_table_on_s3(s3, options, prefix, tmp_path):
    uri = f"{prefix}/t"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    env |= s3.environ() | {"MLOPS_DATA_ROOT": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", SPARK_ON_S3, uri],
        env=env,
        cwd=project_root(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["spark_rows"] == 6
    assert report["polars_version"] == report["spark_version"] + 1
    assert report["spark_table_version"] == report["polars_version"]
    assert report["spark_reads"] == {"2026-01-01": 6, "2026-01-02": 2}
    # delta-rs reads what Spark wrote, on the same store.
    table = scan_table(uri, storage_options=options).collect()
    assert table.height == 8
    assert sorted(table.filter(pl.col("landing_date") == DAY1)["id"]) == [f"s{i}" for i in range(6)]
    assert any("_delta_log" in key for key in objects(s3, uri))


@pytest.mark.slow
def test_the_stack_runs_the_lakes_store_and_keeps_its_tables_across_a_restart(tmp_path):
    from mlops_assets.stack.process import free_port
    from mlops_assets.stack.stack import Stack, free_ports

    endpoint = f"http://127.0.0.1:{free_port()}"
    environ = {
        "MLOPS_DATA_ROOT": str(tmp_path),
        "MLOPS_LAKE_URI": "s3://stack-lake/mlops",
        "MLOPS_S3_ENDPOINT": endpoint,
        "MLOPS_S3_ACCESS_KEY_ID": "stack-key",
        "MLOPS_S3_SECRET_ACCESS_KEY": "stack-secret-0123456789",
    }
    settings = load_settings(environ)
    stack = Stack(settings, ports=free_ports())
    store = stack.object_store
    assert store is not None and store.endpoint == endpoint
    assert store.server in stack._tiers()[0]
    assert stack.urls["seaweedfs"] == endpoint
    uri = Catalog(settings).uri_for_write(TableRef("bronze", "transactions"))
    try:
        store.start()
        assert "stack-lake" in store.buckets()
        written = write_partition(
            uri,
            day_frame(DAY1, 4),
            {"landing_date": DAY1},
            storage_options=settings.storage_options,
        )
        assert written.table_rows == 4
        [row] = [r for r in stack.status() if r.name == "seaweedfs"]
        assert row.up and row.port == store.ports.s3
        assert store.stop()
        # Started again on the same ports and folder: the table is still there.
        again = Stack(settings, ports=free_ports()).object_store
        assert again is not None and again.ports == store.ports
        again.start()
        assert scan_table(uri, storage_options=settings.storage_options).collect().height == 4
    finally:
        store.stop()
    with pytest.raises(Exception, match="MLOPS_S3_ACCESS_KEY_ID and MLOPS_S3_SECRET_ACCESS_KEY"):
        Stack(
            load_settings(
                {**environ, "MLOPS_S3_ACCESS_KEY_ID": "", "MLOPS_S3_SECRET_ACCESS_KEY": ""}
            )
        )


def test_the_lake_summary_lists_the_tables_on_s3(s3, tmp_path):
    from mlops_assets.defs.resources import LakehouseResource
    from mlops_assets.lakehouse.catalog import TableRef
    from mlops_assets.lakehouse.summary import lake_summary

    environ = s3.environ(prefix="tests/summary")
    settings = load_settings({**environ, "MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ENV": "dev"})
    # The resource carries the lake's settings: no process environment involved.
    store = LakehouseResource.from_settings(settings).store("silver")
    for name, rows in (("a", 3), ("b", 2)):
        frame = store.from_polars(day_frame(DAY1, rows))
        store.replace_partition(TableRef("silver", name), frame, {"landing_date": DAY1})
    summary = [(t.name, t.version, t.rows, t.uri) for t in lake_summary(settings)]
    lake = environ["MLOPS_LAKE_URI"]
    assert summary == [
        ("silver/a", 0, 3, f"{lake}/dev/silver/a"),
        ("silver/b", 0, 2, f"{lake}/dev/silver/b"),
    ]
