"""Incremental daily feature refresh: the cost at 60 days of history against 7 days.

Two lakes of silver transactions and labels are synthesized, one of 8 days and one of 61; the
feature job (card behaviour, merchant daily, merchant risk) then refreshes the last day of each
(7 and 60 days of history before it), alternately, each run in a fresh process. Bounded
look-backs should make the two cost about the same.

A third lake of 8 days lives on a local S3-compatible store (SeaweedFS on 127.0.0.1, `make
weed`); its refresh, in the same run, gives the object store's cost beside the local disk.
"""

from __future__ import annotations

import datetime
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harness import entry_point, measure, object_store, report, run_partition

START = datetime.date(2026, 1, 1)
HISTORIES = (7, 60)
PER_DAY = int(os.environ.get("BENCH_FEATURES_ROWS", "200000"))
REPEAT = int(os.environ.get("BENCH_FEATURES_REPEAT", "3"))
# The lake on the local disk whatever the calling shell sets.
LOCAL_LAKE = {"MLOPS_LAKE_URI": ""}


def _settings(root: str):
    from mlops_assets.settings import load_settings

    return load_settings(
        {
            **os.environ,
            "MLOPS_DATA_ROOT": root,
            "MLOPS_ENV": "dev",
            "MLOPS_START_DATE": START.isoformat(),
        }
    )


