"""Batch scoring: one day of 1,000,000 transactions scored and appended to the inference log.

Setup (not timed) builds a small lake with a registered champion (`serving_env`) and writes
1,000,000 synthetic events carrying every column of the champion's feature spec to Parquet
(the output of the point-in-time join, whose own speed `bench_point_in_time` measures). A
fresh process loads the champion as batch scoring does, reads the events, and times the two
steps of `serving/batch_predictions` after the join: scoring (`batch_predictions`: model
input, `predict`, decisions, request JSON) and the Delta append of all rows
(`InferenceLog.append`). The floor, in the same process, is the model's `predict` alone on
the same input.
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

from benchmarks.harness import entry_point, measure, report

MODULE = "benchmarks.bench_batch"
EVENTS = int(os.environ.get("BENCH_BATCH_EVENTS", "1000000"))
START = datetime.datetime(2026, 1, 7, tzinfo=datetime.UTC)


def task_setup(root: str) -> dict:
    """A lake with a champion, and the day's events with their features."""
    import numpy as np
    import polars as pl

    from mlops_assets.features.spec import FRAUD_SPEC
    from mlops_assets_tests.serving_env import build_serving_env

    started = time.perf_counter()
    build_serving_env(Path(root) / "data", models=1, days=6, per_day=1_500)
    rng = np.random.default_rng(3)
    n = EVENTS
    columns = {c: rng.random(n) * 10 for c in FRAUD_SPEC.feature_columns}
    columns.update(
        transaction_id=[f"t{i:08d}" for i in range(n)],
        card_id=[f"card_{i % 50_000:06d}" for i in range(n)],
        merchant_id=[f"m_{i % 4_000:05d}" for i in range(n)],
        event_time=START + datetime.timedelta(microseconds=0),
        amount=rng.lognormal(3, 1, n),
        merchant_category=rng.choice(["grocery", "electronics", "travel", "fuel"], n),
        channel=rng.choice(["online", "pos"], n),
        entry_mode=rng.choice(["chip", "ecommerce", "contactless"], n),
        device_type=rng.choice(["terminal", "desktop", "mobile"], n),
        country=rng.choice(["PL", "DE", "FR"], n),
        card_country=rng.choice(["PL", "DE", "FR"], n),
        is_foreign=rng.random(n) < 0.1,
        hour_of_day=rng.integers(0, 24, n),
    )
    frame = pl.DataFrame(columns).with_columns(
        (pl.lit(START) + pl.duration(microseconds=pl.int_range(n) * 86_400)).alias("event_time")
    )
    frame.write_parquet(Path(root) / "events.parquet")
    return {"seconds": time.perf_counter() - started, "events": n}


def task_score(root: str) -> dict:
    """Load the champion, then time scoring and logging of every event."""
    import mlflow
    import polars as pl

    from mlops_assets.lakehouse.catalog import Catalog
    from mlops_assets.models.training import model_inputs
    from mlops_assets.serving.inference_log import INFERENCE_LOG, InferenceLog, inference_schema
    from mlops_assets.serving.model import load_serving_model
    from mlops_assets.serving.scoring import batch_predictions
    from mlops_assets.settings import load_settings

    settings = load_settings({"MLOPS_DATA_ROOT": str(Path(root) / "data"), "MLOPS_ENV": "dev"})
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("dev.fraud_detector", "champion").version
    model = load_serving_model("dev.fraud_detector", str(version))
    events = pl.read_parquet(Path(root) / "events.parquet")
    started = time.perf_counter()
    inputs = model_inputs(events, model.spec)
    model.pyfunc.predict(inputs)
    floor = time.perf_counter() - started
    started = time.perf_counter()
    rows = batch_predictions(model, events, mode="batch", run_id="benchmark")
    scoring = time.perf_counter() - started
    log = InferenceLog(
        Catalog(settings).uri_for_write(INFERENCE_LOG),
        schema=inference_schema(model.spec),
        start=False,
    )
    started = time.perf_counter()
    log.append(rows)
    logging = time.perf_counter() - started
    return {
        "seconds": scoring + logging,
        "scoring_seconds": scoring,
        "logging_seconds": logging,
        "predict_floor_seconds": floor,
        "rows": rows.height,
    }


TASKS = {"setup": task_setup, "score": task_score}


def main() -> None:
    """Score one day of transactions; report rows per second and the split."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as root:
        setup = measure(MODULE, "setup", root)
        run = measure(MODULE, "score", root)
    rows = run.extra["rows"]
    report(
        "batch",
        {
            "events": setup.extra["events"],
            "rows_logged": rows,
            "seconds": round(run.seconds, 3),
            "rows_per_second": round(rows / run.seconds),
            "scoring_seconds": round(run.extra["scoring_seconds"], 3),
            "logging_seconds": round(run.extra["logging_seconds"], 3),
            "predict_floor_seconds": round(run.extra["predict_floor_seconds"], 3),
            "ratio_to_predict_floor": round(run.seconds / run.extra["predict_floor_seconds"], 2),
            "peak_mib": round(run.peak_mib),
        },
    )


if __name__ == "__main__":
    entry_point(main, TASKS)
