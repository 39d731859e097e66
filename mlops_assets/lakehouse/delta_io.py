"""Delta table I/O on delta-rs: partition replacement by explicit predicate, schema policy."""

from __future__ import annotations

import datetime
import fcntl
import json
import math
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, create_table_with_add_actions

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

PartitionValue = str | int | datetime.date
# Keys of the custom metadata our commits carry.
LINEAGE_KEY = "mlops.lineage"
WRITE_ID_KEY = "mlops.write_id"
COMMIT_ATTEMPTS = 8


class SchemaPolicy(StrEnum):
    """How a write may change a table's schema.

    `strict`: the incoming columns and types must equal the table's (contracts: silver, gold).
    `additive`: new columns are added as nullable, columns the incoming data lacks are written
    as nulls; a changed type is still an error (raw layers: sources grow columns over time).
    """

    STRICT = "strict"
    ADDITIVE = "additive"


class SchemaChangeError(ValueError):
    """A write would change a table's schema in a way its policy does not allow."""


class PartitionMismatchError(ValueError):
    """Rows handed to a partition write do not belong to that partition."""


@dataclass(frozen=True)
class WriteResult:
    """What a write did, for asset metadata.

    Attributes:
        uri: Table location.
        version: Delta version after the write.
        rows_written: Rows in the written data.
        table_rows: Rows in the whole table after the write.
        schema: Column name to Arrow type string, in table order.
        partition: The partition replaced, empty for unpartitioned writes.
        added_columns: Columns the write added to the table.
    """

    uri: str
    version: int
    rows_written: int
    table_rows: int
    schema: dict[str, str]
    partition: dict[str, str] = field(default_factory=dict)
    added_columns: tuple[str, ...] = ()


def table_exists(uri: str | Path) -> bool:
    """Tell whether a Delta table exists at `uri`."""
    return DeltaTable.is_deltatable(str(uri))


def table_version(uri: str | Path) -> int | None:
    """Current Delta version of the table at `uri`, or None when there is no table."""
    try:
        return DeltaTable(str(uri)).version()
    except TableNotFoundError:
        return None


def scan_table(uri: str | Path, version: int | None = None) -> pl.LazyFrame:
    """Lazily scan a Delta table (optionally at a version) with polars.

    Raises:
        FileNotFoundError: No Delta table exists at `uri`.
    """
    if not table_exists(uri):
        raise FileNotFoundError(f"no Delta table at {uri}")
    return pl.scan_delta(str(uri), version=version)


def read_partition(
    uri: str | Path, partition: Mapping[str, PartitionValue], columns: Sequence[str] | None = None
) -> pl.DataFrame:
    """Read one partition of a table; an absent table or partition reads as an empty frame."""
    if not table_exists(uri):
        return pl.DataFrame()
    frame = scan_table(uri)
    for name, value in partition.items():
        frame = frame.filter(pl.col(name) == pl.lit(value))
    if columns is not None:
        frame = frame.select(columns)
    return frame.collect()


def _sql_literal(value: PartitionValue) -> str:
    if isinstance(value, bool):
        raise ValueError("boolean partition values are not supported")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime.date):
        return f"'{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


def _arrow_schema(table: DeltaTable) -> pa.Schema:
    return pa.schema(table.schema().to_arrow())


def _normalise(data: pl.DataFrame, table: str) -> pa.Table:
    """Bring a frame to the types the lake stores: microsecond UTC timestamps, plain strings.

    Raises:
        SchemaChangeError: A timestamp column has no time zone (the lake stores UTC instants).
    """
    naive = [n for n, t in data.schema.items() if isinstance(t, pl.Datetime) and not t.time_zone]
    if naive:
        raise SchemaChangeError(
            f"table {table}: timestamp columns {', '.join(naive)} have no time zone; give them "
            "one (the lake stores UTC instants)"
        )
    data = data.with_columns(
        pl.col(n).dt.convert_time_zone("UTC").dt.cast_time_unit("us")
        for n, t in data.schema.items()
        if isinstance(t, pl.Datetime) and (t.time_unit != "us" or t.time_zone != "UTC")
    )
    # Polars hands out large string/binary views; Delta stores plain strings.
    return data.to_arrow(compat_level=pl.CompatLevel.oldest())


