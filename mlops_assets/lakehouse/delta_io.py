"""Delta table I/O on delta-rs: partition replacement by explicit predicate, schema policy.

Tables live in local folders (the embedded default) or on an S3-compatible object store
(`s3://bucket/key` URIs). Every function that takes a table URI takes `storage_options`, the
object store's options as delta-rs spells them (`Settings.storage_options`: endpoint, keys,
region, conditional put); for an `s3://` URI without them, the process's settings give the
lake's (`storage_options_for`).

Commits are optimistic and need no lock: delta-rs writes version N of the log only if nobody
has (an atomic rename on the local disk, a conditional PUT, `conditional_put=etag`, on the
object store). A writer that loses the race checks the winner's commit for a conflict and
commits again on top of it (delta-rs' own retries, then `COMMIT_ATTEMPTS` of ours); the first
writers of a new table create it once, the others write into it. Every commit carries a write
id, so a write whose commit landed but was reported as failed is not committed twice.

Two writers produce the Parquet files (`Writer`): delta-rs' own (`write_deltalake` with a
replace predicate, schema merge, commit properties and post-commit hooks), and polars (files
written by polars, statistics computed here, added by one `create_write_transaction`).
`WRITERS` says which one each kind of store uses, as measured by the medallion and feature
benchmarks, which run both in one run (README, "Object storage").
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import io
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

PartitionValue = str | int | datetime.date
# Keys of the custom metadata our commits carry.
LINEAGE_KEY = "mlops.lineage"
WRITE_ID_KEY = "mlops.write_id"
# Our own attempts at a write whose commit lost races (delta-rs retries within each).
COMMIT_ATTEMPTS = 8
# URI schemes of the object store.
OBJECT_STORE_SCHEMES = ("s3", "s3a")
# A checkpoint every `delta.checkpointInterval` commits (100) keeps reading the log cheap
# (one Parquet file instead of a hundred JSON objects); expired logs are cleaned as the
# table's settings say.
POST_COMMIT = PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=None)


class Writer(StrEnum):
    """What writes the Parquet files of a write.

    `delta-rs`: `write_deltalake` (its Parquet writer, statistics, predicate replace and
    schema merge in the commit). `polars`: polars writes each file, this module computes its
    Delta statistics and commits the files' add actions.
    """

    DELTA_RS = "delta-rs"
    POLARS = "polars"


# The writer of each kind of store ("local", "object_store"), chosen by the benchmarks
# (`bench_medallion`, `bench_features` run both writers on both stores in one run).
WRITERS: dict[str, Writer] = {"local": Writer.POLARS, "object_store": Writer.DELTA_RS}


def is_object_store_uri(uri: str | Path) -> bool:
    """Whether a table location is on the object store (`s3://`, `s3a://`)."""
    return urlsplit(str(uri)).scheme in OBJECT_STORE_SCHEMES


def storage_options_for(
    uri: str | Path, storage_options: Mapping[str, str] | None = None
) -> dict[str, str] | None:
    """The object-store options to open a table with.

    Args:
        uri: Table location.
        storage_options: The caller's options; they win.

    Returns:
        The caller's options; else, for an object-store URI, the lake's from the process's
        settings (`MLOPS_S3_*`); None on the local disk (or when there are none, so that
        delta-rs falls back to the `AWS_*` variables).
    """
    if storage_options is not None:
        return dict(storage_options) or None
    if not is_object_store_uri(uri):
        return None
    from mlops_assets.settings import load_settings

    return load_settings().storage_options or None


def writer_for(uri: str | Path) -> Writer:
    """The writer a table's store uses (`WRITERS`)."""
    return WRITERS["object_store" if is_object_store_uri(uri) else "local"]


def _open(
    uri: str, options: dict[str, str] | None, version: int | None = None
) -> DeltaTable | None:
    """The table at `uri` (at `version`), None when there is none."""
    try:
        return DeltaTable(uri, version=version, storage_options=options)
    except TableNotFoundError:
        return None


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
    # The delta-rs table at the write's commit, when the writer hands it out for reuse
    # (`append_table(..., reuse=...)`): a frequent appender updates it instead of opening
    # the table again.
    table: Any = field(default=None, repr=False, compare=False)


def table_exists(uri: str | Path, *, storage_options: Mapping[str, str] | None = None) -> bool:
    """Tell whether a Delta table exists at `uri`."""
    options = storage_options_for(uri, storage_options)
    return DeltaTable.is_deltatable(str(uri), storage_options=options)


