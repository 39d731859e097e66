"""A summary of the environment's lake: every Delta table with version and row count."""

from __future__ import annotations

import urllib.parse
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
    """Every Delta table under the active environment's lake, layer by layer.

    The lake is the local data root, or the object store the settings name (its layers'
    folders are listed there).
    """
    options = settings.storage_options or None
    rows: list[TableSummary] = []
    for layer in LAYERS:
        for uri in _folders(settings, layer):
            if table_exists(uri, storage_options=options):
                delta = DeltaTable(uri, storage_options=options)
                name = f"{layer}/{uri.rstrip('/').rsplit('/', 1)[-1]}"
                rows.append(TableSummary(name, uri, delta.version(), table_row_count(delta)))
    return rows


def _folders(settings: Settings, layer: str) -> list[str]:
    """The folders of a layer: local paths, or `s3://` URIs on the object store."""
    store = settings.object_store
    if not store.enabled:
        folder = settings.lake_root / layer
        return [str(p) for p in sorted(folder.iterdir())] if folder.is_dir() else []
    from pyarrow.fs import FileSelector, FileType, S3FileSystem

    endpoint = urllib.parse.urlsplit(store.endpoint) if store.endpoint else None
    filesystem = S3FileSystem(
        access_key=store.access_key_id or None,
        secret_key=store.secret_access_key or None,
        region=store.region,
        scheme=endpoint.scheme if endpoint else "https",
        endpoint_override=endpoint.netloc if endpoint else None,
    )
    base = settings.lake_uri.removeprefix("s3://") + f"/{layer}"
    infos = filesystem.get_file_info(FileSelector(base, allow_not_found=True))
    return sorted(f"s3://{i.path}" for i in infos if i.type == FileType.Directory)


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
