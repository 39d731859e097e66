"""Gold: business tables for analysts, aggregated from silver."""

from __future__ import annotations

import narwhals as nw
from narwhals.typing import FrameT

from mlops_assets.transforms.labels import labels_as_of


def merchant_category_daily(transactions: FrameT, labels: FrameT) -> FrameT:
    """Daily volume, amount and fraud rate per merchant category.

    Fraud counts use the labels known when the table is built (each transaction's latest
    report, so a reversed fraud is not fraud, `transforms.labels`); `labelled` says how many
    of the day's transactions have any label yet, so analysts see how mature a day's rate is.

    Args:
        transactions: Silver transactions of the day(s) to aggregate (`event_time`, `amount`,
            `merchant_category`, `card_id`, `transaction_id`).
        labels: Silver label reports (`transaction_id`, `is_fraud`, `reported_at`).

    Returns:
        One row per `event_date` and `merchant_category`, sorted by both.
    """
    joined = transactions.with_columns(nw.col("event_time").dt.date().alias("event_date")).join(
        labels_as_of(labels).select("transaction_id", "is_fraud"), on="transaction_id", how="left"
    )
    fraud = nw.col("is_fraud").fill_null(False)
    return (
        joined.group_by("event_date", "merchant_category")
        .agg(
            nw.len().alias("transactions"),
            nw.col("card_id").n_unique().alias("cards"),
            nw.col("amount").sum().alias("amount_total"),
            nw.col("amount").mean().alias("amount_mean"),
            nw.col("amount").median().alias("amount_median"),
            # Booleans are counted as integers: Spark does not sum booleans.
            (~nw.col("is_fraud").is_null()).cast(nw.Int64).sum().alias("labelled"),
            fraud.cast(nw.Int64).sum().alias("fraud_transactions"),
            nw.when(fraud).then(nw.col("amount")).otherwise(0.0).sum().alias("fraud_amount"),
        )
        .with_columns(
            (nw.col("fraud_transactions") / nw.col("transactions")).alias("fraud_rate"),
            nw.col("transactions").cast(nw.Int64),
            nw.col("cards").cast(nw.Int64),
            nw.col("labelled").cast(nw.Int64),
            nw.col("fraud_transactions").cast(nw.Int64),
        )
        .sort("event_date", "merchant_category")
    )
