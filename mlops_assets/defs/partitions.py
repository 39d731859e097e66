"""Partitions of the event tables: one per calendar day (UTC)."""

from __future__ import annotations

import datetime
import warnings

import dagster as dg

from mlops_assets.settings import Settings


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """Daily partitions from the environment's start date, up to today (UTC)."""
    # A day's partition exists once the day has ended: the schedule then runs the day that
    # just ended, with all its landing files in.
    return dg.DailyPartitionsDefinition(start_date=settings.start_date.isoformat(), timezone="UTC")


# Landing days after an event day in which that day's late events still arrive; assets of an
# event day depend on them.
LATE_DAYS = 3


def partition_day(context: dg.AssetExecutionContext) -> datetime.date:
    """The run's partition as a date."""
    return datetime.date.fromisoformat(context.partition_key)


def days_around(start_offset: int, end_offset: int) -> dg.TimeWindowPartitionMapping:
    """Map a day to the upstream days `[day + start_offset, day + end_offset]`.

    Upstream days before the first partition (or not yet there) are allowed: the first days
    of a lake have a shorter look-back.
    """
    with warnings.catch_warnings():
        # Allowing missing upstream partitions is a beta parameter of Dagster.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.TimeWindowPartitionMapping(
            start_offset=start_offset,
            end_offset=end_offset,
            allow_nonexistent_upstream_partitions=True,
        )


def event_days_touched(
    landing_day: datetime.date, first_day: datetime.date | None = None
) -> list[datetime.date]:
    """The event days a landing day can add rows to, oldest first, from `first_day` on.

    A landing day holds its own events and late events of the `LATE_DAYS` days before it:
    those days' gold and feature rows change when it lands, and are refreshed oldest first
    (a day's merchant risk reads the merchant days before it).
    """
    days = [landing_day - datetime.timedelta(days=k) for k in range(LATE_DAYS, -1, -1)]
    return [d for d in days if first_day is None or d >= first_day]
