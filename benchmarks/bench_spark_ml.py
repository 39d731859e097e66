"""The ml and serving stages on polars and on Spark local[2], in the same run.

Three stages, each measured on both engines in fresh processes:

- training set: the fraud spec's whole training set (`FeatureSpec.training_set` against
  `spark_point_in_time.training_set`: both feature tables' point-in-time joins, defaults and
  the on-demand features) of `BENCH_SPARK_ML_EVENTS` events (200,000 by default) over a week,
  with one card-behaviour row per event as the real table has, and a merchant-risk row per
  merchant and day. Spark's result is computed in full by a `noop` write.
- batch scoring: bench_batch's day of `BENCH_SPARK_ML_SCORE_EVENTS` events (200,000) carrying
  every feature, scored by the champion and appended to the inference log: polars through
  bench_batch's own task, Spark through `spark_scoring` (per partition on the executors,
  Delta on Spark appending).

- streaming micro-batches: `BENCH_SPARK_ML_STREAM_FILES` landed transactions files (20) of
  `BENCH_SPARK_ML_STREAM_LINES` lines each (10,000; the serving lake's landed lines, cycled)
  scored as a poll's files: polars file after file as the stream worker does
  (`scoring.score_file`: parse, online-store lookups by key, the compiled trees), Spark all
  at once on the executors (`spark_streaming.score_files`, the same function per file). The
  log commits that follow, file by file from the driver on both engines, are off the clock.

Spark's session starts off the clock (reported on its own). Figures: seconds, rows per second
and the ratio Spark / polars; medians of `BENCH_SPARK_ML_REPEAT` runs.
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
    spark_session,
)

MODULE = "benchmarks.bench_spark_ml"
MASTER = "local[2]"
EVENTS = int(os.environ.get("BENCH_SPARK_ML_EVENTS", "200000"))
SCORE_EVENTS = int(os.environ.get("BENCH_SPARK_ML_SCORE_EVENTS", "200000"))
REPEAT = int(os.environ.get("BENCH_SPARK_ML_REPEAT", "1"))
STREAM_FILES = int(os.environ.get("BENCH_SPARK_ML_STREAM_FILES", "20"))
STREAM_LINES = int(os.environ.get("BENCH_SPARK_ML_STREAM_LINES", "10000"))
STREAM_DAY = "2026-02-01"
ENGINES = ("polars", "spark")
START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DAYS = 7


def task_setup(root: str) -> dict:
    """Events and both feature tables of the fraud spec, as Parquet files."""
    import numpy as np
    import polars as pl

    from mlops_assets.features.registry import feature_table

    started = time.perf_counter()
    rng = np.random.default_rng(5)
    n, cards, merchants = EVENTS, max(EVENTS // 10, 1), max(EVENTS // 100, 1)
    seconds = rng.integers(0, DAYS * 86_400 * 1_000_000, n)
    events = pl.DataFrame(
        {
            "transaction_id": [f"t{i:09d}" for i in range(n)],
            "card_id": [f"c{i:07d}" for i in rng.integers(0, cards, n)],
            "merchant_id": [f"m{i:06d}" for i in rng.integers(0, merchants, n)],
            "event_time": seconds,
            "amount": rng.lognormal(3, 1, n),
            "merchant_category": rng.choice(["grocery", "electronics", "travel"], n),
            "channel": rng.choice(["online", "pos"], n),
            "entry_mode": rng.choice(["chip", "ecommerce", "contactless"], n),
            "device_type": rng.choice(["terminal", "desktop", "mobile"], n),
            "country": rng.choice(["PL", "DE", "FR"], n),
            "card_country": rng.choice(["PL", "DE", "FR"], n),
            "is_fraud": rng.random(n) < 0.01,
        }
    ).with_columns(
        (pl.lit(START) + pl.duration(microseconds=pl.col("event_time"))).alias("event_time")
    )
    card = feature_table("card_behaviour")
    # One row per transaction, known at its time (the real table's shape).
    card_rows = events.select(
        "card_id",
        "transaction_id",
        "event_time",
        pl.col("event_time").dt.date().alias(card.partition_column),
        *[pl.Series(f.name, rng.random(n) * 10).cast(_dtype(f.dtype)) for f in card.features],
    )
    merchant = feature_table("merchant_risk")
    grid = pl.DataFrame({"merchant_id": [f"m{i:06d}" for i in range(merchants)]}).join(
        pl.DataFrame({"day": [START.date() + datetime.timedelta(days=d) for d in range(DAYS)]}),
        how="cross",
    )
    m = grid.height
    merchant_rows = grid.with_columns(
        (pl.col("day").cast(pl.Datetime("us", "UTC")) + pl.duration(days=1)).alias("as_of"),
        *[pl.Series(f.name, rng.random(m) * 10).cast(_dtype(f.dtype)) for f in merchant.features],
    )
    events.write_parquet(Path(root) / "events.parquet")
    card_rows.write_parquet(Path(root) / "card_behaviour.parquet")
    merchant_rows.write_parquet(Path(root) / "merchant_risk.parquet")
    return {
        "seconds": time.perf_counter() - started,
        "events": n,
        "feature_rows": card_rows.height + merchant_rows.height,
    }


def _dtype(name: str):
    import polars as pl

    return {"int": pl.Int64, "float": pl.Float64, "bool": pl.Boolean, "str": pl.String}[name]


def task_training_set(root: str, engine: str) -> dict:
    """The fraud spec's training set of the events on one engine (files read on the clock)."""
    from mlops_assets.features.spec import FRAUD_SPEC

    names = ("card_behaviour", "merchant_risk")
    session_s = 0.0
    if engine == "polars":
        import polars as pl

        started = time.perf_counter()
        events = pl.read_parquet(Path(root) / "events.parquet")
        tables = {n: pl.read_parquet(Path(root) / f"{n}.parquet") for n in names}
        rows = FRAUD_SPEC.training_set(events, tables).height
    else:
        from mlops_assets.features.spark_point_in_time import training_set

        spark, session_s = spark_session(MASTER)
        started = time.perf_counter()
        events = spark.read.parquet(str(Path(root) / "events.parquet"))
        tables = {n: spark.read.parquet(str(Path(root) / f"{n}.parquet")) for n in names}
        joined = training_set(events, tables, FRAUD_SPEC)
        joined.write.format("noop").mode("overwrite").save()
        rows = EVENTS
    return {"seconds": time.perf_counter() - started, "session_s": session_s, "rows": rows}


