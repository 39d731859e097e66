"""Partitions of the event tables: one per calendar day (UTC)."""

from __future__ import annotations

import datetime

import dagster as dg

from mlops_assets.settings import load_settings


def daily_partitions() -> dg.DailyPartitionsDefinition:
    """Daily partitions from the configured start date, up to today (UTC)."""
    # end_offset=1 exposes today's partition, so today's landing files can be ingested today.
    return dg.DailyPartitionsDefinition(
        start_date=load_settings().start_date.isoformat(), end_offset=1, timezone="UTC"
    )


DAILY = daily_partitions()


def partition_day(context: dg.AssetExecutionContext) -> datetime.date:
    """The run's partition as a date."""
    return datetime.date.fromisoformat(context.partition_key)