def _comparable(data_type: pa.DataType) -> str:
    if pa.types.is_large_string(data_type) or pa.types.is_string_view(data_type):
        return "string"
    if pa.types.is_large_binary(data_type) or pa.types.is_binary_view(data_type):
        return "binary"
    if pa.types.is_timestamp(data_type):
        return f"timestamp[{data_type.unit}, tz={data_type.tz is not None}]"
    if pa.types.is_large_list(data_type):
        return f"list<{_comparable(data_type.value_type)}>"
    return str(data_type).replace("large_string", "string")


def check_schema(
    existing: pa.Schema, incoming: pa.Schema, policy: SchemaPolicy, table: str
) -> tuple[list[str], list[str]]:
    """Compare an incoming schema with a table's under a policy.

    Args:
        existing: The table's schema.
        incoming: The schema of the data to write.
        policy: The table's schema policy.
        table: Table name, for the error message.

    Returns:
        The columns the write adds and the table columns the incoming data lacks.

    Raises:
        SchemaChangeError: The change is not allowed; the message names each column and change.
    """
    have = {f.name: f.type for f in existing}
    new = {f.name: f.type for f in incoming}
    added = [name for name in new if name not in have]
    missing = [name for name in have if name not in new]
    changed = [
        f"{name}: {_comparable(have[name])} -> {_comparable(new[name])}"
        for name in new
        if name in have
        and _comparable(have[name]) != _comparable(new[name])
        and not pa.types.is_null(new[name])
    ]
    problems = []
    if changed:
        problems.append("changed types " + ", ".join(changed))
    if policy is SchemaPolicy.STRICT:
        if added:
            problems.append("added columns " + ", ".join(added))
        if missing:
            problems.append("missing columns " + ", ".join(missing))
    if problems:
        raise SchemaChangeError(
            f"table {table}: schema policy '{policy.value}' refuses this write: "
            + "; ".join(problems)
            + " (change the table's contract, or migrate the table, to accept it)"
        )
    return added, missing


def _conform(data: pa.Table, existing: pa.Schema, missing: Sequence[str]) -> pa.Table:
    # Columns the incoming data lacks are written as typed nulls; the order follows the table
    # so that Delta's schema stays stable, new columns go last.
    for name in missing:
        data = data.append_column(
            existing.field(name).with_nullable(True),
            pa.nulls(data.num_rows, existing.field(name).type),
        )
    order = [f.name for f in existing] + [n for n in data.column_names if n not in existing.names]
    data = data.select(order)
    # Null-typed columns (all values missing) take the table's type.
    for index, name in enumerate(data.column_names):
        if name in existing.names and pa.types.is_null(data.schema.field(name).type):
            data = data.set_column(
                index, existing.field(name), pa.nulls(data.num_rows, existing.field(name).type)
            )
    return data


