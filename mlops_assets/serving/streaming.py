"""Streaming micro-batches: each landed transactions file scored into the inference log once.

The exactly-once protocol, shared by the `stream_predictions` asset (a run per file) and the
long-lived stream worker: a file's rows are one Delta append whose commit carries the file's
name, then a row of the stream checkpoint records it. A file in the checkpoint is skipped; a
file in the log without a checkpoint row (a stop between the two writes) is checkpointed with
the version found, never scored again. One scorer at a time per environment: the worker or
the sensor's runs, not both.

Only complete files are taken: a file is due once its size and modification time have been
unchanged for the settle time (`Settling`), as writers that do not rename a finished file
into place leave it growing meanwhile. The checkpoint row records the file's size and
modification time when scored and the last line scored. A checkpointed file found later with
another size is not skipped silently: an alert names it and both sizes, and the lines after
the last one scored are scored as a continuation, exactly once (its log commit carries the
file's name and the line it continues after).

Pieces: `Settling` (which files are unchanged long enough), `pending_files` (which landed
files are due), `StreamLedger` (the two tables: what is checkpointed, which log commit holds a
file, the commit and the checkpoint row),
`checkpoint_row` (a checkpoint row) and `score_landed_file` (the protocol, step by step).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import WriteResult, append_table, scan_table, table_exists
from mlops_assets.lakehouse.landing import is_partial
from mlops_assets.serving.inference_log import INFERENCE_LOG

STREAM_CHECKPOINT = TableRef("serving", "stream_checkpoint")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)

# Day folders of landed transactions watched (the newest ones).
LOOKBACK_DAYS = 3
CHECKPOINT_SCHEMA = {
    "file": pl.String,
    "log_version": pl.Int64,
    "lines": pl.Int64,
    "scored": pl.Int64,
    "errors": pl.Int64,
    "model_version": pl.String,
    "dagster_run_id": pl.String,
    "at": pl.Datetime("us", "UTC"),
    # The file as scored: its size and modification time, and the last line covered (a
    # continuation scores the lines after it). Null in rows written before they were kept.
    "size": pl.Int64,
    "mtime": pl.Datetime("us", "UTC"),
    "last_line": pl.Int64,
}


class FileChangedError(RuntimeError):
    """A landed file changed while it was being scored (it is tried again later)."""


@dataclass(frozen=True)
class StreamOutcome:
    """What scoring one landed file did.

    Attributes:
        file: The file, relative to the landing root.
        skipped: It was scored before (in the checkpoint).
        recovered: Its rows were in the log without a checkpoint row; only checkpointed now.
        log_version: Inference log version holding its rows (None: no rows, e.g. header only).
        lines: Lines after the header (None when skipped or recovered).
        scored: Lines scored (`ok` rows).
        errors: Lines logged as `error` rows.
        seconds: Time spent scoring (0 when nothing was scored).
        model_version: Version that scored it (the checkpoint's when skipped).
        checkpoint_version: Checkpoint table version of its row written now (None when
            skipped).
        checkpoint_uri: The checkpoint table its row was written to (None when skipped).
        size: The file's size in bytes when scored (or checked, when skipped).
        previous_size: Its size when it was scored before, for a continuation (None
            otherwise).
        alert: The message of the alert raised about the file (None when none was).
    """

    file: str
    skipped: bool
    recovered: bool
    log_version: int | None
    lines: int | None
    scored: int | None
    errors: int | None
    seconds: float
    model_version: str | None
    checkpoint_version: int | None = None
    checkpoint_uri: str | None = None
    size: int | None = None
    previous_size: int | None = None
    alert: str | None = None

    @property
    def continued(self) -> bool:
        """Whether this scored the lines a checkpointed file gained after it was scored."""
        return self.previous_size is not None

    def metadata(self) -> dict[str, Any]:
        """Plain values for asset metadata (-1 and 0 where a figure does not apply)."""
        return {
            "file": self.file,
            "skipped": self.skipped,
            "recovered_from_log": self.recovered,
            "log_version": self.log_version if self.log_version is not None else -1,
            "lines": self.lines or 0,
            "scored": self.scored or 0,
            "errors": self.errors or 0,
            "seconds": self.seconds,
            "model_version": self.model_version or "",
            "size": self.size if self.size is not None else -1,
            "continued": self.continued,
            "previous_size": self.previous_size if self.previous_size is not None else -1,
        }


def checkpoints(uri: str | Path) -> pl.DataFrame:
    """The files streaming has scored, with the inference log version of each.

    One row per file scored, and one per continuation of it; every column of
    `CHECKPOINT_SCHEMA` (null where an older row lacks it).
    """
    if not table_exists(uri):
        return pl.DataFrame(schema=CHECKPOINT_SCHEMA)
    rows = scan_table(uri).collect()
    missing = [
        pl.lit(None, dtype).alias(c)
        for c, dtype in CHECKPOINT_SCHEMA.items()
        if c not in rows.columns
    ]
    return rows.with_columns(missing) if missing else rows


def file_state(path: Path) -> tuple[int, int]:
    """A file's size in bytes and modification time in nanoseconds since the epoch."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


class Settling:
    """Which landed files are complete: unchanged in size and modification time long enough.

    Each file seen is observed as (size, modification time, since when unchanged). A file
    seen for the first time has been unchanged since its modification time; one whose size
    or modification time differs from the last observation has been unchanged since now. A
    file is settled once both that time and its modification time are `settle_seconds` old,
    so a writer appending without renaming (even one that sets the modification time back)
    is waited for.

    Args:
        settle_seconds: How long a file must be unchanged.
        observed: Earlier observations (`observations()`, e.g. from a sensor's cursor).
    """

    def __init__(self, settle_seconds: float, observed: Mapping[str, Any] | None = None) -> None:
        if settle_seconds < 0:
            raise ValueError(f"settle_seconds must be at least 0, got {settle_seconds}")
        self.settle_seconds = settle_seconds
        self._observed: dict[str, tuple[int, int, float]] = {
            name: (int(v[0]), int(v[1]), float(v[2])) for name, v in (observed or {}).items()
        }

    def settled(self, path: Path, name: str, now: float) -> tuple[int, int] | None:
        """The file's (size, mtime in ns) when it is settled, None when not (or gone)."""
        try:
            size, mtime_ns = file_state(path)
        except FileNotFoundError:
            self._observed.pop(name, None)
            return None
        mtime = mtime_ns / 1e9
        seen = self._observed.get(name)
        if seen is None:
            since = min(now, mtime)
        elif seen[:2] != (size, mtime_ns):
            since = now
        else:
            since = seen[2]
        self._observed[name] = (size, mtime_ns, since)
        if now - since >= self.settle_seconds and now - mtime >= self.settle_seconds:
            return size, mtime_ns
        return None

    def keep_only(self, names: Collection[str]) -> None:
        """Forget the files not among `names` (left the watched folders, or removed)."""
        for name in set(self._observed) - set(names):
            del self._observed[name]

    def observations(self) -> dict[str, list[float]]:
        """The observations as plain data (file to [size, mtime in ns, since])."""
        return {name: list(v) for name, v in sorted(self._observed.items())}


def landed_files(landing_root: Path, lookback_days: int = LOOKBACK_DAYS) -> list[str]:
    """Complete transactions files of the newest day folders, relative to the landing root.

    Only the newest `lookback_days` day folders are watched: files of older folders (landed
    while no champion served, or while the worker was down longer than that) are left to
    batch scoring.
    """
    folder = landing_root / "transactions"
    if not folder.is_dir():
        return []
    days = sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )[-lookback_days:]
    return sorted(
        p.relative_to(landing_root).as_posix()
        for day in days
        for p in day.iterdir()
        if p.is_file() and not is_partial(p.name)
    )


