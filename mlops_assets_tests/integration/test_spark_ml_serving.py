"""The online, ml and serving groups on Spark give the polars groups' results.

A copy of the suite's lake with its champion (the shared lake stays as other tests count on
it), the online store, the training set and a day's batch scoring materialized by the same
assets with the online, ml and serving engines set to spark (local[2]), then compared with the
polars results: the published rows key for key, the training set row for row, the predictions
bit for bit.
"""

import datetime
import shutil

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.definitions import build_definitions
from mlops_assets.features.online_store import OnlineStore
from mlops_assets.features.registry import CARD_BEHAVIOUR, MERCHANT_RISK
from mlops_assets.lakehouse.delta_io import append_table, read_lineage, scan_table
from mlops_assets.settings import load_settings
from mlops_assets_tests.integration.conftest import CUTOFF, DAYS, QUIET

# The shared lake and champion, then Spark, on a busy machine: beyond the suite's 600 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

# Columns that differ between two scorings of the same rows by nature.
RUN_COLUMNS = ("request_id", "logged_at", "latency_ms")


@pytest.fixture(scope="module")
def copied(cd_lake, champion, tmp_path_factory):
    """The lake and registry of `cd_lake` copied, with definitions on each engine."""
    settings, _, _ = cd_lake
    root = tmp_path_factory.mktemp("spark_ml")
    shutil.copytree(settings.data_root, root, dirs_exist_ok=True)
    base = {"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev", "MLOPS_SPARK_MASTER": "local[2]"}
    polars_defs = build_definitions(load_settings(base))
    spark_settings = load_settings(
        {
            **base,
            "MLOPS_ENGINE_ONLINE": "spark",
            "MLOPS_ENGINE_ML": "spark",
            "MLOPS_ENGINE_SERVING": "spark",
        }
    )
    assert spark_settings.engine_for("ml").value == "spark"
    assert spark_settings.engine_for("online").value == "spark"
    assert load_settings(base).engine_for("ml").value == "polars"  # the default
    with dg.DagsterInstance.ephemeral() as instance:
        yield spark_settings, polars_defs, build_definitions(spark_settings), instance