def write_partition(
    uri: str | Path,
    data: pl.DataFrame,
    partition: Mapping[str, PartitionValue],
    *,
    partition_by: Sequence[str] | None = None,
    policy: SchemaPolicy = SchemaPolicy.STRICT,
    table: str | None = None,
) -> WriteResult:
    """Replace exactly one partition of a Delta table with `data`, atomically.

    The write is one Delta commit that removes the partition's files (selected by an explicit
    partition filter built from `partition`) and adds the new one; other partitions are
    untouched. If the write fails before its commit, the table stays at its previous version.

    Args:
        uri: Table location.
        data: The partition's complete new content; every row must carry the partition values.
        partition: Partition column to value, e.g. `{"landing_date": date(2026, 1, 1)}`.
        partition_by: The table's partition columns (default: the keys of `partition`).
        policy: Schema policy for the table.
        table: Table name for error messages (default: the uri).

    Returns:
        What was written, with the new version and schema.

    Raises:
        PartitionMismatchError: Some rows do not belong to `partition`.
        SchemaChangeError: The data's schema breaks the policy.
    """
    uri = str(uri)
    name = table or uri
    partition_by = list(partition_by or partition.keys())
    _check_partition(data, partition, name)
    arrow = _normalise(data, name)
    write_id = str(uuid.uuid4())
    added: list[str] = []
    delta = _open_or_create(uri, arrow, partition, partition_by, write_id)
    if delta is not None:
        existing_schema = _arrow_schema(delta)
        if list(delta.metadata().partition_columns) != partition_by:
            raise SchemaChangeError(
                f"table {name}: partitioned by {list(delta.metadata().partition_columns)}, "
                f"not {partition_by}"
            )
        added, missing = check_schema(existing_schema, arrow.schema, policy, name)
        arrow = _conform(arrow, existing_schema, missing)
        commit_files(uri, arrow, partition, partition_by, delta, {WRITE_ID_KEY: write_id})
    return describe_write(
        uri, write_id, rows_written=arrow.num_rows, partition=partition, added=added
    )


