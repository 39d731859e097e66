"""Batch scoring: one day of 1,000,000 transactions scored and appended to the inference log.

Setup (not timed) builds a small lake with a registered champion (`serving_env`) and writes
1,000,000 synthetic events carrying every column of the champion's feature spec to Parquet
(the output of the point-in-time join, whose own speed `bench_point_in_time` measures). A
fresh process loads the champion as batch scoring does, reads the events, and times what
`serving/batch_predictions` does after the join (`score_into_log`): scoring chunk by chunk
(`batch_predictions`: model input, the compiled trees, decisions, request JSON) by a thread
per core while the chunks scored before are written, all rows in one Delta append commit
(`scoring_thread_seconds` sums the scoring threads' times, which overlap).
Its peak memory is the process's.
The floor, in fresh processes of its own (its pandas frame would otherwise set the peak), is
the model's own `predict` on the same events with its pandas input. `REPEATS` runs of each;
the figures are medians.
"""

from __future__ import annotations

import datetime
import os
import statistics
import time
from pathlib import Path

from benchmarks.harness import entry_point, measure, report

MODULE = "benchmarks.bench_batch"
EVENTS = int(os.environ.get("BENCH_BATCH_EVENTS", "1000000"))
REPEATS = int(os.environ.get("BENCH_BATCH_REPEATS", "3"))
GOAL_ROWS_PER_SECOND = 300_000
GOAL_PEAK_MIB = 1536
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


def load_champion(root: str):
    """The champion loaded as batch scoring loads it, and the lake's settings."""
    import mlflow

    from mlops_assets.serving.model import load_serving_model
    from mlops_assets.settings import load_settings

    settings = load_settings({"MLOPS_DATA_ROOT": str(Path(root) / "data"), "MLOPS_ENV": "dev"})
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("dev.fraud_detector", "champion").version
    return settings, load_serving_model("dev.fraud_detector", str(version))


def task_floor(root: str) -> dict:
    """The model's own predict on every event (its pandas input included), alone."""
    import polars as pl

    from mlops_assets.models.training import model_inputs

    _, model = load_champion(root)
    events = pl.read_parquet(Path(root) / "events.parquet")
    started, cpu = time.perf_counter(), time.process_time()
    model.pyfunc.predict(model_inputs(events, model.spec))
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}


def task_score(root: str) -> dict:
    """Load the champion, then time scoring and logging of every event, as the asset does."""
    import polars as pl

    from mlops_assets.lakehouse.catalog import Catalog
    from mlops_assets.serving.inference_log import INFERENCE_LOG, InferenceLog, inference_schema
    from mlops_assets.serving.scoring import model_scores, score_into_log

    settings, model = load_champion(root)
    events = pl.read_parquet(Path(root) / "events.parquet")
    # The probe against the pyfunc runs once per loaded model, here before timing.
    started = time.perf_counter()
    model_scores(model, events.head(1))
    probe = time.perf_counter() - started
    log = InferenceLog(
        Catalog(settings).uri_for_write(INFERENCE_LOG),
        schema=inference_schema(model.spec),
        start=False,
    )
    started, cpu = time.perf_counter(), time.process_time()
    outcome = score_into_log(model, events, log, mode="batch", run_id="benchmark")
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        # Every thread's CPU time (on a loaded machine, the work apart from the waiting).
        "cpu_seconds": time.process_time() - cpu,
        # Summed over the scoring threads, which overlap each other and the writes.
        "scoring_thread_seconds": outcome.scoring_seconds,
        "probe_seconds": probe,
        "scorer": "compiled" if model.compiled is not None else "pyfunc",
        "rows": outcome.rows,
    }


TASKS = {"setup": task_setup, "floor": task_floor, "score": task_score}


def main() -> None:
    """Score one day of transactions; report rows per second and the split."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as root:
        setup = measure(MODULE, "setup", root)
        runs = [measure(MODULE, "score", root) for _ in range(REPEATS)]
        floors = [measure(MODULE, "floor", root) for _ in range(REPEATS)]
    run = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
    floor = statistics.median(f.seconds for f in floors)
    rows = run.extra["rows"]
    report(
        "batch",
        {
            "events": setup.extra["events"],
            "rows_logged": rows,
            "seconds": round(run.seconds, 3),
            "rows_per_second": round(rows / run.seconds),
            "repeats": REPEATS,
            "scorer": run.extra["scorer"],
            "scoring_thread_seconds": round(run.extra["scoring_thread_seconds"], 3),
            "probe_seconds": round(run.extra["probe_seconds"], 3),
            "predict_floor_seconds": round(floor, 3),
            "cpu_seconds": round(run.extra["cpu_seconds"], 3),
            "predict_floor_cpu_seconds": round(
                statistics.median(f.extra["cpu_seconds"] for f in floors), 3
            ),
            "ratio_to_predict_floor": round(run.seconds / floor, 2),
            "goal_rows_per_second": GOAL_ROWS_PER_SECOND,
            "goal_met": rows / run.seconds >= GOAL_ROWS_PER_SECOND and run.peak_mib < GOAL_PEAK_MIB,
            "goal_peak_mib": GOAL_PEAK_MIB,
            "peak_mib": round(run.peak_mib),
            "peak_mib_runs": [round(r.peak_mib) for r in runs],
            "rows_per_second_runs": [round(rows / r.seconds) for r in runs],
            "predict_floor_peak_mib": round(max(f.peak_mib for f in floors)),
        },
    )


if __name__ == "__main__":
    entry_point(main, TASKS)
