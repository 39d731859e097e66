"""Prediction summaries for analysts: what the models scored, flagged, caught and missed.

`gold/prediction_summary` holds, per event day, model, model version, merchant category and
channel: the transactions scored, those flagged, how many carry a label yet, the confirmed
frauds caught (flagged) and missed (not flagged), and the amounts of each. A transaction is a
confirmed fraud when its label, as of the instant the summary is built, is fraud
(`transforms.labels.labels_as_of`: its latest report by then; a reversed fraud is not fraud);
without a report it is not (yet) a confirmed fraud.

A transaction counts once per model version: the inference log is append-only and a day may
be scored twice (a re-run, batch and streaming), so each (model, version, transaction) keeps
one `ok` prediction, the batch one first, else the latest of the other modes (as performance
monitoring counts it). Merchant category, channel and amount are silver's; a prediction whose
transaction is not in silver (an online request for a transaction that never landed) keeps
the values the request carried, and is counted as such.

Engine-neutral (narwhals): frames of any backend (polars eager or lazy, Spark).
"""

from __future__ import annotations

import datetime

import narwhals as nw
import polars as pl
from narwhals.typing import FrameT

from mlops_assets.transforms.labels import labels_as_of

KEYS = ("day", "model_name", "model_version", "merchant_category", "channel")
# Columns of the inference log the summary reads; the last three are optional (a model's
# inputs, present when the model takes them).
LOG_COLUMNS = (
    "request_id",
    "mode",
    "logged_at",
    "day",
    "transaction_id",
    "model_name",
    "model_version",
    "decision",
    "score",
    "status",
)
ATTRIBUTES = ("merchant_category", "channel", "amount")
TRANSACTION_COLUMNS = ("transaction_id", *ATTRIBUTES)

SCHEMA: dict[str, pl.DataType] = {
    "day": pl.Date(),
    "model_name": pl.String(),
    "model_version": pl.String(),
    "merchant_category": pl.String(),
    "channel": pl.String(),
    "scored": pl.Int64(),
    "flagged": pl.Int64(),
    "labelled": pl.Int64(),
    "fraud_caught": pl.Int64(),
    "fraud_missed": pl.Int64(),
    "without_transaction": pl.Int64(),
    "amount_scored": pl.Float64(),
    "amount_flagged": pl.Float64(),
    "fraud_amount_caught": pl.Float64(),
    "fraud_amount_missed": pl.Float64(),
    "mean_score": pl.Float64(),
    "labels_as_of": pl.Datetime("us", "UTC"),
}

DESCRIPTIONS = {
    "day": "Event day (UTC) of the scored transactions; the partition.",
    "model_name": "Registered model that scored them (`<env>.<model>`).",
    "model_version": "Registered version that scored them.",
    "merchant_category": "Merchant category of the transactions (silver).",
    "channel": "Channel of the transactions (silver).",
    "scored": "Transactions scored (one prediction per transaction and version).",
    "flagged": "Of those, flagged as fraud (the decision at the model's threshold).",
    "labelled": "Of those, with a label report as of `labels_as_of`.",
    "fraud_caught": "Confirmed frauds (label fraud as of `labels_as_of`) that were flagged.",
    "fraud_missed": "Confirmed frauds that were not flagged.",
    "without_transaction": "Predictions whose transaction is not in silver (request values).",
    "amount_scored": "Amount of the transactions scored.",
    "amount_flagged": "Amount of the transactions flagged.",
    "fraud_amount_caught": "Amount of the confirmed frauds flagged.",
    "fraud_amount_missed": "Amount of the confirmed frauds not flagged.",
    "mean_score": "Mean fraud score of the transactions scored.",
    "labels_as_of": "The instant whose labels count: when the summary was built.",
}


def one_prediction_each(log: FrameT) -> FrameT:
    """One `ok` prediction per (model, version, transaction): batch first, else the latest.

    A prediction without a transaction id (an online request that named none) is its own
    transaction, keyed by its request id.

    Args:
        log: Inference log rows (`LOG_COLUMNS`, other columns kept).

    Returns:
        The same columns, one row per model, version and transaction.
    """
    keys = ["model_name", "model_version", "_key"]
    rank = nw.when(nw.col("mode") == "batch").then(0).otherwise(1)
    return (
        log.filter(nw.col("status") == "ok")
        .with_columns(
            nw.when(nw.col("transaction_id").is_null())
            .then(nw.col("request_id"))
            .otherwise(nw.col("transaction_id"))
            .alias("_key"),
            rank.alias("_rank"),
        )
        .filter(nw.col("_rank") == nw.col("_rank").min().over(*keys))
        .filter(nw.col("logged_at") == nw.col("logged_at").max().over(*keys))
        # Rows of one append share their `logged_at`; a transaction is once in an append.
        .unique(keys, keep="any")
        .drop("_key", "_rank")
    )


