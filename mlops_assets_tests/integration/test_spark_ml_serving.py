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
