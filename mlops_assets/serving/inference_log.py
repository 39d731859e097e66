"""The inference log: every prediction (online, batch, stream) as a row of one Delta table.

`serving/inference_log` is partitioned by `day` (the UTC date of `event_time`) and holds, per
prediction, who asked (`request_id`, `mode`, the keys), which model answered (`model_name`,
`model_version`, `model_alias`), what it said (`score`, `decision`, `threshold`), whether the
card was new to the online store (`new_card`: online and stream rows; null for batch rows and
for rows logged before the column existed), how it went (`latency_ms`, `status`, `error`),
the request as received, and one typed column per model input (`FeatureSpec.feature_columns`)
holding the value the model was given. Monitoring reads this one table whatever the
deployment mode.

Rows are only ever appended (a Delta append commit adds files and rewrites nothing); the
schema is additive, so a model with a new feature adds a column. `InferenceLog.record` buffers
rows in memory and a background thread writes them in micro-batches (every `flush_rows` rows
or `flush_interval_ms`, whichever comes first, one commit per flush), since a commit per
request would not keep up; `close` writes what is left. `InferenceLog.append` writes a whole
scored frame (batch, stream micro-batch) in one commit; `InferenceLog.append_chunks` writes a
large batch given as a sequence of frames (a day scored chunk by chunk) in one commit too,
each chunk's files written as it comes, so that memory holds one chunk at a time.
`compact_inference_log` rewrites a day's many small files into few large ones without
changing any row.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from mlops_assets.features.spec import ON_DEMAND_FEATURES, FeatureSpec
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import (
    SchemaChangeError,
    SchemaPolicy,
    WriteResult,
    append_table,
    check_schema,
    file_statistics,
    table_exists,
)

INFERENCE_LOG = TableRef("serving", "inference_log")
PARTITION_COLUMN = "day"
MODES = ("online", "batch", "stream")
STATUSES = ("ok", "error")
UTC_US = pl.Datetime("us", "UTC")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)

# The columns every row has, whatever the model; feature columns follow them.
BASE_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "mode": pl.String(),
    "logged_at": UTC_US,
    "event_time": UTC_US,
    "day": pl.Date(),
    "transaction_id": pl.String(),
    "card_id": pl.String(),
    "merchant_id": pl.String(),
    "model_name": pl.String(),
    "model_version": pl.String(),
    "model_alias": pl.String(),
    "score": pl.Float64(),
    "decision": pl.Boolean(),
    "threshold": pl.Float64(),
    "new_card": pl.Boolean(),
    "latency_ms": pl.Float64(),
    "status": pl.String(),
    "error": pl.String(),
    "request": pl.String(),
}
# The feature table whose key tells a new card: the online store holding no row of the card
# (the `new_card` column of online and stream rows).
NEW_CARD_TABLE = "card_behaviour"
# Columns a row must carry (the others may be null or are filled in).
REQUIRED_COLUMNS = ("request_id", "mode", "event_time", "status")

_FEATURE_TYPES: dict[str, pl.DataType] = {
    "int": pl.Int64(),
    "float": pl.Float64(),
    "bool": pl.Boolean(),
    "str": pl.String(),
}


class InferenceLogError(RuntimeError):
    """The inference log cannot take more rows (its writes keep failing)."""


def feature_schema(spec: FeatureSpec, numeric_inputs: Iterable[str] | None = None) -> dict:
    """The type of each model input column as the request's feature frame holds it.

    Request fields passed to the model are strings except `numeric_inputs` (floats; by default
    the spec's declared numeric inputs); looked-up features have their registry types;
    request-time features the type of their expression.

    Returns:
        Column name to polars type, in `spec.feature_columns` order.
    """
    numeric = set(spec.numeric_inputs if numeric_inputs is None else numeric_inputs)
    types: dict[str, pl.DataType] = {}
    for name in spec.model_inputs:
        types[name] = pl.Float64() if name in numeric else pl.String()
    for lookup in spec.lookups:
        definition = lookup.definition
        for name in lookup.features:
            types[name] = _FEATURE_TYPES[definition.feature(name).dtype]
    if spec.on_demand:
        # Evaluate the expressions on an empty frame of the types they read.
        inputs: dict[str, pl.DataType] = {"event_time": UTC_US, **types}
        for lookup in spec.lookups:
            inputs[lookup.time_column] = UTC_US
        for name in spec.request_fields:
            inputs.setdefault(name, pl.String())
        empty = pl.DataFrame(schema=inputs)
        derived = empty.select(
            ON_DEMAND_FEATURES[name].expression().alias(name) for name in spec.on_demand
        )
        types.update(derived.schema)
    return {name: types[name] for name in spec.feature_columns}


def inference_schema(spec: FeatureSpec | None = None) -> dict[str, pl.DataType]:
    """The table's columns: the base columns, then the spec's feature columns."""
    schema = dict(BASE_SCHEMA)
    if spec is not None:
        for name, dtype in feature_schema(spec).items():
            if name in schema:
                raise ValueError(f"feature column {name!r} clashes with an inference log column")
            schema[name] = dtype
    return schema


def prepare_frame(
    frame: pl.DataFrame, schema: Mapping[str, pl.DataType] | None = None
) -> pl.DataFrame:
    """Bring a frame of predictions to the table's shape.

    Fills `day` from `event_time` and `logged_at` with now when absent, adds the other base
    columns as nulls when absent, casts known columns to their types, and checks `mode` and
    `status` values.

    Args:
        frame: Predictions with at least `REQUIRED_COLUMNS`.
        schema: Column types (base and feature columns); `BASE_SCHEMA` when omitted.

    Raises:
        ValueError: A required column is missing, or `mode`/`status` holds an unknown value.
        SchemaChangeError: A column cannot be cast to its type.
    """
    schema = dict(schema or BASE_SCHEMA)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"inference log rows lack required columns {missing}")
    now = datetime.datetime.now(datetime.UTC)
    additions = []
    if "logged_at" not in frame.columns:
        additions.append(pl.lit(now, dtype=UTC_US).alias("logged_at"))
    for name, dtype in BASE_SCHEMA.items():
        if name not in frame.columns and name not in ("logged_at", "day"):
            additions.append(pl.lit(None, dtype=dtype).alias(name))
    if additions:
        frame = frame.with_columns(additions)
    casts = []
    for name in frame.columns:
        if name in schema and frame.schema[name] != schema[name]:
            casts.append(name)
    if casts:
        try:
            frame = frame.with_columns(pl.col(c).cast(schema[c], strict=True) for c in casts)
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as error:
            raise SchemaChangeError(
                f"inference log: columns {casts} cannot be cast to "
                f"{[str(schema[c]) for c in casts]}: {error}"
            ) from None
    if "day" not in frame.columns:
        frame = frame.with_columns(pl.col("event_time").dt.date().alias("day"))
    for column, allowed in (("mode", MODES), ("status", STATUSES)):
        bad = frame.filter(~pl.col(column).is_in(list(allowed)) | pl.col(column).is_null())
        if bad.height:
            raise ValueError(
                f"inference log column {column!r} holds {bad[column].unique().to_list()}; "
                f"allowed: {list(allowed)}"
            )
    if frame.get_column("event_time").null_count():
        raise ValueError("inference log column 'event_time' holds nulls")
    ordered = [c for c in schema if c in frame.columns]
    return frame.select(ordered + [c for c in frame.columns if c not in schema])


@dataclass(frozen=True)
class LogStats:
    """What the log has done so far (in this process).

    Attributes:
        recorded: Rows handed to `record`.
        written: Rows committed (by flushes and `append`).
        pending: Rows recorded and not yet committed.
        commits: Delta commits made.
        failures: Flushes that failed (their rows stay pending and are retried).
        last_error: The last flush error, None once a flush succeeds again.
        last_flush_at: When the last successful flush committed.
        last_version: Delta version of the last commit.
    """

    recorded: int
    written: int
    pending: int
    commits: int
    failures: int
    last_error: str | None
    last_flush_at: datetime.datetime | None
    last_version: int | None


class _Columns:
    """Rows of the inference log, column by column, in the order they were recorded.

    Recording a row costs a list append per column (a datetime becomes its microseconds
    since the epoch, which converts much faster and exactly); building the frame is then
    one conversion per column, without walking the rows again.
    """

    def __init__(self, schema: Mapping[str, pl.DataType]) -> None:
        self.height = 0
        self.columns: dict[str, list[Any]] = {}
        self.times: set[str] = set()
        self.add_columns(schema)

    def __len__(self) -> int:
        return self.height

    def add_columns(self, schema: Mapping[str, pl.DataType]) -> None:
        """Take columns of `schema` it lacks (rows recorded before read them as None)."""
        for name, dtype in schema.items():
            if name == PARTITION_COLUMN or name in self.columns:
                continue
            self.columns[name] = [None] * self.height
            if isinstance(dtype, pl.Datetime):
                self.times.add(name)
        self.dtypes = {name: schema[name] for name in self.columns}

    def _values(self, row: Mapping[str, Any]) -> list[Any]:
        """The row's values in the columns' order, times as microseconds; nothing recorded.

        Raises:
            InferenceLogError: The row has a column the log lacks, or a time column holds
                something that is not a time with a zone (both named).
        """
        unknown = [n for n in row if n not in self.columns and n != PARTITION_COLUMN]
        if unknown:
            raise InferenceLogError(
                f"inference log row has unknown column(s) {unknown}; the log's columns are "
                f"{list(self.columns)}"
            )
        values = [row.get(name) for name in self.columns]
        for index, name in enumerate(self.columns):
            value = values[index]
            if value is not None and name in self.times:
                try:
                    values[index] = (value - _EPOCH) // _MICROSECOND
                except TypeError:
                    raise InferenceLogError(
                        f"inference log column {name!r} holds {value!r}, not a time with a zone"
                    ) from None
        return values

    def _take(self, values: list[Any]) -> None:
        for column, value in zip(self.columns.values(), values, strict=True):
            column.append(value)
        self.height += 1

    def append(self, row: Mapping[str, Any]) -> None:
        """Record one row, or nothing when it is refused (`_values`).

        A `PARTITION_COLUMN` value is ignored: it comes from the time.
        """
        self._take(self._values(row))

    def extend(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Record rows all together, or none of them when one is refused."""
        for values in [self._values(row) for row in rows]:
            self._take(values)

    def take(self, columns: Mapping[str, list[Any]], height: int) -> None:
        """Append `height` rows given column by column (values as `_values` makes them).

        A column of this buffer that `columns` lacks gets None.
        """
        for name, column in self.columns.items():
            values = columns.get(name)
            column.extend([None] * height if values is None else values)
        self.height += height

    def then(self, later: _Columns) -> _Columns:
        """These rows followed by `later`'s (columns of either; missing values None)."""
        merged = _Columns(self.dtypes)
        merged.add_columns(later.dtypes)
        for name, column in merged.columns.items():
            column.extend(self.columns.get(name) or [None] * self.height)
            column.extend(later.columns.get(name) or [None] * later.height)
        merged.height = self.height + later.height
        return merged

    def frame(self) -> pl.DataFrame:
        """The rows as a frame of the schema's types."""
        series = []
        for name, values in self.columns.items():
            dtype = self.dtypes[name]
            if name in self.times:
                series.append(pl.Series(name, values, dtype=pl.Int64).cast(dtype))
            else:
                series.append(pl.Series(name, values, dtype=dtype, strict=False))
        return pl.DataFrame(series)


class _Recorder:
    """Recording shared by the log's writers: rows buffered column by column under a lock.

    A writer sets `schema`, `flush_rows`, `max_pending`, `_rows`, `_lock`, `_wake`,
    `_closed`, `_recorded` and `_last_error`, and says how many rows are unwritten.
    """

    schema: dict[str, pl.DataType]
    flush_rows: int
    max_pending: int
    _rows: _Columns
    _lock: threading.Lock
    _wake: threading.Event
    _closed: bool
    _recorded: int
    _last_error: str | None

    def _start_recording(
        self,
        uri: str | Path,
        schema: Mapping[str, pl.DataType] | None,
        flush_rows: int,
        flush_interval_ms: int,
        max_pending: int,
    ) -> None:
        """The recording state every writer starts with, its options checked."""
        if flush_rows < 1 or flush_interval_ms < 1:
            raise ValueError("flush_rows and flush_interval_ms must be positive")
        self.uri = str(uri)
        self.schema = dict(schema or BASE_SCHEMA)
        self.flush_rows = flush_rows
        self.flush_interval = flush_interval_ms / 1000
        self.max_pending = max_pending
        # Pending rows kept column by column in the schema's order (`_Columns`): a flush
        # takes them whole, with no per-row work left for the writer.
        self._rows = _Columns(self.schema)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._recorded = 0
        self._last_error = None

    def _unwritten(self) -> int:
        """Rows recorded and not yet committed (the lock is held)."""
        return len(self._rows)

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    def add_columns(self, columns: Mapping[str, pl.DataType]) -> None:
        """Accept more columns in recorded rows (a new model's features); known ones stay."""
        with self._lock:
            schema = dict(self.schema)
            for name, dtype in columns.items():
                schema.setdefault(name, dtype)
            self.schema = schema
            self._rows.add_columns(schema)

    def record(self, row: Mapping[str, Any]) -> None:
        """Buffer one row; it is committed by the next flush.

        Args:
            row: Column name to value (base columns and feature columns; `day` is derived
                from `event_time` when absent). Values must fit the schema's types.

        Raises:
            InferenceLogError: The log is closed, too many rows are pending because writes
                keep failing, or the row has a column the log's schema lacks or a time
                without a zone (named); nothing is buffered then.
        """
        self.record_many((row,))

    def record_many(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Buffer rows all together or none of them (one batch of requests).

        Raises:
            InferenceLogError: The log is closed, it holds too many unwritten rows to take
                all of `rows`, or a row has a column the log's schema lacks or a time
                without a zone (none is buffered then).
        """
        with self._lock:
            if self._closed:
                raise InferenceLogError("the inference log is closed")
            unwritten = self._unwritten()
            if unwritten + len(rows) > self.max_pending:
                raise InferenceLogError(
                    f"the inference log holds {unwritten} unwritten rows and cannot take "
                    f"{len(rows)} more (last error: {self._last_error}); refusing them"
                )
            if len(rows) == 1:
                self._rows.append(rows[0])
            else:
                self._rows.extend(rows)
            self._recorded += len(rows)
            full = len(self._rows) >= self.flush_rows
        if full:
            self._wake.set()


class InferenceLog(_Recorder):
    """A buffered, thread-safe appender to the inference log table.

    Args:
        uri: The table's location (`Catalog.uri_for_write(INFERENCE_LOG)`).
        schema: Column types of the rows (see `inference_schema`); rows are built with it.
        flush_rows: Write as soon as this many rows are pending.
        flush_interval_ms: Write pending rows at least this often.
        max_pending: Refuse `record` (raise `InferenceLogError`) beyond this many pending
            rows, so that a log that cannot write does not hide it by dropping rows.
        start: Start the background writer (otherwise rows are written by `flush`/`close`).
    """

    def __init__(
        self,
        uri: str | Path,
        *,
        schema: Mapping[str, pl.DataType] | None = None,
        flush_rows: int = 2_000,
        flush_interval_ms: int = 1_000,
        max_pending: int = 1_000_000,
        start: bool = True,
    ) -> None:
        self._start_recording(uri, schema, flush_rows, flush_interval_ms, max_pending)
        # Held while writing: one commit at a time, in recording order.
        self._write_lock = threading.Lock()
        self._written = 0
        self._commits = 0
        self._failures = 0
        self._last_flush_at: datetime.datetime | None = None
        self._last_version: int | None = None
        self._thread: threading.Thread | None = None
        self._table: Any = None  # the delta-rs handle of the last flush's commit
        if start:
            self._thread = threading.Thread(
                target=self._run, name="inference-log-writer", daemon=True
            )
            self._thread.start()

    def __enter__(self) -> InferenceLog:
        return self

    @property
    def writer(self) -> str:
        """Who makes the commits: `thread` (a thread of this process)."""
        return "thread"

    @property
    def pid(self) -> int:
        """The process making the commits: this one."""
        return os.getpid()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def take_columns(
        self, dtypes: Mapping[str, pl.DataType], columns: Mapping[str, list[Any]], height: int
    ) -> None:
        """Buffer rows recorded elsewhere, given column by column, after the pending ones.

        The values are `_Columns` values (times as microseconds since the epoch), not
        checked again; columns new to the log are added. The writer process
        (`serving.log_writer`) feeds its log with this.
        """
        with self._lock:
            if dtypes.keys() - self.schema.keys():
                self.schema = {**self.schema, **{n: t for n, t in dtypes.items()}}
                self._rows.add_columns(self.schema)
            self._rows.take(columns, height)
            self._recorded += height

    def append(self, frame: pl.DataFrame) -> WriteResult:
        """Write a frame of predictions (batch or stream) in one commit, at once.

        The frame needs `REQUIRED_COLUMNS`; see `prepare_frame` for what is filled in.

        Returns:
            The write's result (its Delta version, rows written, table rows).
        """
        prepared = prepare_frame(frame, self.schema)
        with self._write_lock:
            result = append_table(
                self.uri,
                prepared,
                partition_by=[PARTITION_COLUMN],
                table=str(INFERENCE_LOG),
            )
            with self._lock:
                self._written += prepared.height
                self._commits += 1
                self._last_version = result.version
        return result

    def append_chunks(
        self, frames: Iterable[pl.DataFrame], metadata: Mapping[str, str] | None = None
    ) -> WriteResult:
        """Write frames of predictions in one commit, holding one frame at a time.

        Each frame is brought to the table's shape (`prepare_frame`) and written as one
        Parquet file per day as soon as it comes; one append commit then adds every file
        (readers see all the rows or none). Columns the table lacks are added first, in a
        commit of their own, as `append` does; a changed type is refused before any commit.
        Files of a write that fails before its commit are referenced by no version (vacuum
        removes them).

        Args:
            frames: The rows, in chunks (each with `REQUIRED_COLUMNS`).
            metadata: Custom commit metadata.

        Returns:
            The write's result; `table_rows` is -1 (the table is not counted).

        Raises:
            SchemaChangeError: A column's type differs from the table's.
        """
        with self._write_lock:
            result = _append_chunks(self.uri, frames, self.schema, metadata or {})
            with self._lock:
                self._written += result.rows_written
                self._commits += 1
                self._last_version = result.version
        return result

    def flush(self, metadata: Mapping[str, str] | None = None) -> int:
        """Commit the pending rows now (one commit); return how many were written.

        Args:
            metadata: Custom metadata of the commit.

        Raises:
            Exception: The write failed; the rows stay pending for the next flush.
        """
        with self._write_lock:
            with self._lock:
                rows, self._rows = self._rows, _Columns(self.schema)
            if not rows:
                return 0
            try:
                frame = prepare_frame(rows.frame(), self.schema)
                result = append_table(
                    self.uri,
                    frame,
                    partition_by=[PARTITION_COLUMN],
                    table=str(INFERENCE_LOG),
                    count_rows=False,
                    reuse=self._table,
                    metadata=metadata,
                )
            except BaseException as error:
                with self._lock:
                    # Put them back in front of rows recorded meanwhile: order is kept.
                    self._rows = rows.then(self._rows)
                    # The next flush opens the table afresh (this handle may be the cause:
                    # e.g. the table was removed and created again since).
                    self._table = None
                    self._failures += 1
                    self._last_error = f"{type(error).__name__}: {error}"
                raise
            # The table's handle at this commit: the next flush updates it (reading the
            # commits since) instead of opening the table and replaying its log.
            self._table = result.table
            with self._lock:
                self._written += len(rows)
                self._commits += 1
                self._last_error = None
                self._last_flush_at = datetime.datetime.now(datetime.UTC)
                self._last_version = result.version
            return len(rows)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._closed:
                return
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - recorded in stats; rows stay pending, retried
                time.sleep(min(self.flush_interval, 1.0))

    def close(self) -> None:
        """Stop the background writer and commit every pending row.

        Raises:
            Exception: The last write failed; the rows it held are not in the table.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def stats(self) -> LogStats:
        """Counters of this log (see `LogStats`)."""
        with self._lock:
            return LogStats(
                recorded=self._recorded,
                written=self._written,
                pending=len(self._rows),
                commits=self._commits,
                failures=self._failures,
                last_error=self._last_error,
                last_flush_at=self._last_flush_at,
                last_version=self._last_version,
            )


def _append_chunks(
    uri: str,
    frames: Iterable[pl.DataFrame],
    schema: Mapping[str, pl.DataType],
    metadata: Mapping[str, str],
) -> WriteResult:
    """Write each frame's files as it comes, then add them all in one append commit."""
    from deltalake import CommitProperties, DeltaTable
    from deltalake import Schema as DeltaSchema
    from deltalake.exceptions import CommitFailedError, DeltaError
    from deltalake.transaction import AddAction

    # The write path of `delta_io`'s polars writer, one file per chunk and day.
    from mlops_assets.lakehouse.delta_io import (
        POST_COMMIT,
        WRITE_ID_KEY,
        _arrow_schema,
        _commit_version,
        _comparable,
        _open,
        _write_parquet,
        storage_options_for,
    )

    name = str(INFERENCE_LOG)
    options = storage_options_for(uri)
    write_id = str(uuid.uuid4())
    commit_metadata = {**metadata, WRITE_ID_KEY: write_id}
    delta = _open(uri, options)
    existing = None if delta is None else _arrow_schema(delta)
    if delta is not None and list(delta.metadata().partition_columns) != [PARTITION_COLUMN]:
        raise SchemaChangeError(f"table {name}: not partitioned by [{PARTITION_COLUMN!r}]")
    actions: list[AddAction] = []
    written_schema = None
    rows = 0
    for frame in frames:
        prepared = prepare_frame(frame, schema)
        if not prepared.height:
            continue
        arrow_schema = prepared.head(0).to_arrow(compat_level=pl.CompatLevel.oldest()).schema
        if existing is not None:
            check_schema(existing, arrow_schema, SchemaPolicy.ADDITIVE, name)
        if written_schema is None:
            written_schema = arrow_schema
        elif _schema_text(arrow_schema) != _schema_text(written_schema):
            raise SchemaChangeError(
                f"table {name}: chunks of one write differ in their columns or types"
            )
        days = prepared.get_column(PARTITION_COLUMN).unique()
        parts = (
            {(days[0],): prepared}
            if len(days) == 1
            else prepared.partition_by(PARTITION_COLUMN, as_dict=True)
        )
        for (day,), part in parts.items():
            content = part.drop(PARTITION_COLUMN)
            relative = (
                f"{PARTITION_COLUMN}={day.isoformat()}/part-00000-{uuid.uuid4()}-c000.parquet"
            )
            size = _write_parquet(uri, relative, content, options)
            actions.append(
                AddAction(
                    path=relative,
                    size=size,
                    partition_values={PARTITION_COLUMN: day.isoformat()},
                    modification_time=int(time.time() * 1000),
                    data_change=True,
                    stats=json.dumps(file_statistics(content)),
                )
            )
        rows += prepared.height
        del prepared, parts
    if written_schema is None:
        raise ValueError(f"table {name}: no rows to append")
    if delta is None:
        try:
            delta = DeltaTable.create(
                uri,
                DeltaSchema.from_arrow(written_schema),
                mode="error",
                partition_by=[PARTITION_COLUMN],
                storage_options=options,
                commit_properties=CommitProperties(max_commit_retries=0),
            )
        except (CommitFailedError, DeltaError):
            # Another writer created it meanwhile: append to theirs.
            delta = _open(uri, options)
            if delta is None:
                raise
            check_schema(_arrow_schema(delta), written_schema, SchemaPolicy.ADDITIVE, name)
    have = set(_arrow_schema(delta).names)
    new = [f for f in written_schema if f.name not in have]
    if new:
        # An append commit does not change the table's schema: the new columns come first.
        try:
            delta.alter.add_columns(list(DeltaSchema.from_arrow(pa.schema(new)).fields))
        except (CommitFailedError, DeltaError):
            delta.update_incremental()
            if not {f.name for f in new} <= set(_arrow_schema(delta).names):
                raise
    before = delta.version()
    delta.create_write_transaction(
        actions,
        mode="append",
        schema=delta.schema(),
        partition_by=[PARTITION_COLUMN],
        commit_properties=CommitProperties(custom_metadata=commit_metadata),
        post_commithook_properties=POST_COMMIT,
    )
    delta.update_incremental()
    version = delta.version()
    newest = delta.history(1) if version == before + 1 else []
    if not (newest and newest[0].get(WRITE_ID_KEY) == write_id):
        found = _commit_version(uri, write_id, options)
        if found is None:
            raise RuntimeError(f"table {name}: the commit of write {write_id} is lost")
        version = found
    return WriteResult(
        uri=uri,
        version=version,
        rows_written=rows,
        table_rows=-1,
        schema={f.name: _comparable(f.type) for f in written_schema},
        added_columns=tuple(f.name for f in new),
    )


def _schema_text(schema: pa.Schema) -> list[tuple[str, str]]:
    return [(f.name, str(f.type)) for f in schema]


def compact_inference_log(
    uri: str | Path,
    *,
    days: Sequence[datetime.date] | None = None,
    target_size: int = 128 * 2**20,
    vacuum_retention_hours: int | None = None,
) -> dict[str, Any]:
    """Rewrite small files of the inference log into large ones; rows do not change.

    Appends make one file per flush and day; reading a day then opens thousands of files.
    Compaction (Delta OPTIMIZE, a `dataChange=false` commit) bins them into files of about
    `target_size` bytes. With `vacuum_retention_hours`, files no version younger than that
    needs are then deleted.

    Args:
        uri: The table.
        days: Only these day partitions (all when None).
        target_size: Target file size in bytes.
        vacuum_retention_hours: Vacuum after compacting, keeping this much history.

    Returns:
        `files_removed`, `files_added`, `version` and, with vacuum, `files_vacuumed`.
    """
    from deltalake import DeltaTable

    if not table_exists(uri):
        return {"files_removed": 0, "files_added": 0, "version": None}
    delta = DeltaTable(str(uri))
    results: dict[str, Any] = {"files_removed": 0, "files_added": 0}
    filters: list[list[tuple[str, str, str]] | None] = (
        [None] if days is None else [[(PARTITION_COLUMN, "=", d.isoformat())] for d in days]
    )
    for partition_filters in filters:
        metrics = delta.optimize.compact(
            partition_filters=partition_filters,  # type: ignore[arg-type]
            target_size=target_size,
        )
        results["files_removed"] += int(metrics.get("numFilesRemoved", 0))
        results["files_added"] += int(metrics.get("numFilesAdded", 0))
        delta = DeltaTable(str(uri))
    if vacuum_retention_hours is not None:
        removed = delta.vacuum(
            retention_hours=vacuum_retention_hours,
            enforce_retention_duration=False,
            dry_run=False,
        )
        results["files_vacuumed"] = len(removed)
        delta = DeltaTable(str(uri))
    results["version"] = delta.version()
    return results
