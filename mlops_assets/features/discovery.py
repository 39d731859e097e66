"""Feature discovery: what feature tables exist, what they hold, how fresh they are, where from."""

from __future__ import annotations

import datetime
from typing import Any

import polars as pl
from deltalake import DeltaTable

from mlops_assets.features.registry import FEATURE_TABLES, feature_table
from mlops_assets.lakehouse.catalog import Catalog
from mlops_assets.lakehouse.delta_io import read_lineage, table_exists, table_row_count


def describe(catalog: Catalog, name: str) -> dict[str, Any]:
    """A feature table's definition with its current state in the active environment.

    Returns:
        The definition (keys, timestamp key, features with descriptions and defaults,
        sources) plus `built` and, when built, `rows`, `version`, `latest_feature_time`,
        `last_write` and `lineage` (source versions and code version of the latest write).
    """
    table = feature_table(name)
    info = table.to_dict()
    uri = catalog.uri_for_read(table.ref)
    info["uri"] = uri
    info["built"] = table_exists(uri)
    if info["built"]:
        delta = DeltaTable(uri)
        info["rows"] = table_row_count(delta)
        info["version"] = delta.version()
        latest = pl.scan_delta(uri).select(pl.col(table.timestamp_key).max()).collect().item()
        info["latest_feature_time"] = latest.isoformat() if latest else None
        stamp = delta.history(1)[0].get("timestamp")
        info["last_write"] = (
            datetime.datetime.fromtimestamp(stamp / 1000, datetime.UTC).isoformat()
            if stamp
            else None
        )
        info["lineage"] = read_lineage(uri)
    return info


def list_tables(catalog: Catalog) -> list[dict[str, Any]]:
    """One summary per feature table: keys, feature count, rows and freshness."""
    rows = []
    for name in FEATURE_TABLES:
        info = describe(catalog, name)
        rows.append(
            {
                "name": name,
                "entity_keys": info["entity_keys"],
                "timestamp_key": info["timestamp_key"],
                "features": len(info["features"]),
                "rows": info.get("rows"),
                "latest_feature_time": info.get("latest_feature_time"),
            }
        )
    return rows