def pending_files(
    landing_root: Path,
    done: Mapping[str, int | None] | Collection[str],
    *,
    settle_seconds: float = 0.0,
    now: float | None = None,
    lookback_days: int = LOOKBACK_DAYS,
    settling: Settling | None = None,
) -> list[str]:
    """Landed files (`landed_files`) due for scoring and settled, oldest day first.

    A file is due when the checkpoint does not hold it, or holds it with another size (it
    changed after it was scored: the run continues it).

    Args:
        landing_root: The environment's landing folder.
        done: Files the checkpoint holds, with their size when scored (None when unknown:
            not compared) or as a plain collection (sizes not compared).
        settle_seconds: How long a file's size and modification time must be unchanged
            (a guard for writers that do not rename a finished file into place).
        now: The time compared with (seconds since the epoch; default: now).
        lookback_days: Newest day folders watched.
        settling: Observations kept across calls (by default only the modification time
            of each file is known).

    Returns:
        Names relative to the landing root; a file removed meanwhile is left out.
    """
    now = time.time() if now is None else now
    settling = settling or Settling(settle_seconds)
    sizes = done if isinstance(done, Mapping) else dict.fromkeys(done)
    landed = landed_files(landing_root, lookback_days)
    settling.keep_only(landed)
    due = []
    for name in landed:
        state = settling.settled(landing_root / name, name, now)
        if state is None:
            continue
        if name in sizes and sizes[name] in (None, state[0]):
            continue
        due.append(name)
    return due


