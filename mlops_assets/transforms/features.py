"""Feature computations: card behaviour over trailing time windows, merchant risk from labels.

These are polars expressions: narwhals has no time-based rolling windows yet, so the Spark
engine will need its own versions of these functions, held equal by the parity tests.
"""

from __future__ import annotations

import datetime

import polars as pl

UTC = datetime.UTC
# Every window of the card features fits in this look-back, so a day's refresh reads this many
# earlier days and no more, however long the history.
CARD_LOOKBACK_DAYS = 7
MERCHANT_WINDOW_DAYS = 30
# Smoothing of merchant fraud rates towards the prior for merchants with few transactions.
MERCHANT_PRIOR_RATE = 0.01
MERCHANT_PRIOR_WEIGHT = 200.0
NIGHT_HOURS = (0, 6)


def card_behaviour(transactions: pl.DataFrame, day: datetime.date) -> pl.DataFrame:
    """Card behaviour after each of a day's transactions, over trailing time windows.

    Each row describes a card just after one of its transactions (`event_time` is the
    timestamp key): windows are `(event_time - w, event_time]`, so they include that
    transaction. A training event or a request at time T uses the latest row strictly before
    T, so its windows end at the card's previous transaction, not at T (the request-time
    feature `seconds_since_card_txn` says how long before T that was). Offline and online
    agree once the online store holds that row; between daily publishes the store lags.

    Args:
        transactions: Silver transactions with `event_date` in `[day - 7, day]` (the look-back)
            and columns `transaction_id`, `card_id`, `event_time`, `amount`, `channel`,
            `country`, `card_country`.
        day: The event day to produce rows for.

    Returns:
        One row per transaction of `day`, keyed by `card_id` and `transaction_id`, sorted by
        card and time.
    """
    t = "event_time"
    ordered = transactions.select(
        "transaction_id",
        "card_id",
        t,
        "amount",
        (pl.col("channel") == "online").cast(pl.Float64).alias("_online"),
        (pl.col("country") != pl.col("card_country"))
        .fill_null(False)
        .cast(pl.Float64)
        .alias("_foreign"),
        pl.col(t)
        .dt.hour()
        .is_between(*NIGHT_HOURS, closed="left")
        .cast(pl.Float64)
        .alias("_night"),
    ).sort("card_id", t, "transaction_id")

    def rolling(expr: pl.Expr, window: str, how: str) -> pl.Expr:
        method = getattr(expr, f"rolling_{how}_by")
        return method(t, window_size=window, closed="right").over("card_id")

    one = pl.lit(1.0).alias("_one")
    features = ordered.with_columns(one).with_columns(
        rolling(pl.col("_one"), "1h", "sum").cast(pl.Int64).alias("txn_count_1h"),
        rolling(pl.col("_one"), "24h", "sum").cast(pl.Int64).alias("txn_count_24h"),
        rolling(pl.col("_one"), "7d", "sum").cast(pl.Int64).alias("txn_count_7d"),
        rolling(pl.col("amount"), "24h", "sum").alias("amount_sum_24h"),
        rolling(pl.col("amount"), "24h", "max").alias("amount_max_24h"),
        rolling(pl.col("amount"), "7d", "mean").alias("amount_mean_7d"),
        rolling(pl.col("amount"), "7d", "std").fill_null(0.0).alias("amount_std_7d"),
        rolling(pl.col("_online"), "7d", "mean").alias("online_share_7d"),
        rolling(pl.col("_foreign"), "7d", "mean").alias("foreign_share_7d"),
        rolling(pl.col("_night"), "7d", "mean").alias("night_share_7d"),
    )
    return features.filter(pl.col(t).dt.date() == day).select(
        "card_id",
        "transaction_id",
        t,
        pl.col(t).dt.date().alias("event_date"),
        "txn_count_1h",
        "txn_count_24h",
        "txn_count_7d",
        "amount_sum_24h",
        "amount_max_24h",
        "amount_mean_7d",
        "amount_std_7d",
        "online_share_7d",
        "foreign_share_7d",
        "night_share_7d",
    )


def merchant_daily(
    day_transactions: pl.DataFrame, reported_labels: pl.DataFrame, day: datetime.date
) -> pl.DataFrame:
    """Per merchant, one day's transactions and the chargebacks reported that day.

    Args:
        day_transactions: Silver transactions with `event_date == day` (`merchant_id`,
            `amount`).
        reported_labels: Labels reported on `day`, joined to their transaction's merchant
            (`merchant_id`, `is_fraud`).
        day: The day.

    Returns:
        One row per merchant active that day (by transactions or by reports).
    """
    volume = day_transactions.group_by("merchant_id").agg(
        pl.len().cast(pl.Int64).alias("transactions"),
        pl.col("amount").sum().alias("amount_sum"),
    )
    reports = reported_labels.group_by("merchant_id").agg(
        pl.col("is_fraud").sum().cast(pl.Int64).alias("fraud_reported"),
        pl.len().cast(pl.Int64).alias("chargebacks_reported"),
    )
    return (
        volume.join(reports, on="merchant_id", how="full", coalesce=True)
        .with_columns(
            pl.col("transactions", "fraud_reported", "chargebacks_reported").fill_null(0),
            pl.col("amount_sum").fill_null(0.0),
            pl.lit(day).alias("day"),
        )
        .select(
            "merchant_id",
            "day",
            "transactions",
            "amount_sum",
            "fraud_reported",
            "chargebacks_reported",
        )
        .sort("merchant_id")
    )


def merchant_risk(daily: pl.DataFrame, day: datetime.date) -> pl.DataFrame:
    """Merchant risk as known at the end of `day`, from the 30 days ending with it.

    A chargeback counts from the end of the day it was reported, so the row's timestamp key
    `as_of` (midnight UTC after `day`) is the moment its values became known, and an event
    uses it only from then on.

    Args:
        daily: `merchant_daily` rows for days in `[day - 29, day]`.
        day: The last day of the window.

    Returns:
        One row per merchant seen in the window: `transactions_30d`, `fraud_reported_30d`,
        `chargebacks_30d`, `fraud_rate_30d` (smoothed towards the prior), keyed by
        `merchant_id` and `as_of`.
    """
    start = day - datetime.timedelta(days=MERCHANT_WINDOW_DAYS - 1)
    window = daily.filter(pl.col("day") >= start, pl.col("day") <= day)
    as_of = datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time(), UTC)
    return (
        window.group_by("merchant_id")
        .agg(
            pl.col("transactions").sum().alias("transactions_30d"),
            pl.col("fraud_reported").sum().alias("fraud_reported_30d"),
            pl.col("chargebacks_reported").sum().alias("chargebacks_30d"),
        )
        .with_columns(
            (
                (pl.col("fraud_reported_30d") + MERCHANT_PRIOR_RATE * MERCHANT_PRIOR_WEIGHT)
                / (pl.col("transactions_30d") + MERCHANT_PRIOR_WEIGHT)
            ).alias("fraud_rate_30d"),
            pl.lit(as_of).cast(pl.Datetime("us", "UTC")).alias("as_of"),
            pl.lit(day).alias("day"),
        )
        .select(
            "merchant_id",
            "as_of",
            "day",
            "transactions_30d",
            "fraud_reported_30d",
            "chargebacks_30d",
            "fraud_rate_30d",
        )
        .sort("merchant_id")
    )
