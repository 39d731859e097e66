"""Feature computations: card behaviour over trailing time windows, merchant risk from labels.

Merchant daily and merchant risk are narwhals code and run unchanged on polars and Spark.
Card behaviour needs time-based rolling windows, which narwhals does not have: it is polars
code with a Spark twin (range windows over event-time microseconds) behind the same function,
held equal by the parity tests. Each function returns the engine's native frame it was given.
"""

from __future__ import annotations

import datetime
from typing import Any

import narwhals as nw
import polars as pl

from mlops_assets.transforms import SPARK_LIKE

UTC = datetime.UTC
# Every window of the card features fits in this look-back, so a day's refresh reads this many
# earlier days and no more, however long the history.
CARD_LOOKBACK_DAYS = 7
MERCHANT_WINDOW_DAYS = 30
# Smoothing of merchant fraud rates towards the prior for merchants with few transactions.
MERCHANT_PRIOR_RATE = 0.01
MERCHANT_PRIOR_WEIGHT = 200.0
NIGHT_HOURS = (0, 6)
CARD_FEATURE_COLUMNS = (
    "card_id",
    "transaction_id",
    "event_time",
    "event_date",
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


def card_behaviour(transactions: Any, day: datetime.date) -> Any:
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
        card and time; a polars frame for a polars frame, a Spark frame for a Spark frame.
    """
    if nw.from_native(transactions).implementation in SPARK_LIKE:
        return _card_behaviour_spark(transactions, day)
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
        *[pl.col(t).dt.date().alias(c) if c == "event_date" else c for c in CARD_FEATURE_COLUMNS]
    )


def _card_behaviour_spark(transactions: Any, day: datetime.date) -> Any:
    # Range windows over the card's event times in microseconds: `(t - w, t]` is the frame
    # from t - w + 1 us to t. Rows of the same card at the same instant are peers in a range
    # frame, as they are in polars' time-based windows.
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    t = "event_time"
    micros = {"1h": 3_600 * 10**6, "24h": 86_400 * 10**6, "7d": 7 * 86_400 * 10**6}
    start, end = NIGHT_HOURS
    base = transactions.select(
        "transaction_id",
        "card_id",
        t,
        "amount",
        (F.col("channel") == "online").cast("double").alias("_online"),
        F.coalesce(F.col("country") != F.col("card_country"), F.lit(False))
        .cast("double")
        .alias("_foreign"),
        ((F.hour(t) >= start) & (F.hour(t) < end)).cast("double").alias("_night"),
        F.unix_micros(F.col(t)).alias("_micros"),
    )

    def window(size: str):
        return Window.partitionBy("card_id").orderBy("_micros").rangeBetween(-(micros[size] - 1), 0)

    features = base.select(
        "card_id",
        "transaction_id",
        t,
        F.to_date(F.col(t)).alias("event_date"),
        F.count(F.lit(1)).over(window("1h")).cast("long").alias("txn_count_1h"),
        F.count(F.lit(1)).over(window("24h")).cast("long").alias("txn_count_24h"),
        F.count(F.lit(1)).over(window("7d")).cast("long").alias("txn_count_7d"),
        F.sum("amount").over(window("24h")).alias("amount_sum_24h"),
        F.max("amount").over(window("24h")).alias("amount_max_24h"),
        F.avg("amount").over(window("7d")).alias("amount_mean_7d"),
        F.coalesce(F.stddev_samp("amount").over(window("7d")), F.lit(0.0)).alias("amount_std_7d"),
        F.avg("_online").over(window("7d")).alias("online_share_7d"),
        F.avg("_foreign").over(window("7d")).alias("foreign_share_7d"),
        F.avg("_night").over(window("7d")).alias("night_share_7d"),
    )
    return features.filter(F.col("event_date") == F.lit(day)).select(*CARD_FEATURE_COLUMNS)


def merchant_daily(day_transactions: Any, reported_labels: Any, day: datetime.date) -> Any:
    """Per merchant, one day's transactions and the label reports made that day.

    Each of the day's label-changing reports counts once on the merchant's row of the day
    (`fraud_day == day`): `chargebacks_reported` counts them, `fraud_reported` the frauds among
    them. A report reversing a fraud (not fraud after fraud) also counts in `fraud_reversed` of
    the row whose `fraud_day` is the day that fraud was reported (the day's own row when it was
    reported the same day), so that merchant risk can take back exactly the frauds it counted
    (`merchant_risk`).

    Args:
        day_transactions: Silver transactions with `event_date == day` (`merchant_id`,
            `amount`), a polars or Spark frame.
        reported_labels: The day's label-changing reports (`transforms.labels.day_reports`),
            joined to their transaction's merchant (`merchant_id`, `is_fraud`, and `reverses`:
            the day of the fraud a report reverses, null otherwise; without the column no
            report reverses), of the same engine.
        day: The day.

    Returns:
        One row per merchant active that day (by transactions or by reports) with
        `fraud_day == day`, plus one row per merchant and earlier day whose frauds were
        reversed that day: `merchant_id`, `day`, `fraud_day`, `transactions`, `amount_sum`,
        `fraud_reported`, `chargebacks_reported`, `fraud_reversed`; as the engine's native
        frame, sorted by merchant and `fraud_day`.
    """
    transactions = nw.from_native(day_transactions)
    labels = nw.from_native(reported_labels)
    if "reverses" not in labels.columns:
        labels = labels.with_columns(nw.lit(None).cast(nw.Date).alias("reverses"))
    volume = transactions.group_by("merchant_id").agg(
        nw.len().cast(nw.Int64).alias("transactions"),
        nw.col("amount").sum().alias("amount_sum"),
    )
    reports = labels.group_by("merchant_id").agg(
        nw.col("is_fraud").cast(nw.Int64).sum().cast(nw.Int64).alias("fraud_reported"),
        nw.len().cast(nw.Int64).alias("chargebacks_reported"),
    )
    reversals = (
        labels.filter(~nw.col("reverses").is_null())
        .group_by("merchant_id", "reverses")
        .agg(nw.len().cast(nw.Int64).alias("fraud_reversed"))
        .select(
            nw.col("merchant_id").alias("merchant_id_reversed"),
            nw.col("reverses").alias("fraud_day"),
            "fraud_reversed",
        )
    )
    today = volume.join(reports, on="merchant_id", how="full", suffix="_reported").select(
        nw.coalesce("merchant_id", "merchant_id_reported").alias("merchant_id"),
        nw.lit(day).alias("fraud_day"),
        nw.col("transactions").fill_null(0).cast(nw.Int64),
        nw.col("amount_sum").fill_null(0.0).cast(nw.Float64),
        nw.col("fraud_reported").fill_null(0).cast(nw.Int64),
        nw.col("chargebacks_reported").fill_null(0).cast(nw.Int64),
    )
    joined = today.join(
        reversals,
        left_on=["merchant_id", "fraud_day"],
        right_on=["merchant_id_reversed", "fraud_day"],
        how="full",
        suffix="_reversed",
    )
    return (
        joined.select(
            nw.coalesce("merchant_id", "merchant_id_reversed").alias("merchant_id"),
            nw.lit(day).alias("day"),
            nw.coalesce("fraud_day", "fraud_day_reversed").alias("fraud_day"),
            nw.col("transactions").fill_null(0).cast(nw.Int64),
            nw.col("amount_sum").fill_null(0.0).cast(nw.Float64),
            nw.col("fraud_reported").fill_null(0).cast(nw.Int64),
            nw.col("chargebacks_reported").fill_null(0).cast(nw.Int64),
            nw.col("fraud_reversed").fill_null(0).cast(nw.Int64),
        )
        .sort("merchant_id", "fraud_day")
        .to_native()
    )


def merchant_risk(daily: Any, day: datetime.date) -> Any:
    """Merchant risk as known at the end of `day`, from the 30 days ending with it.

    A chargeback counts from the end of the day it was reported, so the row's timestamp key
    `as_of` (midnight UTC after `day`) is the moment its values became known, and an event
    uses it only from then on. `fraud_reported_30d` counts the transactions whose label at
    `as_of` is fraud and whose fraud was reported in the window: a fraud reported in the
    window and reversed by the end of `day` is taken back (`merchant_daily`'s
    `fraud_reversed`), a re-sent fraud counts once.

    Args:
        daily: `merchant_daily` rows for days in `[day - 29, day]` (`merchant_id`, `day`,
            `fraud_day`, `transactions`, `fraud_reported`, `chargebacks_reported`,
            `fraud_reversed`), a polars or Spark frame.
        day: The last day of the window.

    Returns:
        One row per merchant seen in the window: `transactions_30d`, `fraud_reported_30d`,
        `chargebacks_30d`, `fraud_rate_30d` (smoothed towards the prior), keyed by
        `merchant_id` and `as_of`, as the engine's native frame.
    """
    start = day - datetime.timedelta(days=MERCHANT_WINDOW_DAYS - 1)
    window = nw.from_native(daily).filter(nw.col("day") >= start, nw.col("day") <= day)
    as_of = datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time(), UTC)
    # A reversal takes back a fraud only if the window counted it (reported in the window).
    taken_back = nw.when(nw.col("fraud_day") >= start).then(nw.col("fraud_reversed")).otherwise(0)
    return (
        window.group_by("merchant_id")
        .agg(
            nw.col("transactions").sum().cast(nw.Int64).alias("transactions_30d"),
            (nw.col("fraud_reported") - taken_back)
            .sum()
            .cast(nw.Int64)
            .alias("fraud_reported_30d"),
            nw.col("chargebacks_reported").sum().cast(nw.Int64).alias("chargebacks_30d"),
        )
        .with_columns(
            (
                (nw.col("fraud_reported_30d") + MERCHANT_PRIOR_RATE * MERCHANT_PRIOR_WEIGHT)
                / (nw.col("transactions_30d") + MERCHANT_PRIOR_WEIGHT)
            ).alias("fraud_rate_30d"),
            nw.lit(as_of).cast(nw.Datetime("us", "UTC")).alias("as_of"),
            nw.lit(day).alias("day"),
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
        .to_native()
    )