class StreamLedger:
    """The exactly-once protocol's two tables: the inference log and the stream checkpoint.

    A file is scored once: its rows are one append to the log whose commit carries the file's
    name (`commit_rows`), then one checkpoint row records the file and the log version
    (`checkpoint`). Before scoring, a file in the checkpoint is done (`checkpointed`), and a
    file whose rows are in the log without a checkpoint row (a stop between the two writes) is
    found by its commit (`committed_version`): it is checkpointed, not scored again.

    Args:
        log_uri: The inference log.
        checkpoint_uri: The stream checkpoint table.
        log_table: The log's name, recorded in its commits.
        checkpoint_table: The checkpoint's name, recorded in its commits.
    """

    def __init__(
        self,
        log_uri: str,
        checkpoint_uri: str,
        *,
        log_table: str = str(INFERENCE_LOG),
        checkpoint_table: str = str(STREAM_CHECKPOINT),
    ) -> None:
        self.log_uri = log_uri
        self.checkpoint_uri = checkpoint_uri
        self.log_table = log_table
        self.checkpoint_table = checkpoint_table

    def rows(self) -> pl.DataFrame:
        """Every checkpoint row (`CHECKPOINT_SCHEMA`); empty before the first."""
        return checkpoints(self.checkpoint_uri)

    def done(self) -> set[str]:
        """The files the checkpoint holds."""
        return set(self.rows().get_column("file").to_list())

    def sizes(self) -> dict[str, int | None]:
        """Each checkpointed file's size when last scored (None when not recorded)."""
        latest = self.rows().sort("at").group_by("file").agg(pl.col("size").last())
        return dict(latest.iter_rows())

    def checkpointed(self, file: str) -> dict[str, Any] | None:
        """The file's checkpoint, None when it has none.

        The latest row's columns, with `lines`, `scored` and `errors` summed over the file's
        rows (the first scoring and its continuations) and `last_line` their greatest.
        """
        found = self.rows().filter(pl.col("file") == file).sort("at")
        if not found.height:
            return None
        row = found.row(found.height - 1, named=True)
        for column in ("lines", "scored", "errors"):
            values = found.get_column(column)
            row[column] = int(values.sum()) if values.null_count() < found.height else None
        row["last_line"] = found.get_column("last_line").max()
        return row

    @staticmethod
    def unchanged(row: Mapping[str, Any] | None, size: int) -> bool:
        """Whether a file's checkpoint (`checkpointed`) says it was scored at this size.

        A row without a recorded size (written before sizes were kept) counts as unchanged.
        """
        return row is not None and (row["size"] is None or row["size"] == size)

    def last_line_logged(self, file: str, version: int) -> int:
        """The greatest line of a file whose row the log holds at `version` (0 for none)."""
        prefix = f"stream:{file}:"
        found = (
            scan_table(self.log_uri, version=version)
            .filter(pl.col("request_id").str.starts_with(prefix))
            .select(_line_of(pl.col("request_id")).max())
            .collect()
            .item()
        )
        return int(found or 0)

    def committed_version(self, file: str) -> int | None:
        """The log version whose commit carries the file's rows, None when none does."""
        from mlops_assets.serving.scoring import streamed_version

        return streamed_version(self.log_uri, file)

    def commit_rows(self, file: str, rows: pl.DataFrame) -> WriteResult:
        """Append a file's rows to the log in one commit that carries the file's name.

        Args:
            file: The file, relative to the landing root.
            rows: Its rows, in the log's schema, partitioned by `day`.

        Raises:
            ValueError: `rows` is empty (a commit without rows would record nothing to find).
        """
        from mlops_assets.serving.scoring import STREAM_FILE_KEY

        if not rows.height:
            raise ValueError(f"no rows of {file!r} to commit to {self.log_table}")
        return append_table(
            self.log_uri,
            rows,
            partition_by=["day"],
            table=self.log_table,
            metadata={STREAM_FILE_KEY: file},
            count_rows=False,
        )

    def checkpoint(self, row: Mapping[str, Any]) -> WriteResult:
        """Record a file as done: one row of `CHECKPOINT_SCHEMA` appended in one commit.

        Raises:
            ValueError: The row lacks a column of the schema or names an unknown one.
        """
        missing = sorted(set(CHECKPOINT_SCHEMA) - set(row))
        unknown = sorted(set(row) - set(CHECKPOINT_SCHEMA))
        if missing or unknown:
            raise ValueError(
                f"checkpoint row of {row.get('file')!r}: missing {missing}, unknown {unknown}"
            )
        return append_table(
            self.checkpoint_uri,
            pl.DataFrame([dict(row)], schema=CHECKPOINT_SCHEMA),
            table=self.checkpoint_table,
            count_rows=False,
        )


