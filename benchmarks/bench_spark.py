"""The embedded engine against the scale-out one: polars and Spark local[2] in the same run.

Three figures, each measured on both engines in fresh processes: the medallion day of
`BENCH_SPARK_ROWS` transactions (1,000,000 by default; the Dagster job for bronze, silver,
gold and quarantine, as in bench_medallion) and the daily feature refresh on a lake of 8 days
of `BENCH_SPARK_FEATURE_ROWS` silver transactions (as in bench_features), and the day's drift
statistics and profile (`BENCH_SPARK_DRIFT_ROWS` rows a side, bench_drift's frames; the
verdicts of both engines must agree); the training set and batch scoring on both engines are
bench_spark_ml's. `BENCH_SPARK_STAGES` picks stages. Spark's session starts before the clock:
its start-up is reported on its own. The ratio Spark / polars is the point: the embedded
default must be the fast one on one machine (goal: at least 5x); Spark's figures are the
scale-out baseline of `docs/scale.md`.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
from pathlib import Path

from benchmarks.harness import (
    engines_agree,
    entry_point,
    measure,
    median_run,
    report,
    run_partition,
    spark_session,
)

DAY = datetime.date(2026, 1, 1)
ROWS = int(os.environ.get("BENCH_SPARK_ROWS", "1000000"))
FEATURE_ROWS = int(os.environ.get("BENCH_SPARK_FEATURE_ROWS", "200000"))
FEATURE_HISTORY = 7
REPEAT = int(os.environ.get("BENCH_SPARK_REPEAT", "1"))
MASTER = "local[2]"
# Rows a side of the drift stage (bench_drift's frames).
DRIFT_ROWS = int(os.environ.get("BENCH_SPARK_DRIFT_ROWS", "200000"))
# Stages to run: `drift`, `medallion` (the medallion day and the feature refresh).
STAGES = os.environ.get("BENCH_SPARK_STAGES", "drift,medallion").split(",")
ENGINES = ("polars", "spark")


def _settings(root: Path, engine: str, start: datetime.date):
    from mlops_assets.settings import load_settings

    return load_settings(
        {
            "MLOPS_DATA_ROOT": str(root),
            "MLOPS_ENV": "dev",
            "MLOPS_START_DATE": start.isoformat(),
            "MLOPS_ENGINE": engine,
            "MLOPS_SPARK_MASTER": MASTER,
        }
    )


def _run_job(settings, job_name: str, day: datetime.date) -> dict:
    """Start Spark first when the job needs it, then time the job alone."""
    from mlops_assets.definitions import build_definitions
    from mlops_assets.defs.resources import SparkResource

    session_s = 0.0
    if settings.engine.value == "spark":
        started = time.perf_counter()
        SparkResource.from_settings(settings).session.range(1).count()
        session_s = time.perf_counter() - started
    job = build_definitions(settings).resolve_job_def(job_name)
    result, seconds, steps = run_partition(job, day, digits=2)
    if not result.success:
        raise RuntimeError(f"{job_name} on {settings.engine.value} failed for {day}")
    return {"seconds": seconds, "session_s": session_s, "steps": steps}


def task_medallion(root: str, engine: str, run: str) -> dict:
    """The medallion job for the day on one engine, on a fresh lake sharing the landing files."""
    from benchmarks.bench_medallion import _fresh_root
    from mlops_assets.lakehouse.delta_io import scan_table

    fresh = _fresh_root(root, f"{engine}-{run}")
    settings = _settings(fresh, engine, DAY)
    figures = _run_job(settings, "medallion_daily", DAY)
    figures["silver_rows"] = (
        scan_table(settings.lake_root / "silver" / "transactions").collect().height
    )
    return figures


def task_features(root: str, engine: str) -> dict:
    """The feature refresh of the lake's last day on one engine."""
    from benchmarks.bench_features import START

    settings = _settings(Path(root), engine, START)
    return _run_job(settings, "features_daily", START + datetime.timedelta(days=FEATURE_HISTORY))


def task_drift(root: str, engine: str) -> dict:
    """Drift of the current window against the baseline, and the window's profile, on one engine.

    bench_drift's frames (`BENCH_SPARK_DRIFT_ROWS` rows a side, 14 numeric and 6 categorical
    columns); polars reads them into memory before the clock, Spark reads the Parquet files
    inside it (its statistics run where the data is: on the executors).
    """
    from benchmarks.bench_drift import _paths

    baseline_path, current_path = _paths(root)
    if engine == "polars":
        import polars as pl

        from mlops_assets.monitoring.drift import compute_drift
        from mlops_assets.monitoring.profile import profile

        baseline, current = pl.read_parquet(baseline_path), pl.read_parquet(current_path)
        started = time.perf_counter()
        result = compute_drift(baseline, current)
        profiled = profile(current)
        seconds = time.perf_counter() - started
        session_s = 0.0
    else:
        from mlops_assets.monitoring.spark_stats import spark_drift, spark_profile

        spark, session_s = spark_session(MASTER)
        started = time.perf_counter()
        baseline = spark.read.parquet(str(baseline_path))
        current = spark.read.parquet(str(current_path))
        result = spark_drift(baseline, current)
        profiled = spark_profile(current)
        seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "session_s": session_s,
        "columns": result.summary.columns,
        "drifted": sorted(result.columns.filter("drifted").get_column("column").to_list()),
        "profile_rows": profiled.height,
    }


