"""Streaming micro-batches: each landed transactions file scored into the inference log once.

The exactly-once protocol, shared by the `stream_predictions` asset (a run per file) and the
long-lived stream worker: a file's rows are one Delta append whose commit carries the file's
name, then a row of the stream checkpoint records it. A file in the checkpoint is skipped; a
file in the log without a checkpoint row (a stop between the two writes) is checkpointed with
the version found, never scored again. One scorer at a time per environment: the worker or
the sensor's runs, not both.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import append_table, scan_table, table_exists
from mlops_assets.lakehouse.landing import is_partial

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


def checkpoints(uri: str) -> pl.DataFrame:
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
    from mlops_assets.serving.scoring import STREAM_FILE_KEY, score_file, streamed_version

    path = landing_root / file
    if not path.is_file():
        raise FileNotFoundError(f"landed file {file!r} does not exist under {landing_root}")
    done = checkpoints(checkpoint_uri).filter(pl.col("file") == file)
    if done.height:
        row = done.row(0, named=True)
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
    recovered = streamed_version(log_uri, file)
    model = load_model()
    batch = None
    version: int | None = recovered
    if recovered is None:
        with open_store() as store:
            batch = score_file(path, landing_root, model, store, run_id=run_id)
        if batch.rows.height:
            written = append_table(
                log_uri,
                prepare_frame(batch.rows, inference_schema(model.spec)),
                partition_by=["day"],
                table=log_table,
                metadata={STREAM_FILE_KEY: file},
                count_rows=False,
            )
            version = written.version
    record = {
        "file": file,
        "log_version": version,
        "lines": batch.lines if batch else None,
        "scored": batch.scored if batch else None,
        "errors": batch.errors if batch else None,
        "model_version": model.version,
        "dagster_run_id": run_id,
        "at": datetime.datetime.now(datetime.UTC),
    }
    append_table(
        checkpoint_uri,
        pl.DataFrame([record], schema=CHECKPOINT_SCHEMA),
        table=checkpoint_table,
        count_rows=False,
    )
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
    )
