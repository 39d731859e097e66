"""Partitions just written, handed to the next reader of the same table version in-process.

A medallion day writes a bronze partition and, in the same process when its steps run there,
reads it back at once to build silver. The frame the writer already holds is what that read
returns, so the writer keeps it here and the reader takes it instead of reading the Parquet
files again. A kept frame is handed over only for the table location, version and partition
it was written as (any later commit makes it stale) and only once; otherwise the reader reads
the table as usual.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from mlops_assets.lakehouse.delta_io import PartitionValue, WriteResult


@dataclass(frozen=True)
class _Kept:
    version: int
    partition: tuple[tuple[str, PartitionValue], ...]
    frame: pl.DataFrame


_KEPT: dict[str, _Kept] = {}
_LOCK = threading.Lock()


def _key(partition: Mapping[str, PartitionValue]) -> tuple[tuple[str, PartitionValue], ...]:
    return tuple(sorted(partition.items()))


def _as_stored(frame: pl.DataFrame, result: WriteResult) -> bool:
    """Whether the frame reads back as itself: the table's columns in its order, lake types."""
    if list(frame.columns) != list(result.schema):
        return False
    return all(
        dtype.time_unit == "us" and dtype.time_zone == "UTC"
        for dtype in frame.schema.values()
        if isinstance(dtype, pl.Datetime)
    )


def keep(result: WriteResult, frame: pl.DataFrame, partition: Mapping[str, PartitionValue]) -> bool:
    """Keep the frame a write just committed as one partition, for `take`.

    One frame is kept per table location (a newer write replaces it).

    Args:
        result: The write's result (its location, version and schema).
        frame: The partition's rows exactly as written (with the partition columns).
        partition: The partition the write replaced.

    Returns:
        Whether the frame was kept (a frame whose columns or types differ from the table's
        is not: a read would not return it as it is).
    """
    with _LOCK:
        _KEPT.pop(result.uri, None)
        if not _as_stored(frame, result):
            return False
        _KEPT[result.uri] = _Kept(result.version, _key(partition), frame)
        return True


def take(
    uri: str, version: int | None, partition: Mapping[str, PartitionValue]
) -> pl.DataFrame | None:
    """The kept partition of a table at `version`, once; None when none is kept for it.

    Args:
        uri: The table's location.
        version: The table's current version (the read's).
        partition: The partition to read.
    """
    with _LOCK:
        kept = _KEPT.get(uri)
        if kept is None or kept.version != version or kept.partition != _key(partition):
            return None
        del _KEPT[uri]
        return kept.frame


def forget() -> None:
    """Drop every kept frame."""
    with _LOCK:
        _KEPT.clear()