def main() -> None:
    """Measure both engines on the medallion day and the feature refresh; save the ratios."""
    os.environ["BENCH_MEDALLION_ROWS"] = str(ROWS)
    os.environ["BENCH_FEATURES_ROWS"] = str(FEATURE_ROWS)
    module = "benchmarks.bench_spark"
    figures: dict = {"spark_master": MASTER, "repeats": REPEAT}
    if "drift" in STAGES:
        figures.update(_drift_figures(module))
    if "medallion" in STAGES:
        figures.update(_medallion_and_features(module))
    report("spark", figures)


def _drift_figures(module: str) -> dict:
    """Drift and profile of `DRIFT_ROWS` rows a side on both engines (medians of REPEAT)."""
    os.environ["BENCH_DRIFT_ROWS"] = str(DRIFT_ROWS)
    with tempfile.TemporaryDirectory(prefix="bench-spark-drift-") as root:
        measure("benchmarks.bench_drift", "setup", root)
        drift = {
            e: median_run([measure(module, "drift", root, e) for _ in range(REPEAT)])
            for e in ENGINES
        }
    engines_agree(drift, "drifted", "drift verdicts")
    cells = 2 * DRIFT_ROWS * drift["polars"].extra["columns"]
    return {
        "drift_rows_per_side": DRIFT_ROWS,
        "drift_columns": drift["polars"].extra["columns"],
        "drift_polars_s": round(drift["polars"].seconds, 2),
        "drift_spark_s": round(drift["spark"].seconds, 2),
        "drift_spark_to_polars": round(drift["spark"].seconds / drift["polars"].seconds, 2),
        "drift_values_per_s": {e: round(cells / drift[e].seconds) for e in ENGINES},
        "drift_peak_mib": {e: round(drift[e].peak_mib) for e in ENGINES},
        "drift_verdicts_equal": True,
    }


def _medallion_and_features(module: str) -> dict:
    """The medallion day and the feature refresh on both engines."""
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as root:
        simulated = measure("benchmarks.bench_medallion", "simulate", root)
        medallion = {e: [] for e in ENGINES}
        for run in range(REPEAT):
            for engine in ENGINES:
                medallion[engine].append(measure(module, "medallion", root, engine, str(run)))
        features = {}
        for engine in ENGINES:
            # A lake of its own per engine: the refresh merges into the feature tables.
            lake = str(Path(root) / f"features-{engine}")
            measure("benchmarks.bench_features", "setup", lake, str(FEATURE_HISTORY))
            features[engine] = median_run(
                [measure(module, "features", lake, engine) for _ in range(REPEAT)]
            )
    chosen = {e: median_run(medallion[e]) for e in ENGINES}
    return {
        "transactions": simulated.extra["lines"],
        "medallion_polars_s": round(chosen["polars"].seconds, 2),
        "medallion_spark_s": round(chosen["spark"].seconds, 2),
        "medallion_spark_to_polars": round(chosen["spark"].seconds / chosen["polars"].seconds, 2),
        "medallion_silver_rows": {e: chosen[e].extra["silver_rows"] for e in ENGINES},
        "medallion_steps_s": {e: chosen[e].extra["steps"] for e in ENGINES},
        "medallion_peak_mib": {e: round(chosen[e].peak_mib) for e in ENGINES},
        "feature_transactions_per_day": FEATURE_ROWS,
        "feature_history_days": FEATURE_HISTORY,
        "features_polars_s": round(features["polars"].seconds, 2),
        "features_spark_s": round(features["spark"].seconds, 2),
        "features_spark_to_polars": round(
            features["spark"].seconds / features["polars"].seconds, 2
        ),
        "features_steps_s": {e: features[e].extra["steps"] for e in ENGINES},
        "spark_session_start_s": round(chosen["spark"].extra["session_s"], 2),
        "goal": "medallion_spark_to_polars >= 5 and features_spark_to_polars >= 5",
    }


if __name__ == "__main__":
    entry_point(
        main,
        {
            "medallion": task_medallion,
            "features": task_features,
            "drift": task_drift,
        },
    )
