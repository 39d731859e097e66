"""The windows of a training set: which events, which labels, which feature rows.

A model's training set holds the events of `days` event days ending at `end`, each labelled
with its label at the label cutoff (its latest report by then, `transforms.labels`). Only
events at least `label_maturity_days` old at the cutoff are kept: a fraud whose chargeback
has not had time to arrive would be learnt as legitimate. The point-in-time join of those
events reads each feature table back to its declared look-back before the first event day,
far enough for the oldest row a join may use. These rules are the same for every declared
model; the numbers are each model's.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import narwhals as nw
import polars as pl

from mlops_assets.features.registry import feature_table
from mlops_assets.features.spec import FeatureSpec
from mlops_assets.monitoring.thresholds import DEFAULT as THRESHOLDS
from mlops_assets.transforms.labels import labels_as_of

# Feature rows read before the first event day: card behaviour rows back to the oldest a join
# may take (30 days, the table's staleness limit), merchant risk rows four days back (its
# rows are stamped at the end of a day and go stale after three).
FEATURE_LOOKBACK_DAYS: dict[str, int] = {"card_behaviour": 30, "merchant_risk": 4}


class WindowError(ValueError):
    """A training window that cannot be built (the message names the input and the problem)."""


@dataclass(frozen=True)
class TrainingWindows:
    """A model's declared training-set windows.

    Attributes:
        days: Event days in a training set, ending at its last day.
        label_maturity_days: Only events at least this many days old at the label cutoff are
            kept, so their chargebacks have had time to arrive (default: the monitoring's
            label maturity, `monitoring.thresholds`).
        feature_lookback_days: Feature table name to the days of rows read before the first
            event day for the point-in-time join.
    """

    days: int = 28
    label_maturity_days: int = THRESHOLDS.label_maturity_days
    feature_lookback_days: Mapping[str, int] = field(
        default_factory=lambda: dict(FEATURE_LOOKBACK_DAYS)
    )

    def __post_init__(self) -> None:
        if self.days < 1:
            raise WindowError(f"days must be at least 1, got {self.days}")
        if self.label_maturity_days < 0:
            raise WindowError(
                f"label_maturity_days must be at least 0, got {self.label_maturity_days}"
            )
        for table, days in self.feature_lookback_days.items():
            feature_table(table)  # a KeyError naming the known tables
            if days < 0:
                raise WindowError(f"feature look-back of {table} must be at least 0, got {days}")

    def replace(
        self, *, days: int | None = None, label_maturity_days: int | None = None
    ) -> TrainingWindows:
        """These windows with a run's overrides (None keeps the declared value)."""
        return TrainingWindows(
            days=self.days if days is None else days,
            label_maturity_days=(
                self.label_maturity_days if label_maturity_days is None else label_maturity_days
            ),
            feature_lookback_days=dict(self.feature_lookback_days),
        )

    def lookback(self, table: str) -> int:
        """Days of a feature table's rows read before the first event day.

        Raises:
            WindowError: No look-back is declared for the table.
        """
        if table not in self.feature_lookback_days:
            raise WindowError(
                f"no feature look-back declared for {table!r} (declared: "
                f"{', '.join(sorted(self.feature_lookback_days)) or 'none'})"
            )
        return self.feature_lookback_days[table]

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for lineage and metadata."""
        return {
            "days": self.days,
            "label_maturity_days": self.label_maturity_days,
            "feature_lookback_days": dict(sorted(self.feature_lookback_days.items())),
        }


@dataclass(frozen=True)
class Window:
    """One training set's window.

    Attributes:
        start: First event day.
        end: Last event day.
        cutoff: Labels reported up to this instant count.
        mature_until: Events after this instant are left out (labels not mature yet).
    """

    start: datetime.date
    end: datetime.date
    cutoff: datetime.datetime
    mature_until: datetime.datetime

    def to_dict(self) -> dict[str, str]:
        """Plain data, for lineage and metadata."""
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "label_cutoff": self.cutoff.isoformat(),
            "mature_until": self.mature_until.isoformat(),
        }


def label_horizon(
    latest_label_day: datetime.date | None, now: datetime.datetime
) -> datetime.datetime:
    """What is known about labels: the end of the latest landing day of chargebacks, or now.

    Args:
        latest_label_day: The latest landing day of chargebacks (None when none landed).
        now: The current instant (with a time zone).
    """
    if now.tzinfo is None:
        raise WindowError(f"now {now!r} needs a time zone")
    if latest_label_day is None:
        return now
    end = datetime.datetime.combine(
        latest_label_day + datetime.timedelta(days=1), datetime.time(), datetime.UTC
    )
    return min(now, end)


def parse_cutoff(text: str) -> datetime.datetime:
    """A label cutoff given as ISO 8601 text; it must carry a time zone.

    Raises:
        WindowError: The text is no ISO 8601 instant, or has no time zone.
    """
    try:
        cutoff = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise WindowError(
            f"label_cutoff {text!r} is not an ISO 8601 instant, e.g. 2026-01-13T00:00:00+00:00"
        ) from None
    if cutoff.tzinfo is None:
        raise WindowError(f"label_cutoff {text!r} needs a time zone, e.g. +00:00")
    return cutoff


def resolve_window(
    windows: TrainingWindows,
    *,
    cutoff: datetime.datetime,
    latest_event_day: datetime.date | None,
    end_date: datetime.date | None = None,
) -> Window:
    """The window of a training set built at a label cutoff.

    Args:
        windows: The model's windows (with a run's overrides).
        cutoff: Labels reported up to this instant count.
        latest_event_day: The latest event day the transactions hold.
        end_date: The last event day asked for; by default the latest day with mature labels
            (or the latest event day, if earlier).

    Raises:
        WindowError: The cutoff has no time zone, there are no events, or `end_date` is
            after the last day whose labels are mature at the cutoff.
    """
    if cutoff.tzinfo is None:
        raise WindowError(f"label cutoff {cutoff.isoformat()} needs a time zone")
    mature_until = cutoff - datetime.timedelta(days=windows.label_maturity_days)
    if end_date is None:
        if latest_event_day is None:
            raise WindowError("the transactions hold no events: nothing to train on")
        end = min(latest_event_day, mature_until.date())
    else:
        end = end_date
    if end > mature_until.date():
        raise WindowError(
            f"end_date {end} is after {mature_until.date()}, the last day whose labels are "
            f"{windows.label_maturity_days} days mature at the cutoff {cutoff.isoformat()}"
        )
    start = end - datetime.timedelta(days=windows.days - 1)
    return Window(start=start, end=end, cutoff=cutoff, mature_until=mature_until)


def labelled_events(
    transactions: pl.LazyFrame,
    labels: pl.LazyFrame,
    window: Window,
    request_fields: tuple[str, ...],
) -> pl.DataFrame:
    """The window's events with `is_fraud`, ordered by event time and id.

    An event is fraud when its label at the cutoff is fraud: its latest report by the cutoff
    says fraud (a fraud later reversed by the cutoff is not). Events of the window's days
    after `mature_until` are left out.

    Args:
        transactions: Silver transactions (`event_date`, `event_time` and the request fields).
        labels: Silver label reports (`transaction_id`, `is_fraud`, `reported_at`).
        window: The training set's window.
        request_fields: The model's request fields, kept as columns.
    """
    fraud = (
        labels_as_of(nw.from_native(labels), window.cutoff)
        .to_native()
        .filter(pl.col("is_fraud"))
        .select("transaction_id", "is_fraud")
    )
    return (
        transactions.filter(
            pl.col("event_date").is_between(window.start, window.end),
            pl.col("event_time") <= window.mature_until,
        )
        .select(*request_fields, "event_date")
        .join(fraud, on="transaction_id", how="left")
        .with_columns(pl.col("is_fraud").fill_null(False))
        .sort("event_time", "transaction_id")
        .collect()
    )


def feature_rows(
    scan: Callable[[str], pl.LazyFrame],
    spec: FeatureSpec,
    windows: TrainingWindows,
    start: datetime.date,
    end: datetime.date,
) -> dict[str, pl.DataFrame]:
    """The feature rows a point-in-time join of a spec's events from `start` to `end` can use.

    Each table the spec looks up is read from its declared look-back before `start` to `end`,
    by its daily partition column.

    Args:
        scan: Scans a table by name (`features/<table>`).
        spec: The model's feature spec.
        windows: The model's windows (their feature look-backs).
        start: First event day.
        end: Last event day.
    """
    rows = {}
    for lookup in spec.lookups:
        table = lookup.definition
        first = start - datetime.timedelta(days=windows.lookback(table.name))
        rows[table.name] = (
            scan(f"features/{table.name}")
            .filter(pl.col(table.partition_column).is_between(first, end))
            .collect()
        )
    return rows