def table_version(
    uri: str | Path, *, storage_options: Mapping[str, str] | None = None
) -> int | None:
    """Current Delta version of the table at `uri`, or None when there is no table."""
    delta = _open(str(uri), storage_options_for(uri, storage_options))
    return None if delta is None else delta.version()


def scan_table(
    uri: str | Path,
    version: int | None = None,
    *,
    storage_options: Mapping[str, str] | None = None,
) -> pl.LazyFrame:
    """Lazily scan a Delta table (optionally at a version) with polars.

    Raises:
        FileNotFoundError: No Delta table exists at `uri`.
    """
    options = storage_options_for(uri, storage_options)
    if not DeltaTable.is_deltatable(str(uri), storage_options=options):
        raise FileNotFoundError(f"no Delta table at {uri}")
    return pl.scan_delta(str(uri), version=version, storage_options=options)


def read_partition(
    uri: str | Path,
    partition: Mapping[str, PartitionValue],
    columns: Sequence[str] | None = None,
    *,
    storage_options: Mapping[str, str] | None = None,
) -> pl.DataFrame:
    """Read one partition of a table; an absent table or partition reads as an empty frame."""
    options = storage_options_for(uri, storage_options)
    if not DeltaTable.is_deltatable(str(uri), storage_options=options):
        return pl.DataFrame()
    frame = pl.scan_delta(str(uri), storage_options=options)
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


def _predicate(partition: Mapping[str, PartitionValue], alias: str = "") -> str | None:
    """SQL predicate selecting exactly one partition (`landing_date = '2026-01-01'`)."""
    prefix = f"{alias}." if alias else ""
    for column in partition:
        if not _IDENTIFIER.match(column):
            raise ValueError(f"partition column {column!r} is not a plain identifier")
    terms = [f"{prefix}{c} = {_sql_literal(v)}" for c, v in partition.items()]
    return " AND ".join(terms) or None


def _arrow_schema(table: DeltaTable) -> pa.Schema:
    return pa.schema(table.schema().to_arrow())