def _line_of(request_id: pl.Expr) -> pl.Expr:
    # A streamed row's request id is `stream:<file>:<line>`.
    return request_id.str.extract(r":(\d+)$").cast(pl.Int64)


@dataclass(frozen=True)
class Counts:
    """Lines taken from a file, and how many were scored or logged as errors."""

    lines: int
    scored: int
    errors: int


def checkpoint_row(
    file: str,
    *,
    log_version: int | None,
    batch: Any,
    model_version: str,
    run_id: str,
    at: datetime.datetime | None = None,
    size: int | None = None,
    mtime_ns: int | None = None,
    last_line: int | None = None,
) -> dict[str, Any]:
    """The checkpoint row of a file.

    Args:
        file: The file, relative to the landing root.
        log_version: Log version holding its rows (None: the file had no rows).
        batch: What was scored now (`lines`, `scored`, `errors`: a `StreamBatch` or
            `Counts`), None when the rows were found in the log.
        model_version: The version that scored it.
        run_id: The Dagster run (or worker) that records it.
        at: When (default: now).
        size: The file's size in bytes when scored.
        mtime_ns: Its modification time (nanoseconds since the epoch) when scored.
        last_line: The last line of the file covered now.
    """
    return {
        "file": file,
        "log_version": log_version,
        "lines": batch.lines if batch else None,
        "scored": batch.scored if batch else None,
        "errors": batch.errors if batch else None,
        "model_version": model_version,
        "dagster_run_id": run_id,
        "at": at or datetime.datetime.now(datetime.UTC),
        "size": size,
        "mtime": (
            _EPOCH + datetime.timedelta(microseconds=mtime_ns // 1000)
            if mtime_ns is not None
            else None
        ),
        "last_line": last_line,
    }


def changed_message(file: str, scored_size: int, size: int, last_line: int | None) -> str:
    """The alert's message about a checkpointed file whose size changed."""
    after = f"line {last_line}" if last_line else "its header"
    return (
        f"landed file {file} changed after it was scored: {scored_size} bytes when scored, "
        f"{size} bytes now; the lines after {after} are scored as a continuation"
    )


def score_landed_file(
    landing_root: Path,
    file: str,
    *,
    load_model: Callable[[], Any],
    open_store: Callable[[], Any],
    log_uri: str,
    checkpoint_uri: str,
    log_table: str,
    checkpoint_table: str,
    run_id: str,
    alert: Callable[[str, dict[str, Any]], None] | None = None,
    timezone: str | None = None,
    scored: Any = None,
) -> StreamOutcome:
    """Score one landed file into the inference log, exactly once (the module's protocol).

    A file the checkpoint holds with the size it has now is skipped. One it holds with
    another size changed after it was scored: `alert` is called (a message naming the file
    and both sizes, and details), then the lines after the last one scored are scored as a
    continuation (a file that shrank has none: its new size is recorded). A continuation's
    log commit carries `<file>#after-line-<n>`, so a stop between its two writes is
    recovered like a first scoring.

    Args:
        landing_root: The environment's landing folder.
        file: The file, relative to `landing_root`.
        load_model: Returns the `ServingModel` to score with (called only when scoring).
        open_store: Returns the online store as a context manager (called only when scoring).
        log_uri: The inference log.
        checkpoint_uri: The stream checkpoint table.
        log_table: The log's name, recorded in its commits.
        checkpoint_table: The checkpoint's name, recorded in its commits.
        run_id: The Dagster run (or worker) that scores it.
        alert: Raises the alert about a checkpointed file that changed (message, details).
        timezone: The zone the source declares for times without an offset
            (`Settings.source_timezones`); None: such times are refused.
        scored: The file already scored elsewhere (a `StreamBatch` of
            `spark_streaming.score_files`, whose `state` is the file's when read), written
            instead of scoring it here; ignored when the file is skipped or recovered.

    Raises:
        FileNotFoundError: The file does not exist under the landing root.
        FileChangedError: The file changed while it was being scored, or since `scored` read
            it (nothing is written).
    """
    from mlops_assets.serving.inference_log import inference_schema, prepare_frame
    from mlops_assets.serving.scoring import score_file

    path = landing_root / file
    if not path.is_file():
        raise FileNotFoundError(f"landed file {file!r} does not exist under {landing_root}")
    size, mtime_ns = file_state(path)
    ledger = StreamLedger(
        log_uri, checkpoint_uri, log_table=log_table, checkpoint_table=checkpoint_table
    )
    row = ledger.checkpointed(file)
    after_line, previous_size, commit_key = 0, None, file
    if row is not None:
        if StreamLedger.unchanged(row, size):
            return StreamOutcome(
                file=file,
                skipped=True,
                recovered=False,
                log_version=row["log_version"],
                lines=row["lines"],
                scored=row["scored"],
                errors=row["errors"],
                seconds=0.0,
                model_version=row["model_version"],
                size=size,
            )
        previous_size, after_line = int(row["size"]), int(row["last_line"] or 0)
        commit_key = f"{file}#after-line-{after_line}"
    recovered = ledger.committed_version(commit_key)
    model = load_model()
    counts: Counts | None = None
    version: int | None = recovered
    seconds = 0.0
    if recovered is None:
        if scored is not None:
            batch = scored
            if batch.state is not None and tuple(batch.state) != (size, mtime_ns):
                raise FileChangedError(
                    f"landed file {file} changed since it was scored ({batch.state[0]} bytes "
                    f"then, {size} now): it is scored once it settles"
                )
        else:
            with open_store() as store:
                batch = score_file(
                    path, landing_root, model, store, run_id=run_id, timezone=timezone
                )
        if file_state(path) != (size, mtime_ns):
            raise FileChangedError(
                f"landed file {file} changed while it was scored ({size} bytes before, "
                f"{path.stat().st_size} after): it is scored once it settles"
            )
        rows = batch.rows
        if rows.height:  # a file without lines has no rows, nor columns
            rows = rows.filter(_line_of(pl.col("request_id")) > after_line)
        ok = int((rows.get_column("status") == "ok").sum()) if rows.height else 0
        counts = Counts(lines=rows.height, scored=ok, errors=rows.height - ok)
        seconds = batch.seconds
        if rows.height:
            logged = prepare_frame(rows, inference_schema(model.spec))
            version = ledger.commit_rows(commit_key, logged).version
            last_line = int(rows.select(_line_of(pl.col("request_id")).max()).item())
        else:
            last_line = after_line
    else:
        last_line = ledger.last_line_logged(file, recovered)
    record = checkpoint_row(
        file,
        log_version=version,
        batch=counts,
        model_version=model.version,
        run_id=run_id,
        size=size,
        mtime_ns=mtime_ns,
        last_line=last_line,
    )
    written = ledger.checkpoint(record)
    message = None
    if previous_size is not None:
        message = changed_message(file, previous_size, size, after_line)
        if alert is not None:
            alert(
                message,
                {
                    "file": file,
                    "size_when_scored": previous_size,
                    "size_now": size,
                    "continued_after_line": after_line,
                    "lines_continued": record["lines"],
                    "log_version": version,
                },
            )
    return StreamOutcome(
        file=file,
        skipped=False,
        recovered=recovered is not None,
        log_version=version,
        lines=record["lines"],
        scored=record["scored"],
        errors=record["errors"],
        seconds=seconds,
        model_version=model.version,
        checkpoint_version=written.version,
        checkpoint_uri=written.uri,
        size=size,
        previous_size=previous_size,
        alert=message,
    )