def task_score_spark(root: str) -> dict:
    """bench_batch's day scored on Spark and appended to an inference log by Delta on Spark."""
    from benchmarks.bench_batch import load_champion
    from mlops_assets.serving.spark_scoring import append_to_log, batch_predictions

    _, model = load_champion(root)
    spark, session_s = spark_session(MASTER)
    log = str(Path(root) / "spark_inference_log")
    started = time.perf_counter()
    events = spark.read.parquet(str(Path(root) / "events.parquet"))
    rows = batch_predictions(model, events, mode="batch", run_id="benchmark")
    written = append_to_log(spark, log, rows)
    return {
        "seconds": time.perf_counter() - started,
        "session_s": session_s,
        "rows": written.rows_written,
    }


def task_stream_setup(root: str) -> dict:
    """The landed files a poll finds: the serving lake's landed lines cycled into files."""
    from mlops_assets.settings import load_settings

    started = time.perf_counter()
    settings = load_settings({"MLOPS_DATA_ROOT": str(Path(root) / "data"), "MLOPS_ENV": "dev"})
    landed = sorted((settings.landing_root / "transactions").glob("*/*.csv"))
    header, lines = None, []
    for path in landed:  # bytes: the demo feed's dirty lines (invalid UTF-8 ...) stay in
        first, *rest = path.read_bytes().splitlines()
        header = header or first
        lines.extend(rest)
    folder = settings.landing_root / "transactions" / STREAM_DAY
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(STREAM_FILES):
        start = number * STREAM_LINES
        part = [lines[(start + i) % len(lines)] for i in range(STREAM_LINES)]
        (folder / f"part-{number:03d}.csv").write_bytes(b"\n".join([header, *part]) + b"\n")
    return {
        "seconds": time.perf_counter() - started,
        "files": STREAM_FILES,
        "lines": STREAM_FILES * STREAM_LINES,
    }


