"""The catalog the UI shows: column schemas, kinds, code references, row counts, sources, MLflow."""

import datetime
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.runner import run_days
from mlops_assets.defs.sources import feed_state
from mlops_assets.settings import load_settings
from mlops_assets.simulate import Scenario, simulate

START = datetime.date(2026, 3, 1)
DAYS = [START, START + datetime.timedelta(days=1)]
# Dagster's kinds that the UI draws with an icon (the others show as text).
ICON_KINDS = {
    *("polars", "spark", "deltalake", "mlflow", "scikitlearn", "sqlite", "redis"),
    *("csv", "file", "plotly"),
}


def _schema(value) -> dg.TableSchema:
    """A column schema as definitions (raw) and materializations (a metadata value) hold it."""
    return value.schema if isinstance(value, dg.TableSchemaMetadataValue) else value


def _text(value) -> str:
    return value.value if isinstance(value, dg.MetadataValue) else value


@pytest.fixture(scope="module")
def two_days(tmp_path_factory):
    """Two landed days through the medallion on an ephemeral instance."""
    root = tmp_path_factory.mktemp("catalog")
    settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev"})
    scenario = Scenario.clean(days=2, transactions_per_day=400, seed=5, start_date=START)
    simulate(scenario, settings.landing_root)
    defs = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        assert all(r.success for r in run_days(defs, DAYS, instance, log_level="ERROR"))
        yield settings, defs, instance


def test_every_table_asset_has_columns_kinds_and_code_references(tmp_path):
    graph = build_definitions(
        load_settings({"MLOPS_DATA_ROOT": str(tmp_path)})
    ).resolve_asset_graph()
    tables = 0
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        metadata = node.metadata
        references = metadata["dagster/code_references"].code_references
        assert references, key
        for reference in references:
            assert Path(reference.file_path).is_file(), (key, reference)
        assert node.kinds, key
        assert node.kinds & ICON_KINDS or key.path[-1] == "drift_report", key
        table = metadata.get("table")
        if isinstance(table, str) and "/" in table:
            tables += 1
            assert "deltalake" in node.kinds, key
            schema = _schema(metadata["dagster/column_schema"])
            assert [c.name for c in schema.columns], key
            assert _text(metadata["dagster/table_name"]) == table.replace("/", ".")
    assert tables >= 25
    # Feature columns carry their registry's descriptions.
    risk = graph.get(dg.AssetKey(["features", "merchant_risk"])).metadata
    described = [c for c in _schema(risk["dagster/column_schema"]).columns if c.description]
    assert described


def test_gold_and_features_have_a_freshness_policy(tmp_path):
    graph = build_definitions(
        load_settings({"MLOPS_DATA_ROOT": str(tmp_path)})
    ).resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        policy = graph.get(key).freshness_policy
        if key.path[0] in ("gold", "features"):
            assert policy is not None, key
        elif key.path[0] in ("bronze", "silver"):
            assert policy is None, key


def _materialization(instance, key, day):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[day.isoformat()]),
        limit=1,
    ).records
    return records[0].asset_materialization.metadata


def test_row_count_is_the_table_and_partition_row_count_the_partition(two_days):
    _, _, instance = two_days
    for key in (
        ["bronze", "transactions"],
        ["silver", "transactions"],
        ["gold", "merchant_category_daily"],
    ):
        first, second = (_materialization(instance, key, day) for day in DAYS)
        partitions = (
            first["dagster/partition_row_count"].value,
            second["dagster/partition_row_count"].value,
        )
        assert partitions[0] > 0 and partitions[1] > 0, key
        # The first day's table is its partition; after the second, both partitions.
        assert first["dagster/row_count"].value == partitions[0], key
        assert second["dagster/row_count"].value == partitions[0] + partitions[1], key


def test_materialized_columns_are_the_definitions(two_days):
    _, defs, instance = two_days
    graph = defs.resolve_asset_graph()
    keys = [
        ["bronze", "transactions"],
        ["bronze", "labels"],
        ["silver", "transactions"],
        ["silver", "labels"],
        ["quarantine", "bronze_transactions"],
        ["quarantine", "silver_transactions"],
        ["gold", "merchant_category_daily"],
    ]
    for key in keys:
        declared = _schema(graph.get(dg.AssetKey(key)).metadata["dagster/column_schema"])
        written = _schema(_materialization(instance, key, DAYS[-1])["dagster/column_schema"])
        assert [(c.name, c.type) for c in written.columns] == [
            (c.name, c.type) for c in declared.columns
        ], key


def test_landing_sources_observe_a_new_version_when_a_file_lands(two_days):
    settings, defs, instance = two_days
    key = dg.AssetKey(["landing", "transactions"])
    job = defs.resolve_implicit_global_asset_job_def()

    def observe() -> dg.AssetObservation:
        assert job.execute_in_process(instance=instance, asset_selection=[key]).success
        return instance.fetch_observations(key, limit=1).records[0].asset_observation

    before = observe()
    state = feed_state(settings.landing_root, "transactions")
    assert before.metadata["files"].value == state.files > 0
    assert before.data_version == state.version
    assert observe().data_version == before.data_version
    # A partial name is not a landed file; its rename is.
    folder = settings.landing_root / "transactions" / "2026-03-03"
    folder.mkdir(parents=True)
    partial = folder / "late.csv.tmp"
    partial.write_text("transaction_id,event_time\n")
    assert observe().data_version == before.data_version
    partial.rename(folder / "late.csv")
    landed = observe()
    assert landed.data_version != before.data_version
    assert landed.metadata["files"].value == before.metadata["files"].value + 1
    # A file rewritten in place (new size and time) changes the version too.
    time.sleep(0.01)
    (folder / "late.csv").write_text("transaction_id,event_time\nx,2026-03-03T00:00:00Z\n")
    os.utime(folder / "late.csv")
    assert observe().data_version != landed.data_version
    graph = defs.resolve_asset_graph()
    assert key in graph.get(dg.AssetKey(["bronze", "transactions"])).parent_keys


def test_training_run_logs_its_delta_dataset_and_model_metrics(cd_lake, champion):
    import mlflow
    from mlflow import MlflowClient

    from mlops_assets.settings import use_mlflow_store

    settings, _, _ = cd_lake
    trained = next(
        m
        for m in champion.asset_materializations_for_node("ml__fraud_model")
        if m.asset_key == dg.AssetKey(["ml", "fraud_model"])
    ).metadata
    use_mlflow_store(settings.mlflow_uri)
    run = mlflow.get_run(trained["mlflow_run_id"].value)
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.source_type == "delta_table"
    assert f'"delta_table_version": {trained["training_set_version"].value}' in dataset.source
    assert "ml/training_set" in dataset.source
    assert dataset.name == f"ml/training_set@v{trained['training_set_version'].value}"
    assert [t.value for t in inputs[0].tags if t.key == "mlflow.data.context"] == ["training"]
    # The hold-out figures on the logged model as well as the run.
    model = mlflow.get_logged_model(run.outputs.model_outputs[0].model_id)
    figures = {m.key: m.value for m in model.metrics}
    assert figures["pr_auc"] == pytest.approx(run.data.metrics["pr_auc"])
    assert figures["pr_auc"] == pytest.approx(trained["pr_auc"].value)
    ranked = MlflowClient().search_logged_models(
        experiment_ids=[run.info.experiment_id], order_by=[{"field_name": "metrics.pr_auc"}]
    )
    assert model.model_id in [m.model_id for m in ranked]