def materialize(defs, instance, key, **kwargs):
    job = dg.define_asset_job(f"only_{'_'.join(key)}", selection=[dg.AssetKey(key)])
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    result = merged.resolve_job_def(job.name).execute_in_process(
        instance=instance, raise_on_error=False, **kwargs
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def published(settings, table) -> dict:
    """Every key of a feature table as the online store serves it (found or not)."""
    keys = (
        scan_table(settings.lake_root / "features" / table.name)
        .select(pl.col(table.entity_keys[0]).cast(pl.String))
        .unique()
        .collect()
        .to_series()
        .sort()
        .to_list()
    )
    with OnlineStore(settings.online_store_path) as store:
        vectors = store.lookup_many(table.name, keys)
        described = store.describe(table.name)
    return {
        "vectors": [(v.key, v.found, v.feature_time, v.values) for v in vectors],
        "rows": described["rows"],
    }


def test_online_store_on_spark_publishes_the_polars_rows(copied):
    settings, polars_defs, spark_defs, instance = copied
    # Awkward rows added to the copy: a card's latest row repeated at the same time with a
    # greater and a smaller transaction id (the greater one must win on both engines, as in
    # the training set's join), and a card whose only row is older than the staleness bound.
    uri = settings.lake_root / "features" / CARD_BEHAVIOUR.name
    rows = scan_table(uri).collect()
    latest = rows.sort("event_time").tail(2)
    numeric = [f.name for f in CARD_BEHAVIOUR.features if rows.schema[f.name].is_numeric()]
    ties = pl.concat(
        [
            latest.with_columns(
                transaction_id.alias("transaction_id"),
                *(pl.lit(value).cast(rows.schema[name]).alias(name) for name in numeric),
            )
            for transaction_id, value in (
                (pl.col("transaction_id") + "~z", 7),
                (pl.lit(""), 3),
            )
        ]
    )
    oldest = rows.get_column("event_time").max() - datetime.timedelta(
        days=CARD_BEHAVIOUR.max_staleness_days + 1
    )
    stale = latest.head(1).with_columns(
        pl.lit("card-only-stale").alias("card_id"), pl.lit(oldest).alias("event_time")
    )
    append_table(uri, pl.concat([ties, stale]), partition_by=[CARD_BEHAVIOUR.partition_column])
    results = {}
    for engine, defs in (("polars", polars_defs), ("spark", spark_defs)):
        for table in (CARD_BEHAVIOUR, MERCHANT_RISK):
            result = materialize(defs, instance, ["online", table.name])
            [event] = result.asset_materializations_for_node(f"online__{table.name}")
            results[engine, table.name] = (published(settings, table), event.metadata)
    for table in (CARD_BEHAVIOUR, MERCHANT_RISK):
        expected, polars_meta = results["polars", table.name]
        actual, spark_meta = results["spark", table.name]
        assert actual == expected, table.name
        assert expected["rows"] > 100
        for name in ("keys", "latest_feature_time", "source_delta_version"):
            assert spark_meta[name] == polars_meta[name], (table.name, name)
    # The tie went to the greatest transaction id; the stale card is served the defaults.
    cards = results["spark", CARD_BEHAVIOUR.name][0]["vectors"]
    served = {key: (found, values) for key, found, _, values in cards}
    for card in latest.get_column("card_id"):
        assert all(served[card][1][name] == 7 for name in numeric), card
    assert served["card-only-stale"][0] is False


def test_training_set_on_spark_equals_the_polars_one(copied):
    settings, polars_defs, spark_defs, instance = copied
    uri = settings.lake_root / "ml" / "training_set"
    config = {
        "ops": {"ml__training_set": {"config": {"label_cutoff": CUTOFF, "days": 12}}},
        **QUIET,
    }
    materialize(polars_defs, instance, ["ml", "training_set"], run_config=config)
    expected = scan_table(uri).collect()
    polars_lineage = read_lineage(uri)
    materialize(spark_defs, instance, ["ml", "training_set"], run_config=config)
    actual = scan_table(uri).collect()
    assert expected.height > 1000 and expected.get_column("is_fraud").sum() > 0
    # The same rows in the same order, value for value.
    assert_frame_equal(actual, expected)
    assert read_lineage(uri) == polars_lineage


def test_batch_scoring_on_spark_logs_the_polars_rows_bit_for_bit(copied):
    settings, polars_defs, spark_defs, instance = copied
    day = DAYS[-1].isoformat()
    key = ["serving", "batch_predictions"]
    runs = {}
    for engine, defs in (("polars", polars_defs), ("spark", spark_defs)):
        result = materialize(defs, instance, key, partition_key=day, run_config=QUIET)
        runs[engine] = (
            result.run_id,
            result.asset_materializations_for_node(key[0] + "__" + key[1]),
        )
    log = scan_table(settings.lake_root / "serving" / "inference_log").collect()

    def rows_of(engine: str) -> pl.DataFrame:
        prefix = f"batch-{runs[engine][0][:8]}-"
        return (
            log.filter(pl.col("request_id").str.starts_with(prefix))
            .drop(RUN_COLUMNS)
            .sort("transaction_id")
        )

    expected, actual = rows_of("polars"), rows_of("spark")
    assert expected.height > 1000
    assert_frame_equal(actual, expected, check_exact=True)
    # Scores equal as float64 bit patterns, not merely close.
    assert (
        actual.get_column("score").to_numpy().view("int64")
        == expected.get_column("score").to_numpy().view("int64")
    ).all()
    # Both runs report the same batch.
    (polars_meta,), (spark_meta,) = runs["polars"][1], runs["spark"][1]
    for name in ("dagster/partition_row_count", "flagged", "model_version"):
        assert spark_meta.metadata[name] == polars_meta.metadata[name], name
    assert spark_meta.metadata["mean_score"].value == pytest.approx(
        polars_meta.metadata["mean_score"].value, rel=1e-12
    )


class _Holding:
    """A champion holder that holds one loaded model (the worker's `holder`)."""

    name = "held"

    def __init__(self, model):
        self.current = model

    def stop(self) -> None:
        return None


def test_landed_files_scored_on_spark_are_the_polars_rows_and_the_worker_writes_them(copied):
    import functools

    from mlops_assets.defs.resources import LakehouseResource, SparkResource
    from mlops_assets.defs.serving import load_champion
    from mlops_assets.features.online_store import open_online_store
    from mlops_assets.serving.inference_log import inference_schema, prepare_frame
    from mlops_assets.serving.scoring import score_file
    from mlops_assets.serving.spark_streaming import score_files
    from mlops_assets.serving.stream_worker import StreamWorker
    from mlops_assets.serving.streaming import (
        FileChangedError,
        file_state,
        score_landed_file,
    )

    settings, _, _, _ = copied
    landing = settings.landing_root
    [source] = sorted((landing / "transactions" / DAYS[-1].isoformat()).iterdir())
    header, *lines = source.read_text().splitlines()
    folder = landing / "transactions" / (DAYS[-1] + datetime.timedelta(days=9)).isoformat()
    folder.mkdir(parents=True)
    # A whole day's file, one with unreadable lines and a wrong type among valid ones, a file
    # with its header only and an empty one: every path of the file scorer.
    (folder / "whole.csv").write_text(source.read_text())
    dirty = [*lines[:40], "not,a,valid,line", lines[0].replace(",", ";"), *lines[40:80]]
    amount = header.split(",").index("amount")
    wrong = lines[90].split(",")
    wrong[amount] = "twelve"
    (folder / "dirty.csv").write_text("\n".join([header, *dirty, ",".join(wrong)]) + "\n")
    (folder / "header-only.csv").write_text(header + "\n")
    (folder / "empty.csv").write_text("")
    files = [p.relative_to(landing).as_posix() for p in sorted(folder.iterdir())]
    model = load_champion(LakehouseResource.from_settings(settings))
    spark = SparkResource.from_settings(settings).session
    now = datetime.datetime(2026, 1, 22, 1, tzinfo=datetime.UTC)
    on_spark = score_files(
        spark,
        landing,
        files,
        model,
        functools.partial(open_online_store, settings),
        run_id="parity",
        now=now,
    )
    assert sorted(on_spark) == sorted(files)
    with open_online_store(settings) as store:
        for file in files:
            expected = score_file(landing / file, landing, model, store, run_id="parity", now=now)
            got = on_spark[file]
            assert not isinstance(got, Exception), got
            assert (got.lines, got.scored, got.errors) == (
                expected.lines,
                expected.scored,
                expected.errors,
            )
            assert got.state == file_state(landing / file)
            assert_frame_equal(
                got.rows.drop("latency_ms", strict=False),
                expected.rows.drop("latency_ms", strict=False),
                check_exact=True,
            )
    dirty_batch = on_spark[f"transactions/{folder.name}/dirty.csv"]
    assert dirty_batch.errors == 3 and dirty_batch.scored == 80

    # A file that changed after the executors read it is refused by the protocol, unwritten.
    whole = f"transactions/{folder.name}/whole.csv"
    log_uri = str(settings.lake_root / "serving" / "spark_stream_scratch_log")
    with open(landing / whole, "a") as out:
        out.write(lines[-1] + "\n")
    with pytest.raises(FileChangedError, match="changed since it was scored"):
        score_landed_file(
            landing,
            whole,
            load_model=lambda: model,
            open_store=lambda: open_online_store(settings),
            log_uri=log_uri,
            checkpoint_uri=log_uri + "_checkpoint",
            log_table="scratch/log",
            checkpoint_table="scratch/checkpoint",
            run_id="parity",
            scored=on_spark[whole],
        )

    # The worker with the serving group on Spark: a poll's due files scored on the executors,
    # then logged and checkpointed file by file, each file's rows the polars scorer's.
    worker = StreamWorker(settings, holder=_Holding(model), settle_seconds=0.0)
    try:
        assert worker.engine.value == "spark"
        due = worker.pending()
        assert set(files) <= set(due)
        outcomes = {o.file: o for o in worker.run_once()}
        assert worker.failures == 0 and set(outcomes) == set(due)
        assert worker.run_once() == []  # all checkpointed
    finally:
        worker.close()
    logged = scan_table(settings.lake_root / "serving" / "inference_log").collect()
    schema = inference_schema(model.spec)
    with open_online_store(settings) as store:
        for file in files:
            rows = logged.filter(pl.col("request_id").str.starts_with(f"stream:{file}:"))
            expected = score_file(
                landing / file, landing, model, store, run_id=worker.run_id, now=now
            )
            assert outcomes[file].lines == expected.lines == rows.height
            if not rows.height:
                continue
            expected_rows = prepare_frame(expected.rows, schema)
            drop = ["latency_ms", "logged_at"]
            ok = pl.col("status") == "ok"
            assert_frame_equal(
                rows.filter(ok)
                .drop(drop)
                .sort("request_id")
                .select(expected_rows.drop(drop).columns),
                expected_rows.filter(ok).drop(drop).sort("request_id"),
                check_exact=True,
            )
            assert rows.filter(~ok).height == expected.errors

    # A `stream_predictions` run on the Spark engine scores its one file on the executors.
    _, _, spark_defs, instance = copied
    late = f"transactions/{folder.name}/late.csv"
    (landing / late).write_text("\n".join([header, *lines[:500]]) + "\n")
    result = materialize(
        spark_defs,
        instance,
        ["serving", "stream_predictions"],
        run_config={"ops": {"serving__stream_predictions": {"config": {"file": late}}}},
    )
    meta = result.asset_materializations_for_node("serving__stream_predictions")[0].metadata
    assert (meta["scored"].value, meta["errors"].value) == (500, 0)
    messages = [record.user_message for record in instance.all_logs(result.run_id)]
    assert any(f"{late} scored on Spark's executors" in m for m in messages), messages
    logged = scan_table(settings.lake_root / "serving" / "inference_log").collect()
    rows = logged.filter(pl.col("request_id").str.starts_with(f"stream:{late}:"))
    with open_online_store(settings) as store:
        expected = score_file(landing / late, landing, model, store, run_id="x", now=now)
    assert_frame_equal(
        rows.select("request_id", "score", "decision").sort("request_id"),
        expected.rows.select("request_id", "score", "decision").sort("request_id"),
        check_exact=True,
    )
