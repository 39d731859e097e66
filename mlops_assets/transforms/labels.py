"""Label reports read as labels: a transaction's label at an instant, and the reports that count.

Silver labels hold reports, not labels: a transaction may be reported fraud, then reported not
fraud (a reversal), and so on. The label of a transaction at instant t is its latest report
with `reported_at <= t`; a transaction without such a report has no label at t. A report that
repeats the transaction's previous report (a re-send) changes nothing: silver drops re-sends,
and these readers ignore any that reach them, so a re-send never counts twice nor moves the
time a fraud became known. Two reports of one transaction at the same instant with different
values are a conflict that silver quarantines: (transaction_id, reported_at) is unique in
silver labels, which these functions rely on.

Engine-neutral (narwhals): the functions take and return narwhals frames of any backend
(polars eager or lazy, Spark).
"""

from __future__ import annotations

import datetime

import narwhals as nw
from narwhals.typing import FrameT

KEY = "transaction_id"
TIME = "reported_at"
VALUE = "is_fraud"


def _instant(at: datetime.datetime) -> datetime.datetime:
    if at.tzinfo is None:
        raise ValueError(f"label instant {at!r} needs a time zone")
    return at.astimezone(datetime.UTC)


def changes(labels: FrameT) -> FrameT:
    """The reports that change a transaction's label: re-sends left out.

    A report whose `is_fraud` equals the transaction's previous report's (by `reported_at`) is
    a re-send and is dropped; the first report of a transaction and every reversal are kept.

    Args:
        labels: Label reports (`transaction_id`, `is_fraud`, `reported_at`, other columns kept).

    Returns:
        The same columns, the re-sends left out.
    """
    previous = nw.col(VALUE).shift(1).over(KEY, order_by=TIME)
    return (
        labels.with_columns(previous.alias("_previous"))
        .filter(nw.col("_previous").is_null() | (nw.col("_previous") != nw.col(VALUE)))
        .drop("_previous")
    )


def labels_as_of(labels: FrameT, at: datetime.datetime | None = None) -> FrameT:
    """Each transaction's label at an instant: its latest report with `reported_at <= at`.

    Args:
        labels: Label reports (`transaction_id`, `is_fraud`, `reported_at`).
        at: The instant (with a time zone); None takes every report (the latest known).

    Returns:
        One row per transaction reported by `at`: `transaction_id`, `is_fraud` and the
        `reported_at` of the report that gave it.

    Raises:
        ValueError: `at` has no time zone.
    """
    reports = labels.select(KEY, VALUE, TIME)
    if at is not None:
        reports = reports.filter(nw.col(TIME) <= _instant(at))
    return (
        reports.with_columns(nw.col(TIME).max().over(KEY).alias("_latest"))
        .filter(nw.col(TIME) == nw.col("_latest"))
        .drop("_latest")
        # The same report twice (one instant, one value) is one label.
        .unique()
    )


def day_reports(labels: FrameT, day: datetime.date) -> FrameT:
    """The reports of a day that change a label, each with the fraud report it reverses.

    A report of `day` either reports a fraud (`is_fraud` true), or reverses the transaction's
    fraud label (`is_fraud` false after a fraud report: `reverses` is the day that fraud was
    reported), or reports a transaction not fraud that was not fraud before (`reverses` null).
    Re-sends are left out, so a fraud reported again later keeps the day it was first reported.

    Args:
        labels: Every report up to the end of `day` of the transactions reported on `day`
            (`transaction_id`, `is_fraud`, `reported_at`, `reported_date`); earlier reports
            tell what the day's reports change.
        day: The day whose reports are returned.

    Returns:
        `transaction_id`, `is_fraud`, `reported_at` and `reverses` (a date or null) of the
        day's label-changing reports.
    """
    changed = changes(labels.select(KEY, VALUE, TIME, "reported_date"))
    previous_fraud = nw.col(VALUE).shift(1).over(KEY, order_by=TIME)
    previous_day = nw.col("reported_date").shift(1).over(KEY, order_by=TIME)
    return (
        changed.with_columns(
            previous_fraud.alias("_previous_fraud"), previous_day.alias("_previous_day")
        )
        .filter(nw.col("reported_date") == day)
        .select(
            KEY,
            VALUE,
            TIME,
            nw.when(~nw.col(VALUE) & nw.col("_previous_fraud").fill_null(False))
            .then(nw.col("_previous_day"))
            .cast(nw.Date)
            .alias("reverses"),
        )
    )
