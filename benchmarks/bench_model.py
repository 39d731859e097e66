"""From training set to registered version: training, MLflow logging, registering, cold load.

Setup (not timed) writes a synthetic training set with every column of the fraud detector's
feature spec (200,000 events, about 1% fraud with a learnable pattern) to Parquet. A fresh
process then trains, logs and registers the model the way `ml/fraud_model` does
(`log_and_register`: cloudpickle, signature, input example, explicit pip requirements), into a
SQLite MLflow store whose tables were created beforehand, `REPEATS` times; the figures are
medians. The baseline, in the same run, logs the same model the way MLflow does by default,
inferring the pip requirements. A last fresh process measures the cold load of
`models:/<name>@champion`: importing MLflow, then `mlflow.pyfunc.load_model`, then one
prediction.
"""

from __future__ import annotations

import datetime
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harness import entry_point, measure, report

MODULE = "benchmarks.bench_model"
EVENTS = int(os.environ.get("BENCH_MODEL_EVENTS", "200000"))
REPEATS = int(os.environ.get("BENCH_MODEL_REPEATS", "3"))
GOAL_SECONDS = 1.0
START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _settings(root: str):
    from mlops_assets.settings import load_settings

    return load_settings({"MLOPS_DATA_ROOT": root, "MLOPS_ENV": "dev"})


def task_setup(root: str) -> dict:
    """Write the synthetic training set and create the MLflow store's tables."""
    import mlflow
    import numpy as np
    import polars as pl

    from mlops_assets.features.spec import FRAUD_SPEC

    started = time.perf_counter()
    rng = np.random.default_rng(7)
    n = EVENTS
    ratio = rng.lognormal(0, 0.8, n)
    online = rng.random(n) < 0.3
    fraud = ((ratio > 3) & online & (rng.random(n) < 0.9)) | (rng.random(n) < 0.002)
    columns = {c: rng.random(n) for c in FRAUD_SPEC.feature_columns}
    columns.update(
        transaction_id=[f"t{i:07d}" for i in range(n)],
        event_time=[START + datetime.timedelta(seconds=int(s)) for s in np.arange(n) * 10],
        amount=50 * ratio,
        amount_to_card_mean_7d=ratio,
        merchant_category=rng.choice(["grocery", "electronics", "travel", "fuel"], n),
        channel=np.where(online, "online", "pos"),
        entry_mode=np.where(online, "ecommerce", "chip"),
        device_type=np.where(online, "desktop", "terminal"),
        is_fraud=fraud,
    )
    pl.DataFrame(columns).write_parquet(Path(root) / "training_set.parquet")
    settings = _settings(root)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.search_experiments()  # creates the store's tables
    return {"seconds": time.perf_counter() - started, "events": n, "fraud": int(fraud.sum())}


def task_register(root: str, repeats: str) -> dict:
    """Train, log and register `repeats` times; then log once the default way (baseline)."""
    import mlflow
    import polars as pl

    from mlops_assets.features.spec import FRAUD_SPEC
    from mlops_assets.models.registry import log_and_register
    from mlops_assets.models.training import model_inputs, train

    settings = _settings(root)
    frame = pl.read_parquet(Path(root) / "training_set.parquet")
    figures: dict[str, list[float]] = {"training": [], "logging": [], "registering": []}
    for repeat in range(int(repeats)):
        started = time.perf_counter()
        result = train(frame, FRAUD_SPEC, seed=7)
        figures["training"].append(time.perf_counter() - started)
        registered = log_and_register(
            settings,
            result,
            FRAUD_SPEC,
            inputs={"ml/training_set": repeat},
            example=frame.head(5),
            dagster_run_id=f"bench-{repeat}",
        )
        figures["logging"].append(registered.logging_seconds)
        figures["registering"].append(registered.registering_seconds)
    from mlops_assets.models.deploy import lifecycle

    cycle = lifecycle(settings)
    cycle.client.set_registered_model_alias(cycle.name, "champion", registered.version)
    # Baseline: the same model logged as MLflow does without explicit requirements.
    example = model_inputs(frame.head(5), FRAUD_SPEC)
    started = time.perf_counter()
    with mlflow.start_run(run_name="baseline"):
        mlflow.sklearn.log_model(
            result.model,
            name="model",
            serialization_format="cloudpickle",
            input_example=example,
        )
    baseline = time.perf_counter() - started
    medians = {k: statistics.median(v) for k, v in figures.items()}
    return {
        "seconds": sum(medians.values()),
        **{f"{k}_seconds": v for k, v in medians.items()},
        **{f"{k}_runs": v for k, v in figures.items()},
        "baseline_logging_seconds": baseline,
    }


def task_cold_load(root: str) -> dict:
    """Import MLflow, load the champion by alias and score one row, in a fresh process."""
    started = time.perf_counter()
    import mlflow

    imported = time.perf_counter()
    import polars as pl

    from mlops_assets.features.spec import FRAUD_SPEC
    from mlops_assets.models.training import model_inputs

    mlflow.set_tracking_uri(_settings(root).mlflow_uri)
    before_load = time.perf_counter()
    model = mlflow.pyfunc.load_model("models:/dev.fraud_detector@champion")
    loaded = time.perf_counter()
    row = model_inputs(pl.read_parquet(Path(root) / "training_set.parquet").head(1), FRAUD_SPEC)
    scored = time.perf_counter()
    model.predict(row)
    done = time.perf_counter()
    return {
        "seconds": done - started,
        "import_mlflow_seconds": imported - started,
        "load_model_seconds": loaded - before_load,
        "first_prediction_seconds": done - scored,
    }


TASKS = {"setup": task_setup, "register": task_register, "cold_load": task_cold_load}


def main() -> None:
    """Measure training, logging, registering and cold loading; report against the goal."""
    with tempfile.TemporaryDirectory(prefix="bench-model-") as root:
        setup = measure(MODULE, "setup", root)
        run = measure(MODULE, "register", root, str(REPEATS))
        cold = measure(MODULE, "cold_load", root)
    log_and_register = run.extra["logging_seconds"] + run.extra["registering_seconds"]
    report(
        "model",
        {
            "events": setup.extra["events"],
            "repeats": REPEATS,
            "training_seconds": round(run.extra["training_seconds"], 3),
            "logging_seconds": round(run.extra["logging_seconds"], 3),
            "registering_seconds": round(run.extra["registering_seconds"], 3),
            "logging_plus_registering_seconds": round(log_and_register, 3),
            "goal_seconds": GOAL_SECONDS,
            "goal_met": log_and_register < GOAL_SECONDS,
            "baseline_logging_inferred_requirements_seconds": round(
                run.extra["baseline_logging_seconds"], 3
            ),
            "speedup_vs_baseline_logging": round(
                run.extra["baseline_logging_seconds"] / run.extra["logging_seconds"], 1
            ),
            "cold_import_mlflow_seconds": round(cold.extra["import_mlflow_seconds"], 3),
            "cold_load_model_seconds": round(cold.extra["load_model_seconds"], 3),
            "cold_first_prediction_seconds": round(cold.extra["first_prediction_seconds"], 4),
            "cold_total_seconds": round(cold.seconds, 3),
            "peak_mib_register": round(run.peak_mib),
        },
    )


if __name__ == "__main__":
    entry_point(main, TASKS)