def _open_or_create(
    uri: str,
    arrow: pa.Table,
    partition: Mapping[str, PartitionValue],
    partition_by: Sequence[str],
    write_id: str,
    metadata: Mapping[str, str] | None = None,
) -> DeltaTable | None:
    """Open the table, or create it holding `arrow` (then return None: the write is done).

    Creation happens under a lock file in the table's folder, so that concurrent first writers
    (a backfill on a fresh environment) create the table once and the others write into it.
    """
    if table_exists(uri):
        return DeltaTable(uri)
    # Delta readers and vacuum ignore files whose names start with an underscore.
    lock_path = Path(uri) / "_mlops_create.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if table_exists(uri):
                return DeltaTable(uri)
            commit_files(
                uri,
                arrow,
                partition,
                partition_by,
                None,
                {WRITE_ID_KEY: write_id, **(metadata or {})},
            )
            return None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def overwrite_table(
    uri: str | Path,
    data: pl.DataFrame,
    *,
    table: str | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> WriteResult:
    """Replace a whole unpartitioned table in one commit (strict schema policy).

    Raises:
        SchemaChangeError: The data's schema differs from the table's.
    """
    uri = str(uri)
    name = table or uri
    arrow = _normalise(data, name)
    write_id = str(uuid.uuid4())
    metadata = {WRITE_ID_KEY: write_id}
    if lineage is not None:
        metadata[LINEAGE_KEY] = json.dumps(lineage, default=str)
    delta = _open_or_create(uri, arrow, {}, [], write_id, metadata)
    if delta is not None:
        check_schema(_arrow_schema(delta), arrow.schema, SchemaPolicy.STRICT, name)
        commit_files(uri, arrow, {}, [], delta, metadata)
    return describe_write(uri, write_id, rows_written=arrow.num_rows, partition={})


def _check_partition(
    data: pl.DataFrame, partition: Mapping[str, PartitionValue], name: str
) -> None:
    for column in partition:
        if column not in data.columns:
            raise PartitionMismatchError(f"table {name}: data lacks partition column {column!r}")
        outside = data.filter(pl.col(column).ne_missing(pl.lit(partition[column]))).height
        if outside:
            raise PartitionMismatchError(
                f"table {name}: {outside} rows have {column} != {partition[column]!s}; a partition "
                "write carries only that partition's rows"
            )


def _partition_text(value: PartitionValue) -> str:
    return value.isoformat() if isinstance(value, datetime.date) else str(value)


# Delta statistics keep strings up to this length; longer ones get no min/max, because a
# truncated maximum would be smaller than the real one and let readers skip matching files.
_MAX_STAT_STRING = 32


def file_statistics(frame: pl.DataFrame) -> dict[str, Any]:
    """Delta file statistics (`numRecords`, `minValues`, `maxValues`, `nullCount`) of a frame.

    Min/max are given for numbers, dates, UTC timestamps (to the millisecond, widened so the
    range still holds every value) and short strings; other columns get null counts only.
    """
    stats: dict[str, Any] = {
        "numRecords": frame.height,
        "minValues": {},
        "maxValues": {},
        "nullCount": {},
    }
    if frame.width == 0:
        return stats
    summary = frame.select(
        pl.all().null_count().name.suffix("\x00n"),
        *[
            expr
            for name, dtype in frame.schema.items()
            if _has_bounds(dtype)
            for expr in (
                pl.col(name).min().alias(f"{name}\x00min"),
                pl.col(name).max().alias(f"{name}\x00max"),
            )
        ],
        *[
            pl.col(name).str.len_bytes().max().alias(f"{name}\x00len")
            for name, dtype in frame.schema.items()
            if dtype == pl.String
        ],
    ).row(0, named=True)
    for name, dtype in frame.schema.items():
        stats["nullCount"][name] = int(summary[f"{name}\x00n"])
        if not _has_bounds(dtype):
            continue
        low, high = summary[f"{name}\x00min"], summary[f"{name}\x00max"]
        if low is None or high is None:
            continue
        if dtype == pl.String and (summary[f"{name}\x00len"] or 0) > _MAX_STAT_STRING:
            continue
        if isinstance(low, float) and not (math.isfinite(low) and math.isfinite(high)):
            continue
        if isinstance(low, datetime.datetime):
            low = low.replace(microsecond=low.microsecond // 1000 * 1000)
            if high.microsecond % 1000:
                high = high.replace(microsecond=high.microsecond // 1000 * 1000)
                high += datetime.timedelta(milliseconds=1)
            low = low.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            high = high.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        elif isinstance(low, datetime.date):
            low, high = low.isoformat(), high.isoformat()
        stats["minValues"][name] = low
        stats["maxValues"][name] = high
    return stats


def _has_bounds(dtype: pl.DataType) -> bool:
    if isinstance(dtype, pl.Datetime):
        return dtype.time_zone is not None
    if isinstance(dtype, pl.Decimal):
        return False  # Delta wants decimal statistics as exact values, JSON floats are not
    return dtype.is_numeric() or dtype in (pl.Date, pl.String)


def commit_files(
    uri: str,
    data: pa.Table,
    partition: Mapping[str, PartitionValue],
    partition_by: Sequence[str],
    delta: DeltaTable | None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write `data` as a Parquet file in the table folder, then commit it in one transaction.

    With a partition, the commit replaces exactly that partition's files (a partition filter);
    without, it replaces the whole table. Until the commit, readers see the previous version;
    a crash before it leaves only an unreferenced file, which `vacuum` removes.

    polars writes the Parquet file (several times faster here than delta-rs' own writer) and
    the file's statistics are computed alongside, so readers keep file skipping.
    """
    frame = pl.from_arrow(data)
    assert isinstance(frame, pl.DataFrame)
    content = frame.drop(list(partition_by))
    folder = "/".join(
        f"{column}={quote(_partition_text(partition[column]), safe='')}" for column in partition_by
    )
    actions: list[AddAction] = []
    if frame.height:
        relative = (folder + "/" if folder else "") + f"part-00000-{uuid.uuid4()}-c000.parquet"
        path = Path(uri) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        content.write_parquet(path, compression="lz4", statistics=True)
        actions.append(
            AddAction(
                path=relative,
                size=path.stat().st_size,
                partition_values={c: _partition_text(partition[c]) for c in partition_by},
                modification_time=int(time.time() * 1000),
                data_change=True,
                stats=json.dumps(file_statistics(content)),
            )
        )
    schema = DeltaSchema.from_arrow(data.schema)
    if delta is None:
        # The creating commit keeps no custom metadata: create the table empty, then add the
        # files in a commit of their own that carries it.
        Path(uri).mkdir(parents=True, exist_ok=True)
        create_table_with_add_actions(
            uri, schema, [], mode="error", partition_by=list(partition_by) or None
        )
        delta = DeltaTable(uri)
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            delta.create_write_transaction(
                actions,
                mode="overwrite",
                schema=schema,
                partition_by=list(partition_by) or None,
                partition_filters=[(c, "=", _partition_text(partition[c])) for c in partition_by]
                or None,
                commit_properties=CommitProperties(custom_metadata=dict(metadata))
                if metadata
                else None,
            )
            return
        except CommitFailedError:
            # Another writer committed first (to another partition, or the table's creation):
            # the files are written, so commit them again on top of the new version. delta-rs
            # can report a conflict after its commit landed: then there is nothing to redo.
            write_id = (metadata or {}).get(WRITE_ID_KEY)
            if write_id and _version_of(uri, write_id) is not None:
                return
            if attempt == COMMIT_ATTEMPTS - 1:
                raise
            time.sleep(0.02 * (attempt + 1))
            delta = DeltaTable(uri)


class DuplicateKeyError(ValueError):
    """Rows handed to a merge repeat a key."""


def merge_partition(
    uri: str | Path,
    data: pl.DataFrame,
    partition: Mapping[str, PartitionValue],
    *,
    keys: Sequence[str],
    table: str | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> WriteResult:
    """Merge one partition's rows into a keyed table: update, insert, delete what is gone.

    A Delta MERGE on `keys`, limited to the partition: matching rows are updated, new rows
    inserted, and rows of that partition the new data no longer holds are deleted, in one
    commit. Other partitions are not read or touched. The schema policy is strict.

    Args:
        uri: Table location.
        data: The partition's rows; keys must be unique.
        partition: Partition column to value; every row must carry it.
        keys: Columns identifying a row within the partition.
        table: Table name for error messages.
        lineage: Stored in the commit's metadata (see `read_lineage`).

    Returns:
        What was written; `rows_written` is the number of rows merged.

    Raises:
        DuplicateKeyError: Two rows share a key.
        PartitionMismatchError: Some rows do not belong to the partition.
        SchemaChangeError: The data's schema differs from the table's.
    """
    uri = str(uri)
    name = table or uri
    _check_partition(data, partition, name)
    repeated = data.height - data.select(keys).unique().height
    if repeated:
        raise DuplicateKeyError(f"table {name}: {repeated} rows repeat a key of {list(keys)}")
    write_id = str(uuid.uuid4())
    metadata = {WRITE_ID_KEY: write_id}
    if lineage is not None:
        metadata[LINEAGE_KEY] = json.dumps(lineage, default=str)
    arrow = _normalise(data, name)
    delta = _open_or_create(uri, arrow, partition, list(partition), write_id, metadata)
    if delta is None:
        return describe_write(uri, write_id, rows_written=arrow.num_rows, partition=partition)
    check_schema(_arrow_schema(delta), arrow.schema, SchemaPolicy.STRICT, name)
    in_partition = " AND ".join(f"t.{c} = {_sql_literal(v)}" for c, v in partition.items())
    on_keys = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    (
        delta.merge(
            source=arrow,
            predicate=f"{in_partition} AND {on_keys}",
            source_alias="s",
            target_alias="t",
            commit_properties=CommitProperties(custom_metadata=metadata),
        )
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .when_not_matched_by_source_delete(predicate=in_partition)
        .execute()
    )
    return describe_write(uri, write_id, rows_written=arrow.num_rows, partition=partition)


def read_lineage(uri: str | Path, day: str | None = None) -> dict[str, Any] | None:
    """Lineage stored with a write: the latest one, or the latest one of a day's partition.

    Args:
        uri: Table location.
        day: ISO date of the partition whose latest write is wanted (lineage `day` field).

    Returns:
        The lineage, or None when no write of the table (or of that day) carries one.
    """
    for entry in DeltaTable(str(uri)).history():
        entry = {**entry, **_user_metadata(entry)}
        if LINEAGE_KEY not in entry:
            if day is None:
                return None
            continue
        lineage = json.loads(entry[LINEAGE_KEY])
        if day is None or lineage.get("day") == day:
            return lineage
    return None


def _user_metadata(entry: Mapping[str, Any]) -> dict[str, Any]:
    # Spark writers (spark_io) keep the commit's metadata as a JSON object in `userMetadata`.
    try:
        payload = json.loads(entry.get("userMetadata") or "{}")
    except json.JSONDecodeError:
        return {}
    return payload if isinstance(payload, dict) else {}


def describe_write(
    uri: str,
    write_id: str,
    *,
    rows_written: int,
    partition: Mapping[str, PartitionValue],
    added: Sequence[str] = (),
) -> WriteResult:
    """Version, size and schema of the table as this write left it.

    The write's own commit is found by its id, so a concurrent writer's later commit does not
    get reported as this one's.
    """
    version = _version_of(uri, write_id)
    delta = DeltaTable(uri, version=version)
    schema = _arrow_schema(delta)
    return WriteResult(
        uri=uri,
        version=delta.version(),
        rows_written=rows_written,
        table_rows=table_row_count(delta),
        schema={f.name: _comparable(f.type) for f in schema},
        partition={k: str(v) for k, v in partition.items()},
        added_columns=tuple(added),
    )


def _version_of(uri: str, write_id: str, newest: int = 50) -> int | None:
    """Version of the commit carrying `write_id`, from the newest commit files of the log.

    The log's files are read directly: under concurrent commits, the version numbers of
    delta-rs' `history()` can be off by the commits landing meanwhile.
    """
    log = Path(uri) / "_delta_log"
    commits = sorted(log.glob("[0-9]*.json"), reverse=True)[:newest]
    needle = write_id.encode()
    for commit in commits:
        if needle in commit.read_bytes():
            return int(commit.stem)
    return None


def table_row_count(delta: DeltaTable) -> int:
    """Row count of the table's version, from the Delta log's file statistics."""
    # polars reads the log's Arrow table directly (pyarrow would import pandas to convert it).
    actions = pl.DataFrame(delta.get_add_actions(flatten=True))
    if actions.is_empty():
        return 0
    if "num_records" in actions.columns and actions["num_records"].null_count() == 0:
        return int(actions["num_records"].sum())
    return pl.scan_delta(delta, version=delta.version()).select(pl.len()).collect().item()


def append_table(
    uri: str | Path,
    data: pl.DataFrame,
    *,
    partition_by: Sequence[str] = (),
    table: str | None = None,
    policy: SchemaPolicy = SchemaPolicy.ADDITIVE,
    metadata: Mapping[str, str] | None = None,
    count_rows: bool = True,
) -> WriteResult:
    """Append rows to a table in one commit: new files only, no existing row is rewritten.

    The rows may span several partitions: one Parquet file per partition, all added by the
    same Delta append commit (readers see all of them or none). The table is created on the
    first append. Under the `additive` policy new columns are added to the table and columns
    the rows lack are written as nulls; a changed type is refused. Concurrent appends do not
    conflict: a commit that loses a race is committed again on top of the winner.

    Args:
        uri: Table location.
        data: The rows; they must hold the partition columns, without nulls.
        partition_by: Partition columns of the table (checked against an existing table).
        table: Table name for error messages.
        policy: Schema policy of the table.
        metadata: Custom commit metadata (the write id is added).
        count_rows: Whether to count the table's rows for the result (reads the log's file
            list); when False, `table_rows` is -1.

    Returns:
        What was written; `version` is the append's own commit.

    Raises:
        SchemaChangeError: The rows change the schema against the policy.
        PartitionMismatchError: A partition column is missing or holds nulls.
    """
    uri = str(uri)
    name = table or uri
    partition_by = list(partition_by)
    for column in partition_by:
        if column not in data.columns:
            raise PartitionMismatchError(f"table {name}: data lacks partition column {column!r}")
        nulls = data.get_column(column).null_count()
        if nulls:
            raise PartitionMismatchError(
                f"table {name}: partition column {column!r} holds {nulls} null value(s)"
            )
    arrow = _normalise(data, name)
    write_id = str(uuid.uuid4())
    commit_metadata = {**(metadata or {}), WRITE_ID_KEY: write_id}
    added: list[str] = []
    try:
        # Opening directly: `table_exists` costs as much as opening, and appends are frequent.
        delta = DeltaTable(uri)
    except TableNotFoundError:
        lock_path = Path(uri) / "_mlops_create.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not table_exists(uri):
                    create_table_with_add_actions(
                        uri,
                        DeltaSchema.from_arrow(arrow.schema),
                        [],
                        mode="error",
                        partition_by=partition_by or None,
                    )
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        delta = DeltaTable(uri)
    existing = list(delta.metadata().partition_columns)
    if existing != partition_by:
        raise SchemaChangeError(f"table {name}: partitioned by {existing}, not {partition_by}")
    existing_schema = _arrow_schema(delta)
    added, missing = check_schema(existing_schema, arrow.schema, policy, name)
    arrow = _conform(arrow, existing_schema, missing)
    if added:
        # An append commit does not change the table's schema: add the new columns first, in
        # a commit of their own (older rows read them as null).
        new_fields = DeltaSchema.from_arrow(pa.schema([arrow.schema.field(c) for c in added]))
        try:
            delta.alter.add_columns(list(new_fields.fields))
        except Exception:
            # A concurrent append may have added the same columns first.
            if not set(added) <= set(_arrow_schema(DeltaTable(uri)).names):
                raise
        delta = DeltaTable(uri)
    frame = pl.from_arrow(arrow)
    assert isinstance(frame, pl.DataFrame)
    groups = frame.partition_by(partition_by, as_dict=True) if partition_by else {(): frame}
    actions: list[AddAction] = []
    for values, rows in groups.items():
        if not rows.height:
            continue
        partition = dict(zip(partition_by, values, strict=True))
        folder = "/".join(
            f"{column}={quote(_partition_text(partition[column]), safe='')}"
            for column in partition_by
        )
        relative = (folder + "/" if folder else "") + f"part-00000-{uuid.uuid4()}-c000.parquet"
        path = Path(uri) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        content = rows.drop(partition_by)
        content.write_parquet(path, compression="lz4", statistics=True)
        actions.append(
            AddAction(
                path=relative,
                size=path.stat().st_size,
                partition_values={c: _partition_text(partition[c]) for c in partition_by},
                modification_time=int(time.time() * 1000),
                data_change=True,
                stats=json.dumps(file_statistics(content)),
            )
        )
    schema = DeltaSchema.from_arrow(arrow.schema)
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            delta.create_write_transaction(
                actions,
                mode="append",
                schema=schema,
                partition_by=partition_by or None,
                commit_properties=CommitProperties(custom_metadata=commit_metadata),
            )
            break
        except CommitFailedError:
            if _version_of(uri, write_id) is not None:
                break
            if attempt == COMMIT_ATTEMPTS - 1:
                raise
            time.sleep(0.02 * (attempt + 1))
            delta = DeltaTable(uri)
    if count_rows:
        return describe_write(uri, write_id, rows_written=arrow.num_rows, partition={}, added=added)
    version = _version_of(uri, write_id)
    return WriteResult(
        uri=uri,
        version=-1 if version is None else version,
        rows_written=arrow.num_rows,
        table_rows=-1,
        schema={f.name: _comparable(f.type) for f in arrow.schema},
        added_columns=tuple(added),
    )