def _normalise(data: pl.DataFrame, table: str, *, views: bool = False) -> pa.Table:
    """Bring a frame to the types the lake stores: microsecond UTC timestamps, plain strings.

    With `views`, strings stay arrow string views (no copy): for the polars writer, which
    takes the table back into polars and writes plain strings itself.

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
    if views:
        return data.to_arrow(compat_level=pl.CompatLevel.newest())
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


class _TableCreatedMeanwhile(Exception):
    """Another writer created the table between our look and our creating commit."""


def _attempts(
    uri: str,
    write_id: str,
    options: dict[str, str] | None,
    attempt: Callable[[DeltaTable | None], DeltaTable],
    reuse: DeltaTable | None = None,
) -> DeltaTable:
    """Run a write until its commit lands; return the table as its commit left it.

    `attempt` gets the table (None when there is none yet), writes and commits, and returns
    the table at its own commit. A commit that lost a race (delta-rs retried and found a
    conflict, or another writer created the table first) is attempted again on the newest
    version, unless the log shows it landed after all. `reuse`, a handle of the same table
    from an earlier write, is brought to the newest version for the first attempt instead
    of opening the table (which replays its log); a handle whose update fails is replaced
    by a newly opened one. A handle of a table removed since updates without error and its
    write then fails (delta-rs' `DeltaError`): callers that keep a handle drop it when a
    write fails (`InferenceLog.flush` does).

    Raises:
        CommitFailedError: The write lost `COMMIT_ATTEMPTS` races in a row.
    """
    for number in range(COMMIT_ATTEMPTS):
        delta = _updated(reuse) if number == 0 and reuse is not None else None
        if delta is None:
            delta = _open(uri, options)
        try:
            return attempt(delta)
        except (CommitFailedError, _TableCreatedMeanwhile):
            # delta-rs can report a conflict after its commit landed (an answer lost on the
            # way back): then there is nothing to redo.
            version = _commit_version(uri, write_id, options)
            if version is not None:
                found = _open(uri, options, version)
                assert found is not None
                return found
            if number == COMMIT_ATTEMPTS - 1:
                raise
            time.sleep(0.02 * (number + 1))
    raise AssertionError("unreachable")


def _updated(delta: DeltaTable) -> DeltaTable | None:
    """`delta` moved to its table's newest version; None when the update fails."""
    try:
        delta.update_incremental()
    except (DeltaError, OSError):
        return None
    return delta


def _commit_properties(metadata: Mapping[str, str]) -> CommitProperties:
    return CommitProperties(custom_metadata=dict(metadata))


def _create(
    uri: str,
    data: pa.Table,
    partition: Mapping[str, PartitionValue],
    partition_by: Sequence[str],
    metadata: Mapping[str, str],
    options: dict[str, str] | None,
    writer: Writer,
    *,
    append: bool = False,
) -> DeltaTable:
    """Create the table holding `data`; return it at the commit holding `data`.

    The creating commit is version 0 or nothing: delta-rs would otherwise retry a creation
    that lost the race as a later commit carrying its own schema, so it gets no retries, and
    the writer that lost goes on with the table the winner created. `partition` is the one
    partition `data` holds, empty for the whole table or, with `append`, for rows of several
    partitions.

    Raises:
        _TableCreatedMeanwhile: Another writer created the table first.
    """
    once = CommitProperties(custom_metadata=dict(metadata), max_commit_retries=0)
    try:
        if writer is Writer.DELTA_RS:
            write_deltalake(
                uri,
                data,
                partition_by=list(partition_by) or None,
                mode="error",
                storage_options=options,
                commit_properties=once,
                post_commithook_properties=POST_COMMIT,
            )
            delta = _open(uri, options, 0)
            assert delta is not None
            return delta
        # The polars writer adds its files to the empty table in a commit of their own.
        delta = DeltaTable.create(
            uri,
            DeltaSchema.from_arrow(data.schema),
            mode="error",
            partition_by=list(partition_by) or None,
            storage_options=options,
            commit_properties=CommitProperties(max_commit_retries=0),
        )
    except (CommitFailedError, DeltaError) as error:
        if not DeltaTable.is_deltatable(uri, storage_options=options):
            raise
        raise _TableCreatedMeanwhile(str(error)) from error
    mode = "append" if append else "overwrite"
    return _commit_polars(uri, delta, data, partition, partition_by, metadata, options, mode=mode)


def _commit(
    uri: str,
    delta: DeltaTable,
    data: pa.Table,
    partition: Mapping[str, PartitionValue],
    partition_by: Sequence[str],
    metadata: Mapping[str, str],
    options: dict[str, str] | None,
    *,
    mode: str,
    writer: Writer,
    merge_schema: bool = False,
) -> DeltaTable:
    """Commit `data` into an existing table and return the table at that commit.

    Mode `overwrite` replaces `partition` (the whole table when it is empty); mode `append`
    adds the rows.
    """
    if writer is Writer.DELTA_RS:
        write_deltalake(
            delta,
            data,
            mode=mode,  # type: ignore[arg-type]
            predicate=_predicate(partition) if mode == "overwrite" else None,
            schema_mode="merge" if merge_schema else None,
            commit_properties=_commit_properties(metadata),
            post_commithook_properties=POST_COMMIT,
        )
        return delta
    if mode == "append" and merge_schema:
        # An append commit does not change the table's schema: add the new columns first,
        # in a commit of their own (older rows read them as null).
        have = set(_arrow_schema(delta).names)
        new = [f for f in data.schema if f.name not in have]
        try:
            delta.alter.add_columns(list(DeltaSchema.from_arrow(pa.schema(new)).fields))
        except (CommitFailedError, DeltaError):
            # A concurrent append may have added the same columns first.
            delta.update_incremental()
            if not {f.name for f in new} <= set(_arrow_schema(delta).names):
                raise
    return _commit_polars(uri, delta, data, partition, partition_by, metadata, options, mode=mode)


def _commit_polars(
    uri: str,
    delta: DeltaTable,
    data: pa.Table,
    partition: Mapping[str, PartitionValue],
    partition_by: Sequence[str],
    metadata: Mapping[str, str],
    options: dict[str, str] | None,
    *,
    mode: str,
) -> DeltaTable:
    """Write one Parquet file per partition of `data` with polars; add them in one commit.

    With mode `overwrite`, the commit also removes the files of `partition` (an explicit
    partition filter; the whole table without one).
    """
    # The columns as they come (no copy into one chunk): the writer takes chunked columns.
    frame = pl.from_arrow(data, rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    groups: dict[tuple[Any, ...], pl.DataFrame]
    if not partition_by:
        groups = {(): frame}
    elif mode == "overwrite":
        groups = {tuple(partition[c] for c in partition_by): frame}
    else:
        groups = frame.partition_by(list(partition_by), as_dict=True)
    actions: list[AddAction] = []
    for values, rows in groups.items():
        if not rows.height:
            continue
        where = dict(zip(partition_by, values, strict=True))
        folder = "/".join(
            f"{column}={quote(_partition_text(where[column]), safe='')}" for column in partition_by
        )
        relative = (folder + "/" if folder else "") + f"part-00000-{uuid.uuid4()}-c000.parquet"
        content = rows.drop(list(partition_by))
        size = _write_parquet(uri, relative, content, options)
        actions.append(
            AddAction(
                path=relative,
                size=size,
                partition_values={c: _partition_text(where[c]) for c in partition_by},
                modification_time=int(time.time() * 1000),
                data_change=True,
                stats=json.dumps(file_statistics(content)),
            )
        )
    before = delta.version()
    delta.create_write_transaction(
        actions,
        mode=mode,
        schema=DeltaSchema.from_arrow(data.schema),
        partition_by=list(partition_by) or None,
        partition_filters=[(c, "=", _partition_text(partition[c])) for c in partition_by]
        if mode == "overwrite" and partition_by
        else None,
        commit_properties=_commit_properties(metadata),
        post_commithook_properties=POST_COMMIT,
    )
    # The handle does not move to the transaction's commit. Without a race, the commit is
    # the next version and the newest: the handle is moved there. Otherwise it is found by
    # the write id.
    delta.update_incremental()
    if delta.version() == before + 1:
        newest = delta.history(1)
        if newest and newest[0].get(WRITE_ID_KEY) == metadata[WRITE_ID_KEY]:
            return delta
    version = _commit_version(uri, metadata[WRITE_ID_KEY], options)
    committed = None if version is None else _open(uri, options, version)
    if committed is None:
        raise CommitFailedError(
            f"table {uri}: the commit of write {metadata[WRITE_ID_KEY]} is lost"
        )
    return committed


def _write_parquet(
    uri: str, relative: str, content: pl.DataFrame, options: dict[str, str] | None
) -> int:
    """Write one data file of a table with polars; return its size in bytes.

    A crash before the commit leaves only an unreferenced file, which `vacuum` removes.
    """
    if not is_object_store_uri(uri):
        path = Path(uri) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        content.write_parquet(path, compression="lz4", statistics=True)
        return path.stat().st_size
    buffer = io.BytesIO()
    content.write_parquet(buffer, compression="lz4", statistics=True)
    payload = buffer.getvalue()
    parsed = urlsplit(uri)
    key = f"{parsed.netloc}/{parsed.path.strip('/')}/{relative}"
    with _s3_filesystem(tuple(sorted((options or {}).items()))).open_output_stream(key) as out:
        out.write(payload)
    return len(payload)


@functools.cache
def _s3_filesystem(options: tuple[tuple[str, str], ...]) -> Any:
    """A pyarrow S3 filesystem for the polars writer, from delta-rs storage options."""
    from pyarrow.fs import S3FileSystem

    given = {k.lower().removeprefix("aws_"): v for k, v in options}
    endpoint = given.get("endpoint_url") or given.get("endpoint") or ""
    parsed = urlsplit(endpoint) if endpoint else None
    return S3FileSystem(
        access_key=given.get("access_key_id"),
        secret_key=given.get("secret_access_key"),
        region=given.get("region") or given.get("default_region"),
        scheme=parsed.scheme if parsed else None,
        endpoint_override=parsed.netloc if parsed else None,
        force_virtual_addressing=given.get("virtual_hosted_style_request") == "true",
    )


def write_partition(
    uri: str | Path,
    data: pl.DataFrame,
    partition: Mapping[str, PartitionValue],
    *,
    partition_by: Sequence[str] | None = None,
    policy: SchemaPolicy = SchemaPolicy.STRICT,
    table: str | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> WriteResult:
    """Replace exactly one partition of a Delta table with `data`, atomically.

    The write is one Delta commit that removes the partition's files (selected by an explicit
    partition filter built from `partition`) and adds the new ones; other partitions are
    untouched. If the write fails before its commit, the table stays at its previous version.

    Args:
        uri: Table location (a folder, or `s3://bucket/key`).
        data: The partition's complete new content; every row must carry the partition values.
        partition: Partition column to value, e.g. `{"landing_date": date(2026, 1, 1)}`.
        partition_by: The table's partition columns (default: the keys of `partition`).
        policy: Schema policy for the table.
        table: Table name for error messages (default: the uri).
        storage_options: Object-store options (default: `storage_options_for`).

    Returns:
        What was written, with the new version and schema.

    Raises:
        PartitionMismatchError: Some rows do not belong to `partition`.
        SchemaChangeError: The data's schema breaks the policy.
    """
    uri = str(uri)
    name = table or uri
    options = storage_options_for(uri, storage_options)
    partition_by = list(partition_by or partition.keys())
    _check_partition(data, partition, name)
    writer = writer_for(uri)
    arrow = _normalise(data, name, views=writer is Writer.POLARS)
    write_id = str(uuid.uuid4())
    metadata = {WRITE_ID_KEY: write_id}
    added: list[str] = []

    def attempt(delta: DeltaTable | None) -> DeltaTable:
        nonlocal added
        if delta is None:
            added = []
            return _create(uri, arrow, partition, partition_by, metadata, options, writer)
        existing_schema = _arrow_schema(delta)
        if list(delta.metadata().partition_columns) != partition_by:
            raise SchemaChangeError(
                f"table {name}: partitioned by {list(delta.metadata().partition_columns)}, "
                f"not {partition_by}"
            )
        added, missing = check_schema(existing_schema, arrow.schema, policy, name)
        rows = _conform(arrow, existing_schema, missing)
        return _commit(
            uri,
            delta,
            rows,
            partition,
            partition_by,
            metadata,
            options,
            mode="overwrite",
            writer=writer,
            merge_schema=bool(added),
        )

    written = _attempts(uri, write_id, options, attempt)
    return _describe(written, uri, rows_written=arrow.num_rows, partition=partition, added=added)


def overwrite_table(
    uri: str | Path,
    data: pl.DataFrame,
    *,
    table: str | None = None,
    lineage: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> WriteResult:
    """Replace a whole unpartitioned table in one commit (strict schema policy).

    Raises:
        SchemaChangeError: The data's schema differs from the table's.
    """
    uri = str(uri)
    name = table or uri
    options = storage_options_for(uri, storage_options)
    arrow = _normalise(data, name)
    write_id = str(uuid.uuid4())
    metadata = {WRITE_ID_KEY: write_id}
    if lineage is not None:
        metadata[LINEAGE_KEY] = json.dumps(lineage, default=str)
    writer = writer_for(uri)

    def attempt(delta: DeltaTable | None) -> DeltaTable:
        if delta is None:
            return _create(uri, arrow, {}, [], metadata, options, writer)
        check_schema(_arrow_schema(delta), arrow.schema, SchemaPolicy.STRICT, name)
        return _commit(
            uri, delta, arrow, {}, [], metadata, options, mode="overwrite", writer=writer
        )

    written = _attempts(uri, write_id, options, attempt)
    return _describe(written, uri, rows_written=arrow.num_rows, partition={})


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
    *,
    storage_options: Mapping[str, str] | None = None,
) -> None:
    """Write `data` as Parquet files of the table, then commit them in one transaction.

    With a partition, the commit replaces exactly that partition's files (a partition filter);
    without, it replaces the whole table. Without `delta` (no table yet) the table is created
    holding `data`. Until the commit, readers see the previous version; a crash before it
    leaves only unreferenced files, which `vacuum` removes. The store's writer (`WRITERS`)
    writes the files; a commit that loses a race is committed again on the newest version.

    Args:
        uri: Table location.
        data: The rows, conformed to the table's schema.
        partition: The partition replaced; empty to replace the whole table.
        partition_by: The table's partition columns.
        delta: The table, None to create it.
        metadata: Custom commit metadata (a write id is added when it has none).
        storage_options: Object-store options (default: `storage_options_for`).
    """
    options = storage_options_for(uri, storage_options)
    metadata = {WRITE_ID_KEY: str(uuid.uuid4()), **(metadata or {})}
    writer = writer_for(uri)

    def attempt(table: DeltaTable | None) -> DeltaTable:
        if table is None:
            return _create(uri, data, partition, partition_by, metadata, options, writer)
        return _commit(
            uri,
            table,
            data,
            partition,
            partition_by,
            metadata,
            options,
            mode="overwrite",
            writer=writer,
        )

    if delta is not None:
        # The caller's handle first; a lost race goes on with a fresh one.
        try:
            attempt(delta)
            return
        except CommitFailedError:
            if _commit_version(uri, metadata[WRITE_ID_KEY], options) is not None:
                return
    _attempts(uri, metadata[WRITE_ID_KEY], options, attempt)


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
    storage_options: Mapping[str, str] | None = None,
) -> WriteResult:
    """Merge one partition's rows into a keyed table: update, insert, delete what is gone.

    A Delta MERGE on `keys`, limited to the partition: matching rows are updated, new rows
    inserted, and rows of that partition the new data no longer holds are deleted, in one
    commit. Other partitions are not read or touched. The schema policy is strict. A merge
    that loses a race to a conflicting commit runs again on the newest version (a merge of
    the same rows gives the same partition).

    Args:
        uri: Table location.
        data: The partition's rows; keys must be unique.
        partition: Partition column to value; every row must carry it.
        keys: Columns identifying a row within the partition.
        table: Table name for error messages.
        lineage: Stored in the commit's metadata (see `read_lineage`).
        storage_options: Object-store options (default: `storage_options_for`).

    Returns:
        What was written; `rows_written` is the number of rows merged.

    Raises:
        DuplicateKeyError: Two rows share a key.
        PartitionMismatchError: Some rows do not belong to the partition.
        SchemaChangeError: The data's schema differs from the table's.
    """
    uri = str(uri)
    name = table or uri
    options = storage_options_for(uri, storage_options)
    _check_partition(data, partition, name)
    repeated = data.height - data.select(keys).unique().height
    if repeated:
        raise DuplicateKeyError(f"table {name}: {repeated} rows repeat a key of {list(keys)}")
    for key in keys:
        if not _IDENTIFIER.match(key):
            raise ValueError(f"table {name}: key column {key!r} is not a plain identifier")
    write_id = str(uuid.uuid4())
    metadata = {WRITE_ID_KEY: write_id}
    if lineage is not None:
        metadata[LINEAGE_KEY] = json.dumps(lineage, default=str)
    arrow = _normalise(data, name)
    in_partition = _predicate(partition, "t")
    on_keys = " AND ".join(f"t.{k} = s.{k}" for k in keys)

    def attempt(delta: DeltaTable | None) -> DeltaTable:
        if delta is None:
            return _create(
                uri, arrow, partition, list(partition), metadata, options, writer_for(uri)
            )
        check_schema(_arrow_schema(delta), arrow.schema, SchemaPolicy.STRICT, name)
        (
            delta.merge(
                source=arrow,
                predicate=f"{in_partition} AND {on_keys}" if in_partition else on_keys,
                source_alias="s",
                target_alias="t",
                commit_properties=_commit_properties(metadata),
                post_commithook_properties=POST_COMMIT,
            )
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(predicate=in_partition)
            .execute()
        )
        return delta

    written = _attempts(uri, write_id, options, attempt)
    return _describe(written, uri, rows_written=arrow.num_rows, partition=partition)


def read_lineage(
    uri: str | Path,
    day: str | None = None,
    *,
    storage_options: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """Lineage stored with a write: the latest one, or the latest one of a day's partition.

    Args:
        uri: Table location.
        day: ISO date of the partition whose latest write is wanted (lineage `day` field).
        storage_options: Object-store options (default: `storage_options_for`).

    Returns:
        The lineage, or None when no write of the table (or of that day) carries one.
    """
    delta = DeltaTable(str(uri), storage_options=storage_options_for(uri, storage_options))
    for entry in delta.history():
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
    storage_options: Mapping[str, str] | None = None,
) -> WriteResult:
    """Version, size and schema of the table as this write left it.

    The write's own commit is found by its id, so a concurrent writer's later commit does not
    get reported as this one's.

    Raises:
        LookupError: No recent commit of the table carries `write_id`.
    """
    options = storage_options_for(uri, storage_options)
    version = _commit_version(uri, write_id, options)
    delta = None if version is None else _open(uri, options, version)
    if delta is None:
        raise LookupError(f"table {uri}: no recent commit carries write {write_id}")
    return _describe(delta, uri, rows_written=rows_written, partition=partition, added=added)


def _describe(
    delta: DeltaTable,
    uri: str,
    *,
    rows_written: int,
    partition: Mapping[str, PartitionValue],
    added: Sequence[str] = (),
) -> WriteResult:
    """A write's result from the table as its commit left it."""
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


def _commit_version(
    uri: str, write_id: str, options: dict[str, str] | None, newest: int = 50
) -> int | None:
    """Version of the commit carrying `write_id` among the table's newest, None if none does.

    delta-rs' `history()` lists every commit in the log but numbers them down from its
    handle's version: the listing counts only when no commit landed between opening the
    table and listing (the table's version is the same after the listing).
    """
    for _ in range(COMMIT_ATTEMPTS):
        delta = _open(uri, options)
        if delta is None:
            return None
        seen = delta.version()
        entries = delta.history(newest)
        delta.update_incremental()
        if delta.version() != seen:
            continue
        for entry in entries:
            if entry.get(WRITE_ID_KEY) == write_id or (
                _user_metadata(entry).get(WRITE_ID_KEY) == write_id
            ):
                return int(entry["version"])
        return None
    return None


def commit_versions(
    uri: str | Path,
    key: str,
    value: str,
    *,
    newest: int | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> list[int]:
    """Versions whose commit metadata holds `key` = `value` (delta-rs' or Spark's), newest first.

    Works on every store (the log is read through delta-rs, not listed on a disk); versions
    are numbered as `_commit_version` does, from a listing no commit landed during.

    Args:
        uri: Table location.
        key: Custom metadata key (e.g. the name of a streamed file's key).
        value: The value wanted.
        newest: Search only this many newest commits (all the log keeps when None).
        storage_options: Object-store options (default: `storage_options_for`).

    Returns:
        The matching versions; empty when there is no table or no match.
    """
    uri = str(uri)
    options = storage_options_for(uri, storage_options)
    for _ in range(COMMIT_ATTEMPTS):
        delta = _open(uri, options)
        if delta is None:
            return []
        seen = delta.version()
        entries = delta.history(newest)
        delta.update_incremental()
        if delta.version() != seen:
            continue
        return [
            int(entry["version"])
            for entry in entries
            if entry.get(key) == value or _user_metadata(entry).get(key) == value
        ]
    raise CommitFailedError(f"table {uri}: commits kept landing while its log was read")


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
    storage_options: Mapping[str, str] | None = None,
    reuse: DeltaTable | None = None,
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
        storage_options: Object-store options (default: `storage_options_for`).
        reuse: The table's delta-rs handle of an earlier write (its result's `table`),
            updated instead of opening the table again.

    Returns:
        What was written; `version` is the append's own commit and `table` the table at
        that commit, for the next append's `reuse`.

    Raises:
        SchemaChangeError: The rows change the schema against the policy.
        PartitionMismatchError: A partition column is missing or holds nulls.
    """
    uri = str(uri)
    name = table or uri
    options = storage_options_for(uri, storage_options)
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
    writer = writer_for(uri)
    added: list[str] = []
    written_schema = arrow.schema

    def attempt(delta: DeltaTable | None) -> DeltaTable:
        nonlocal added, written_schema
        if delta is None:
            added = []
            return _create(
                uri, arrow, {}, partition_by, commit_metadata, options, writer, append=True
            )
        existing = list(delta.metadata().partition_columns)
        if existing != partition_by:
            raise SchemaChangeError(f"table {name}: partitioned by {existing}, not {partition_by}")
        existing_schema = _arrow_schema(delta)
        added, missing = check_schema(existing_schema, arrow.schema, policy, name)
        rows = _conform(arrow, existing_schema, missing)
        written_schema = rows.schema
        return _commit(
            uri,
            delta,
            rows,
            {},
            partition_by,
            commit_metadata,
            options,
            mode="append",
            writer=writer,
            merge_schema=bool(added),
        )

    written = _attempts(uri, write_id, options, attempt, reuse)
    if count_rows:
        result = _describe(written, uri, rows_written=arrow.num_rows, partition={}, added=added)
        return dataclasses.replace(result, table=written)
    return WriteResult(
        uri=uri,
        version=written.version(),
        rows_written=arrow.num_rows,
        table_rows=-1,
        schema={f.name: _comparable(f.type) for f in written_schema},
        added_columns=tuple(added),
        table=written,
    )