def prediction_summary(
    log: FrameT,
    transactions: FrameT,
    labels: FrameT,
    at: datetime.datetime,
) -> FrameT:
    """The summary of scored predictions by day, model version, merchant category and channel.

    Args:
        log: Inference log rows of the day(s) to summarize (`LOG_COLUMNS`; `amount`,
            `merchant_category` and `channel` when the model took them).
        transactions: Silver transactions of the same event day(s) (`TRANSACTION_COLUMNS`).
        labels: Silver label reports (`transaction_id`, `is_fraud`, `reported_at`).
        at: Labels reported by this instant count (with a time zone).

    Returns:
        One row per `KEYS`, the columns of `SCHEMA`, sorted by the keys.

    Raises:
        ValueError: `at` has no time zone, or the log lacks one of `LOG_COLUMNS`.
    """
    if at.tzinfo is None:
        raise ValueError(f"prediction summary: labels instant {at!r} needs a time zone")
    present = set(log.collect_schema().names())
    missing = [c for c in LOG_COLUMNS if c not in present]
    if missing:
        raise ValueError(f"prediction summary: the inference log lacks columns {missing}")
    carried = [c for c in ATTRIBUTES if c in present]
    predictions = one_prediction_each(log.select(*LOG_COLUMNS, *carried))
    silver = transactions.select(
        "transaction_id",
        *(nw.col(c).alias(f"_silver_{c}") for c in ATTRIBUTES),
        nw.lit(True).alias("_in_silver"),
    )
    known = labels_as_of(labels, at).select("transaction_id", "is_fraud")
    joined = (
        predictions.join(silver, on="transaction_id", how="left")
        .join(known, on="transaction_id", how="left")
        .with_columns(
            *(
                (
                    nw.when(nw.col("_in_silver").is_null())
                    .then(nw.col(c).cast(nw.String if c != "amount" else nw.Float64))
                    .otherwise(nw.col(f"_silver_{c}"))
                    if c in carried
                    else nw.col(f"_silver_{c}")
                ).alias(c)
                for c in ATTRIBUTES
            )
        )
    )
    fraud = nw.col("is_fraud").fill_null(False)
    flagged = nw.col("decision").fill_null(False)
    amount = nw.col("amount").fill_null(0.0)

    def count(condition: nw.Expr, name: str) -> nw.Expr:
        # Booleans are counted as integers: Spark does not sum booleans.
        return condition.cast(nw.Int64).sum().alias(name)

    def total(condition: nw.Expr, name: str) -> nw.Expr:
        return nw.when(condition).then(amount).otherwise(0.0).sum().alias(name)

    summary = joined.group_by(*KEYS).agg(
        nw.len().alias("scored"),
        count(flagged, "flagged"),
        count(~nw.col("is_fraud").is_null(), "labelled"),
        count(fraud & flagged, "fraud_caught"),
        count(fraud & ~flagged, "fraud_missed"),
        count(nw.col("_in_silver").is_null(), "without_transaction"),
        amount.sum().alias("amount_scored"),
        total(flagged, "amount_flagged"),
        total(fraud & flagged, "fraud_amount_caught"),
        total(fraud & ~flagged, "fraud_amount_missed"),
        nw.col("score").mean().alias("mean_score"),
    )
    instant = at.astimezone(datetime.UTC)
    return (
        summary.with_columns(nw.lit(instant).alias("labels_as_of"))
        .select(
            nw.col(name).cast(nw.Datetime("us", "UTC") if name == "labels_as_of" else _nw(dtype))
            for name, dtype in SCHEMA.items()
        )
        .sort(*KEYS, nulls_last=True)
    )


def _nw(dtype: pl.DataType) -> type[nw.dtypes.DType] | nw.dtypes.DType:
    """The narwhals type of a polars type of `SCHEMA`."""
    return {
        pl.Date(): nw.Date,
        pl.String(): nw.String,
        pl.Int64(): nw.Int64,
        pl.Float64(): nw.Float64,
    }[dtype]
