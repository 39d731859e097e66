"""The closed loop on a simulated clock: drift retrains once and helps; no drift, no retraining.

Each scenario runs the demo's steps day by day on a small lake: a champion trained on the
normal days, then every later day ingested, batch-scored, monitored, and the drift sensor
evaluated against an ephemeral Dagster instance.
"""

import datetime

import dagster as dg
import polars as pl
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.monitoring import MonitoringResource
from mlops_assets.demo import Demo
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.settings import load_settings, use_mlflow_store
from mlops_assets.simulate import Drift, Scenario, simulate

pytestmark = pytest.mark.slow

START = datetime.date(2026, 1, 1)
NORMAL, LATER = 10, 7
LABEL_DAYS = 2


def run_loop(root, drift: bool, seed: int) -> tuple[Demo, object]:
    settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev"})
    scenario = Scenario.clean(
        days=NORMAL + LATER,
        transactions_per_day=4_000,
        seed=seed,
        start_date=START,
        label_delay_days=(1, LABEL_DAYS),
        **({"drift": Drift(covariate_from_day=NORMAL, concept_from_day=NORMAL)} if drift else {}),
    )
    simulate(scenario, settings.landing_root)
    monitoring = MonitoringResource(label_maturity_days=LABEL_DAYS, min_pr_auc=0.3)
    defs = build_definitions(settings, monitoring=monitoring)
    days = scenario.dates
    instance = dg.DagsterInstance.ephemeral()
    demo = Demo(settings, defs, instance, label_days=LABEL_DAYS)
    for day in days[:NORMAL]:
        assert demo.ingest(day)
    assert demo.train(days[NORMAL - 1], NORMAL)
    for day in days[NORMAL:]:
        assert demo.ingest(day)
        assert demo.score_and_monitor(day)
        demo.tick()
    return demo, settings


def labelled_drift_days(settings) -> pl.DataFrame:
    """Every drifted day's transactions with all their labels (the end of the replay)."""
    events = scan_table(settings.lake_root / "silver" / "transactions").filter(
        pl.col("event_date") >= START + datetime.timedelta(days=NORMAL)
    )
    fraud = (
        scan_table(settings.lake_root / "silver" / "labels")
        .filter(pl.col("is_fraud"))
        .select("transaction_id", pl.lit(True).alias("fraud"))
    )
    return (
        events.join(fraud, on="transaction_id", how="left")
        .with_columns(pl.col("fraud").fill_null(False))
        .collect()
    )


def new_and_old_pr_auc(settings, frame: pl.DataFrame) -> tuple[float, float]:
    """PR-AUC of the new champion's logged scores and of the old model on the same rows."""
    import mlflow
    from sklearn.metrics import average_precision_score

    from mlops_assets.features.spec import FRAUD_SPEC
    from mlops_assets.models.training import model_inputs

    rows = (
        scan_table(settings.lake_root / "serving" / "inference_log")
        .filter(pl.col("model_version") == "2", pl.col("mode") == "batch")
        .collect()
        .unique("transaction_id", keep="last")
        .join(frame.select("transaction_id", "fraud"), on="transaction_id")
    )
    use_mlflow_store(settings.mlflow_uri)  # not left in MLFLOW_TRACKING_URI
    old = mlflow.pyfunc.load_model("models:/dev.fraud_detector/1")
    old_scores = old.predict(model_inputs(rows, FRAUD_SPEC))[:, 1]
    labels = rows.get_column("fraud").to_numpy()
    return (
        average_precision_score(labels, rows.get_column("score").to_numpy()),
        average_precision_score(labels, old_scores),
    )


def test_drift_retrains_once_and_the_new_champion_beats_the_old_on_drifted_data(tmp_path):
    demo, settings = run_loop(tmp_path, drift=True, seed=31)
    assert len(demo.story.retrain_requests) == 1, demo.story.windows
    assert demo.story.champion_versions == ["1", "2"]
    drifted = [w for w in demo.story.windows if w["model_version"] == "1"]
    assert drifted and max(w["drifted_share"] for w in drifted) > 0.5
    # On the drifted days the new champion scored, it beats the old one on the same rows.
    assert any(w["model_version"] == "2" for w in demo.story.windows), "no day for version 2"
    new, old = new_and_old_pr_auc(settings, labelled_drift_days(settings))
    assert new > old, (new, old)
    alerts = scan_table(settings.lake_root / "monitoring" / "alerts").collect()
    assert alerts.filter(pl.col("kind") == "retrain_requested").height == 1
    assert alerts.filter(pl.col("kind") == "drift").height >= 1
    # The tables written beside the assets are assets: one reference per model version (its
    # first drift run built it), and each alert appended.
    references = demo.instance.fetch_materializations(
        dg.AssetKey(["monitoring", "reference"]), limit=10
    ).records
    built = sorted(r.asset_materialization.metadata["model_version"].value for r in references)
    assert built == ["1", "2"]
    stored = scan_table(settings.lake_root / "monitoring" / "reference")
    assert stored.select("model_version").unique().collect().height == 2
    raised = demo.instance.fetch_materializations(
        dg.AssetKey(["monitoring", "alerts"]), limit=100
    ).records
    assert len(raised) == alerts.height


@pytest.mark.parametrize("seed", [31, 32])
def test_without_drift_nothing_retrains(tmp_path, seed):
    demo, settings = run_loop(tmp_path, drift=False, seed=seed)
    assert demo.story.retrain_requests == []
    assert demo.story.champion_versions == ["1"]
    assert max(w["drifted_share"] for w in demo.story.windows) <= 0.5
    assert max(w["prediction_drift"] for w in demo.story.windows) <= 0.1