def task_stream(root: str, engine: str) -> dict:
    """A poll's landed files scored on one engine (rows in the log's shape, not written)."""
    import functools

    from benchmarks.bench_batch import load_champion
    from mlops_assets.features.online_store import open_online_store
    from mlops_assets.serving.scoring import score_file

    settings, model = load_champion(root)
    landing = settings.landing_root
    names = sorted(
        p.relative_to(landing).as_posix()
        for p in (landing / "transactions" / STREAM_DAY).glob("*.csv")
    )
    session_s = 0.0
    if engine == "polars":
        started = time.perf_counter()
        with open_online_store(settings) as store:
            batches = [score_file(landing / n, landing, model, store, run_id="b") for n in names]
    else:
        from mlops_assets.serving.spark_streaming import score_files

        spark, session_s = spark_session(MASTER)
        opener = functools.partial(open_online_store, settings)
        started = time.perf_counter()
        scored = score_files(spark, landing, names, model, opener, run_id="b")
        batches = list(scored.values())
    seconds = time.perf_counter() - started
    failed = [b for b in batches if isinstance(b, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} file(s) failed: {failed[0]}")
    return {
        "seconds": seconds,
        "session_s": session_s,
        "rows": sum(b.rows.height for b in batches),
        "scored": sum(b.scored for b in batches),
    }


def _figures(name: str, rows: int, runs: dict) -> dict:
    return {
        f"{name}_rows": rows,
        f"{name}_polars_s": round(runs["polars"].seconds, 2),
        f"{name}_spark_s": round(runs["spark"].seconds, 2),
        f"{name}_rows_per_s": {e: round(rows / runs[e].seconds) for e in ENGINES},
        f"{name}_spark_to_polars": round(runs["spark"].seconds / runs["polars"].seconds, 2),
        f"{name}_peak_mib": {e: round(runs[e].peak_mib) for e in ENGINES},
    }


def main() -> None:
    """Training set and batch scoring on both engines; rows per second and ratios."""
    figures: dict = {"spark_master": MASTER, "repeats": REPEAT}
    with tempfile.TemporaryDirectory(prefix="bench-spark-ml-") as root:
        measure(MODULE, "setup", root)
        runs = {
            e: median_run([measure(MODULE, "training_set", root, e) for _ in range(REPEAT)])
            for e in ENGINES
        }
        figures.update(_figures("training_set", EVENTS, runs))
        figures["spark_session_start_s"] = round(runs["spark"].extra["session_s"], 2)
    os.environ["BENCH_BATCH_EVENTS"] = str(SCORE_EVENTS)
    with tempfile.TemporaryDirectory(prefix="bench-spark-ml-score-") as root:
        measure("benchmarks.bench_batch", "setup", root)
        runs = {
            "polars": median_run(
                [measure("benchmarks.bench_batch", "score", root) for _ in range(REPEAT)]
            ),
            "spark": median_run([measure(MODULE, "score_spark", root) for _ in range(REPEAT)]),
        }
        engines_agree(runs, "rows", "rows logged")
        figures.update(_figures("batch_scoring", SCORE_EVENTS, runs))
        measure(MODULE, "stream_setup", root)
        runs = {
            e: median_run([measure(MODULE, "stream", root, e) for _ in range(REPEAT)])
            for e in ENGINES
        }
        engines_agree(runs, "scored", "streamed lines scored")
        figures.update(_figures("streaming", STREAM_FILES * STREAM_LINES, runs))
        figures["streaming_files"] = STREAM_FILES
    report("spark_ml", figures)


if __name__ == "__main__":
    entry_point(
        main,
        {
            "setup": task_setup,
            "training_set": task_training_set,
            "score_spark": task_score_spark,
            "stream_setup": task_stream_setup,
            "stream": task_stream,
        },
    )
