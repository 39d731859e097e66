"""A summary of the environment's lake: every Delta table with version and row count."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deltalake import DeltaTable

from mlops_assets.lakehouse.catalog import LAYERS
from mlops_assets.lakehouse.delta_io import table_exists, table_row_count
from mlops_assets.settings import Settings


@dataclass(frozen=True)
class TableSummary:
    """One table's identity, location, version and size."""

    name: str
    uri: str
    version: int
    rows: int


def lake_summary(settings: Settings) -> list[TableSummary]:
    """Every Delta table under the active environment's lake, layer by layer."""
    rows: list[TableSummary] = []
    for layer in LAYERS:
        folder = settings.lake_root / layer
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if table_exists(path):
                delta = DeltaTable(str(path))
                rows.append(
                    TableSummary(
                        f"{layer}/{path.name}", str(path), delta.version(), table_row_count(delta)
                    )
                )
    return rows


def print_summary(tables: Sequence[TableSummary], manifests: Sequence[Any] = ()) -> None:
    """Print the tables, and the simulator's dirty-data ground truth beside the quarantine."""
    print("[demo] Delta tables (readable by any Delta reader):")
    for table in tables:
        print(f"  {table.name:36s} v{table.version:<4d} {table.rows:>10,d} rows  {table.uri}")
    if manifests:
        injected = sum(m.malformed + m.wrong_type + m.missing_field for m in manifests)
        quarantined = sum(
            t.rows
            for t in tables
            if t.name in ("quarantine/bronze_transactions", "quarantine/silver_transactions")
        )
        print(
            f"[demo] the simulator injected {injected:,} bad transaction lines; "
            f"{quarantined:,} are in quarantine with a reason"
        )