def task_setup(root: str, history: str) -> dict:
    """Write `history + 1` days of silver transactions and labels, and their merchant_daily."""
    import polars as pl

    from mlops_assets.lakehouse.catalog import Catalog, TableRef
    from mlops_assets.lakehouse.delta_io import write_partition
    from mlops_assets.transforms.features import merchant_daily

    settings = _settings(root)
    catalog = Catalog(settings)
    tables = {
        name: catalog.uri_for_write(TableRef(*name.split("/")))
        for name in ("silver/transactions", "silver/labels", "features/merchant_daily")
    }
    started = time.perf_counter()
    cards, merchants = max(1_000, PER_DAY // 4), max(100, PER_DAY // 40)
    reported: dict[datetime.date, list[pl.DataFrame]] = {}
    days = int(history) + 1
    for index in range(days):
        day = START + datetime.timedelta(days=index)
        midnight = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
        ids = pl.int_range(PER_DAY, eager=True)
        seed = pl.lit(index * 7919)
        transactions = (
            pl.DataFrame({"n": ids})
            .select(
                pl.format("tx_{}_{}", pl.lit(day.strftime("%Y%m%d")), pl.col("n")).alias(
                    "transaction_id"
                ),
                pl.format("card_{}", ((pl.col("n") * 2654435761 + seed) % cards)).alias("card_id"),
                pl.format("m_{}", ((pl.col("n") * 40503 + seed) % merchants)).alias("merchant_id"),
                (
                    pl.lit(midnight)
                    + pl.duration(microseconds=(pl.col("n") * 86_399_000_000) // PER_DAY)
                )
                .cast(pl.Datetime("us", "UTC"))
                .alias("event_time"),
                (((pl.col("n") * 7 + seed) % 500) + 1.5).cast(pl.Float64).alias("amount"),
                pl.when(pl.col("n") % 3 == 0)
                .then(pl.lit("online"))
                .otherwise(pl.lit("pos"))
                .alias("channel"),
                pl.lit("DE").alias("country"),
                pl.when(pl.col("n") % 11 == 0)
                .then(pl.lit("FR"))
                .otherwise(pl.lit("DE"))
                .alias("card_country"),
            )
            .with_columns(
                pl.col("event_time").dt.date().alias("event_date"),
                pl.lit(day).alias("landing_date"),
            )
        )
        write_partition(tables["silver/transactions"], transactions, {"landing_date": day})
        fraud = (
            transactions.filter(pl.col("n") % 100 == 0)
            if "n" in transactions.columns
            else (transactions.gather_every(100))
        )
        report_day = day + datetime.timedelta(days=3)
        labels = fraud.select(
            "transaction_id",
            "card_id",
            (pl.col("event_time") + pl.duration(days=3)).alias("reported_at"),
            pl.lit("fraud_card_not_present").alias("chargeback_reason"),
            pl.lit(True).alias("is_fraud"),
        ).with_columns(
            pl.col("reported_at").dt.date().alias("reported_date"),
            pl.lit(report_day).alias("landing_date"),
        )
        reported.setdefault(report_day, []).append(
            labels.join(fraud.select("transaction_id", "merchant_id"), on="transaction_id")
        )
        if report_day < START + datetime.timedelta(days=days):
            write_partition(tables["silver/labels"], labels, {"landing_date": report_day})
        for_day = (
            pl.concat(reported[day])
            if day in reported
            else pl.DataFrame(schema={"merchant_id": pl.String, "is_fraud": pl.Boolean})
        )
        daily = merchant_daily(transactions, for_day.select("merchant_id", "is_fraud"), day)
        write_partition(tables["features/merchant_daily"], daily, {"day": day})
    return {"seconds": time.perf_counter() - started, "rows": PER_DAY * days}


def task_refresh(root: str, day_index: str) -> dict:
    """Refresh the feature tables for one day in-process; report the job's wall time."""
    from mlops_assets.definitions import build_definitions

    settings = _settings(root)
    day = START + datetime.timedelta(days=int(day_index))
    job = build_definitions(settings).resolve_job_def("features_daily")
    result, seconds, steps = run_partition(job, day, digits=3)
    if not result.success:
        raise RuntimeError(f"feature refresh of {day} failed")
    return {"seconds": seconds, "steps": steps}


def main() -> None:
    """Measure the refresh at 7 and 60 days of history, and at 7 on the object store."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-features-") as root,
        object_store(Path(root) / "seaweedfs") as s3,
    ):
        lakes = {h: str(Path(root) / f"history-{h}") for h in HISTORIES}
        s3_lake, s3_env = str(Path(root) / "s3-history-7"), s3.environ(prefix="bench-features")
        setup = {
            h: measure("benchmarks.bench_features", "setup", lakes[h], str(h), env=LOCAL_LAKE)
            for h in HISTORIES
        }
        s3_setup = measure("benchmarks.bench_features", "setup", s3_lake, "7", env=s3_env)
        at_7, at_60, on_s3 = [], [], []
        # Alternate the three so that drift in the machine's speed hits all alike.
        for _ in range(REPEAT):
            at_7.append(
                measure("benchmarks.bench_features", "refresh", lakes[7], "7", env=LOCAL_LAKE)
            )
            at_60.append(
                measure("benchmarks.bench_features", "refresh", lakes[60], "60", env=LOCAL_LAKE)
            )
            on_s3.append(measure("benchmarks.bench_features", "refresh", s3_lake, "7", env=s3_env))
    median_7 = statistics.median(m.seconds for m in at_7)
    median_60 = statistics.median(m.seconds for m in at_60)
    median_s3 = statistics.median(m.seconds for m in on_s3)
    figures = {
        "transactions_per_day": PER_DAY,
        "lakes_days": [h + 1 for h in HISTORIES],
        "setup_s": {str(h): round(m.seconds, 1) for h, m in setup.items()},
        "refresh_at_7_days_s": round(median_7, 3),
        "refresh_at_60_days_s": round(median_60, 3),
        "steps_at_7_days_s": at_7[0].extra["steps"],
        "steps_at_60_days_s": at_60[0].extra["steps"],
        "peak_mib_at_60_days": round(max(m.peak_mib for m in at_60)),
        "ratio_60_to_7": round(median_60 / median_7, 3),
        "goal": "ratio_60_to_7 <= 1.2",
        "object_store": {
            "setup_at_7_days_s": round(s3_setup.seconds, 1),
            "setup_s3_to_local": round(s3_setup.seconds / setup[7].seconds, 2),
            "refresh_at_7_days_s": round(median_s3, 3),
            "refresh_runs_s": [round(m.seconds, 3) for m in on_s3],
            "steps_at_7_days_s": sorted(on_s3, key=lambda m: m.seconds)[len(on_s3) // 2].extra[
                "steps"
            ],
            "refresh_s3_to_local": round(median_s3 / median_7, 2),
        },
    }
    report("features", figures)


if __name__ == "__main__":
    entry_point(main, {"setup": task_setup, "refresh": task_refresh})
