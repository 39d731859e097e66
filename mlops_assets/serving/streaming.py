"""Streaming micro-batches: each landed transactions file scored into the inference log once.

The exactly-once protocol, shared by the `stream_predictions` asset (a run per file) and the
long-lived stream worker: a file's rows are one Delta append whose commit carries the file's
name, then a row of the stream checkpoint records it. A file in the checkpoint is skipped; a
file in the log without a checkpoint row (a stop between the two writes) is checkpointed with
the version found, never scored again. One scorer at a time per environment: the worker or
the sensor's runs, not both.

Pieces: `pending_files` (which landed files are due), `StreamLedger` (the two tables: what is
checkpointed, which log commit holds a file, the commit and the checkpoint row),
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
}


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
        }


def checkpoints(uri: str | Path) -> pl.DataFrame:
    """The files streaming has scored, with the inference log version of each."""
    if not table_exists(uri):
        return pl.DataFrame(schema=CHECKPOINT_SCHEMA)
    return scan_table(uri).collect()


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
    done: Collection[str],
    *,
    settle_seconds: float = 0.0,
    now: float | None = None,
    lookback_days: int = LOOKBACK_DAYS,
) -> list[str]:
    """Landed files (`landed_files`) not in `done` and settled, oldest day first.

    Args:
        landing_root: The environment's landing folder.
        done: Files the checkpoint holds.
        settle_seconds: A file modified less than this long before `now` is left for later (a
            guard for writers that do not rename a finished file into place).
        now: The time compared with (seconds since the epoch; default: now).
        lookback_days: Newest day folders watched.

    Returns:
        Names relative to the landing root; a file removed meanwhile is left out.
    """
    now = time.time() if now is None else now
    due = []
    for name in landed_files(landing_root, lookback_days):
        if name in done:
            continue
        try:
            changed = (landing_root / name).stat().st_mtime
        except FileNotFoundError:
            continue
        if now - changed >= settle_seconds:
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

    def checkpointed(self, file: str) -> dict[str, Any] | None:
        """The file's checkpoint row, None when it has none."""
        found = self.rows().filter(pl.col("file") == file)
        return found.row(0, named=True) if found.height else None

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


def checkpoint_row(
    file: str,
    *,
    log_version: int | None,
    batch: Any,
    model_version: str,
    run_id: str,
    at: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The checkpoint row of a file.

    Args:
        file: The file, relative to the landing root.
        log_version: Log version holding its rows (None: the file had no rows).
        batch: The `StreamBatch` scored now, None when the rows were found in the log.
        model_version: The version that scored it.
        run_id: The Dagster run (or worker) that records it.
        at: When (default: now).
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
    }


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
) -> StreamOutcome:
    """Score one landed file into the inference log, exactly once (the module's protocol).

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

    Raises:
        FileNotFoundError: The file does not exist under the landing root.
    """
    from mlops_assets.serving.inference_log import inference_schema, prepare_frame
    from mlops_assets.serving.scoring import score_file

    path = landing_root / file
    if not path.is_file():
        raise FileNotFoundError(f"landed file {file!r} does not exist under {landing_root}")
    ledger = StreamLedger(
        log_uri, checkpoint_uri, log_table=log_table, checkpoint_table=checkpoint_table
    )
    row = ledger.checkpointed(file)
    if row is not None:
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
        )
    recovered = ledger.committed_version(file)
    model = load_model()
    batch = None
    version: int | None = recovered
    if recovered is None:
        with open_store() as store:
            batch = score_file(path, landing_root, model, store, run_id=run_id)
        if batch.rows.height:
            rows = prepare_frame(batch.rows, inference_schema(model.spec))
            version = ledger.commit_rows(file, rows).version
    record = checkpoint_row(
        file, log_version=version, batch=batch, model_version=model.version, run_id=run_id
    )
    written = ledger.checkpoint(record)
    return StreamOutcome(
        file=file,
        skipped=False,
        recovered=recovered is not None,
        log_version=version,
        lines=record["lines"],
        scored=record["scored"],
        errors=record["errors"],
        seconds=batch.seconds if batch else 0.0,
        model_version=model.version,
        checkpoint_version=written.version,
        checkpoint_uri=written.uri,
    )
