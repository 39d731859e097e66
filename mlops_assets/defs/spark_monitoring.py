"""The monitoring assets' statistics on Spark (`MLOPS_ENGINE_MONITORING=spark`).

The day's predictions are read from the inference log by Spark and every statistic of the
drift and profile tables is computed on the cluster (`monitoring.spark_stats`); only the
results (a few rows per column), each version's reference (its hold-out, small) and the
metadata pass through the driver. The tables written are the polars engine's, with the same
rows (parity-tested), written by delta-rs.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import dagster as dg
import polars as pl

from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.monitoring.thresholds import Thresholds


def day_predictions(lakehouse: LakehouseResource, registered: str, day: datetime.date) -> Any:
    """The day's window of the primary model's predictions as a Spark DataFrame.

    Raises:
        dagster.Failure: The inference log does not exist, or holds no prediction of the day.
    """
    from pyspark.sql import functions as F

    from mlops_assets.defs.serving import INFERENCE_LOG
    from mlops_assets.monitoring.spark_stats import spark_window_predictions

    store = lakehouse.spark_store()
    if not store.exists(INFERENCE_LOG):
        raise dg.Failure("serving/inference_log holds no predictions yet: score a day first")
    log = store.read_partition(INFERENCE_LOG, {"day": day}).to_native()
    log = log.filter(F.col("model_name") == F.lit(registered))
    return spark_window_predictions(log, day)


def _versions(frame: Any) -> list[str]:
    return sorted((row[0] for row in frame.select("model_version").distinct().collect()), key=int)


def _reference_frame(session: Any, reference: pl.DataFrame, window: Any) -> Any:
    """The polars reference as a Spark frame with the window's column types."""
    from mlops_assets.lakehouse import spark_io

    schema = pl.from_arrow(spark_io.arrow_schema(window, "window").empty_table()).schema
    return session.createDataFrame(reference.cast(dict(schema)).to_arrow())


def spark_drift_metrics(
    lakehouse: LakehouseResource, thresholds: Thresholds, day: datetime.date
) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
    """`monitoring.drift_metrics`'s body with the statistics on Spark (same rows, metadata)."""
    from mlops_assets.defs.monitoring import (
        MIN_WINDOW_ROWS,
        load_version,
        no_predictions,
        reference_rows,
        version_summary,
        write_drift,
    )
    from mlops_assets.models.lifecycle import model_name
    from mlops_assets.monitoring.spark_stats import spark_drift
    from mlops_assets.monitoring.windows import drift_table_rows, feature_share

    current = day_predictions(lakehouse, model_name(lakehouse.settings.env), day).cache()
    previous = day_predictions(
        lakehouse, model_name(lakehouse.settings.env), day - datetime.timedelta(days=1)
    )
    try:
        versions = _versions(current)
        if not versions:
            raise no_predictions(day)
        built: list[dg.AssetMaterialization] = []
        tables, summaries = [], {}

        def rows_of(reference: Any, window: Any, columns: list[str], version: str, baseline: str):
            result = spark_drift(reference, window, columns, thresholds=thresholds)
            rows = drift_table_rows(result, day=day, model_version=version, baseline=baseline)
            return rows, result

        for version in versions:
            model = load_version(lakehouse, version)
            columns = [*model.spec.feature_columns, "score"]
            window = current.filter(current.model_version == version).select(*columns)
            reference = _reference_frame(
                window.sparkSession,
                reference_rows(lakehouse, model, built).select(columns),
                window,
            )
            rows, result = rows_of(reference, window, columns, version, "training")
            tables.append(rows)
            summary = version_summary(rows, result, window.count())
            before = previous.filter(previous.model_version == version).select(*columns)
            if before.count() >= MIN_WINDOW_ROWS:
                rows, result = rows_of(before, window, columns, version, "previous_day")
                tables.append(rows)
                summary["drifted_share_vs_previous_day"] = feature_share(result)
            summaries[version] = summary
    finally:
        current.unpersist()
    yield write_drift(lakehouse, day, tables, summaries, {"engine": "spark"})
    yield from built


def spark_profiles(lakehouse: LakehouseResource, day: datetime.date) -> dg.MaterializeResult:
    """`monitoring.profiles`'s body with the statistics on Spark (same rows, metadata)."""
    from pyspark.sql import functions as F

    from mlops_assets.defs.monitoring import UNPROFILED, no_predictions, write_profiles
    from mlops_assets.models.lifecycle import model_name
    from mlops_assets.monitoring.spark_stats import spark_profile

    current = day_predictions(lakehouse, model_name(lakehouse.settings.env), day).cache()
    try:
        versions = _versions(current)
        if not versions:
            raise no_predictions(day)
        profiled = []
        total = 0
        for version in versions:
            rows = current.filter(current.model_version == version)
            candidates = [c for c in rows.columns if c not in UNPROFILED]
            counts = rows.select(
                F.count(F.lit(1)).alias("__rows"), *[F.count(c).alias(c) for c in candidates]
            ).collect()[0]
            total += int(counts["__rows"])
            # Columns that hold a value (a column null on every row is not profiled).
            columns = [c for c in candidates if counts[c] > 0]
            profiled.append((version, spark_profile(rows, columns)))
    finally:
        current.unpersist()
    return write_profiles(lakehouse, day, profiled, total, {"engine": "spark"})
