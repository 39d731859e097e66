"""Monitoring windows from the inference log: the day's predictions, labels, drift rows.

A window is one day (by event time) of `ok` predictions of one model version. Batch scoring is
append-only, so a day scored twice by the same version holds two predictions per transaction:
a window keeps the latest of each (mode, transaction) per version. Labels come from the
label reports in silver: a transaction's label is its latest report (fraud, or not fraud,
including a reversal of a fraud), legitimate once its chargeback window has passed without a
report, and unknown before that.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import narwhals as nw
import polars as pl

from mlops_assets.monitoring.drift import DRIFT_SCHEMA, DriftResult, compute_drift
from mlops_assets.monitoring.thresholds import DEFAULT, Thresholds
from mlops_assets.transforms.labels import labels_as_of

PREDICTION = "score"
DRIFT_TABLE_SCHEMA = {
    "day": pl.Date,
    "model_version": pl.String,
    "baseline": pl.String,
    **DRIFT_SCHEMA,
}


def window_predictions(log: pl.LazyFrame, day: datetime.date) -> pl.DataFrame:
    """The day's `ok` predictions, the latest per (version, mode, transaction) for batch rows."""
    rows = log.filter(pl.col("day") == day, pl.col("status") == "ok").collect()
    if not rows.height:
        return rows
    batch = rows.filter(pl.col("mode") == "batch")
    others = rows.filter(pl.col("mode") != "batch")
    latest = batch.sort("logged_at").unique(
        ["model_version", "transaction_id"], keep="last", maintain_order=True
    )
    return pl.concat([latest, others], how="diagonal_relaxed").sort("event_time", "request_id")


def one_per_transaction(predictions: pl.DataFrame) -> pl.DataFrame:
    """One prediction per (version, transaction): batch first, then the latest other mode.

    A transaction scored in batch and in streaming (or online) counts once in performance.
    """
    rank = pl.when(pl.col("mode") == "batch").then(0).otherwise(1)
    return (
        predictions.with_columns(rank.alias("_rank"))
        .sort("_rank", pl.col("logged_at"), descending=[False, True])
        .unique(["model_version", "transaction_id"], keep="first", maintain_order=True)
        .drop("_rank")
    )


def with_labels(
    predictions: pl.DataFrame,
    chargebacks: pl.DataFrame,
    horizon: datetime.datetime,
    maturity_days: int,
) -> pl.DataFrame:
    """Predictions with their label as known at `horizon`.

    `is_fraud` is the transaction's label at `horizon`, its latest report by then (a fraud
    later reversed is false, `transforms.labels`); without a report it is false when the
    transaction is `maturity_days` old at `horizon`, null otherwise.

    Args:
        predictions: Rows with `transaction_id` and `event_time`.
        chargebacks: Silver label reports (`transaction_id`, `is_fraud`, `reported_at`).
        horizon: What is known at this instant counts (the latest label landing, in a replay).
        maturity_days: Days after which a transaction without a report is legitimate.
    """
    known = (
        labels_as_of(nw.from_native(chargebacks), horizon)
        .to_native()
        .select("transaction_id", pl.col("is_fraud").alias("_reported"))
    )
    mature = horizon - datetime.timedelta(days=maturity_days)
    return (
        predictions.join(known, on="transaction_id", how="left")
        .with_columns(
            pl.when(pl.col("_reported").is_not_null())
            .then(pl.col("_reported"))
            .when(pl.col("event_time") <= mature)
            .then(False)
            .otherwise(None)
            .alias("is_fraud")
        )
        .drop("_reported")
    )


def drift_rows(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    columns: Sequence[str],
    *,
    day: datetime.date,
    model_version: str,
    baseline: str,
    thresholds: Thresholds = DEFAULT,
) -> tuple[pl.DataFrame, DriftResult]:
    """Per-column drift of a window against a baseline, as rows of the drift table."""
    result = compute_drift(reference, current, columns, thresholds=thresholds)
    return drift_table_rows(result, day=day, model_version=model_version, baseline=baseline), result


def drift_table_rows(
    result: DriftResult, *, day: datetime.date, model_version: str, baseline: str
) -> pl.DataFrame:
    """A drift result's per-column rows keyed by day, version and baseline (the drift table's).

    The result may come from either engine (`drift.compute_drift`, `spark_stats.spark_drift`).
    """
    rows = result.columns.select(
        pl.lit(day).alias("day"),
        pl.lit(model_version).alias("model_version"),
        pl.lit(baseline).alias("baseline"),
        pl.all(),
    )
    return rows.cast(DRIFT_TABLE_SCHEMA)


def feature_share(result: DriftResult, prediction: str = PREDICTION) -> float:
    """Share of drifted columns among the features (the prediction left out)."""
    features = result.columns.filter(pl.col("column") != prediction)
    return float(features.get_column("drifted").mean() or 0.0) if features.height else 0.0


def prediction_score(result: DriftResult, prediction: str = PREDICTION) -> float:
    """The prediction column's drift score (0 when it was not compared)."""
    row = result.columns.filter(pl.col("column") == prediction)
    return float(row.get_column("score")[0] or 0.0) if row.height else 0.0
