"""Streaming micro-batches on Spark: a poll's landed files scored together on the executors.

The serving group on Spark (`MLOPS_ENGINE_SERVING=spark`) scores landed transactions files
with the cluster: the files due at a poll are spread over the executors as a frame of names,
and each task reads its files, looks their rows' features up in the online store by key and
scores them with `scoring.score_file`, the function the polars path runs. Each file's rows
come back to the driver as one Arrow IPC message with the file's size and modification time
before and after it was read; the driver then writes them with the exactly-once protocol of
`serving.streaming` (one log commit per file carrying its name, then its checkpoint row), so a
file's rows are the polars path's rows, and a file that changed while it was read is left for
a later poll, as on polars.

The executors reach the landing folder by path and the online store the environment names (the
embedded SQLite file on one machine; Redis, `MLOPS_ONLINE_STORE_URL`, on a cluster), so on a
cluster the landing folder is a file system the workers share. The model travels with the
function (pickled once per task), as in `serving.spark_scoring`.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from mlops_assets.serving.scoring import StreamBatch

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# What each task returns per file: its scored rows as an Arrow IPC message, the counts, and
# the file's state (size, modification time in nanoseconds) before and after it was read.
RESULT_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("rows", pa.large_binary()),  # 64-bit offsets: a task's files may pass 2 GiB
        ("lines", pa.int64()),
        ("scored", pa.int64()),
        ("errors", pa.int64()),
        ("seconds", pa.float64()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("changed", pa.bool_()),
        ("failure", pa.string()),
    ]
)


def score_files(
    spark: SparkSession,
    landing_root: Path,
    files: Sequence[str],
    model: Any,
    open_store: Callable[[], Any],
    *,
    run_id: str,
    timezone: str | None = None,
    now: datetime.datetime | None = None,
) -> dict[str, StreamBatch | Exception]:
    """Score landed files on the executors, each as `scoring.score_file` scores it.

    Args:
        spark: The Spark session.
        landing_root: The environment's landing folder (the executors read it by path).
        files: The files, relative to `landing_root`.
        model: A loaded `ServingModel` (pickled to the executors).
        open_store: Opens the online store (called once per task, on the executor; it is
            pickled with the function, so a picklable callable such as a `functools.partial`
            of `open_online_store`).
        run_id: The run (or worker) scoring them.
        timezone: The zone the source declares for times without an offset.
        now: Arrival time of error rows without a readable event time (default: each
            file's scoring time).

    Returns:
        Each file's `StreamBatch` (its `state` the file's size and modification time when
        read), or why it has none: a `FileChangedError` when the file changed while it was
        read, a `RuntimeError` naming the file and the error raised on the executor. One bad
        file does not fail the others.
    """
    from mlops_assets.serving.scoring import score_file
    from mlops_assets.serving.streaming import FileChangedError, file_state

    if not files:
        return {}
    root = Path(landing_root)
    names = list(dict.fromkeys(files))

    def batches(parts: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        store = None
        try:
            for part in parts:
                results = []
                for file in part.column("file").to_pylist():
                    path = root / file
                    try:
                        if store is None:
                            store = open_store()
                        before = file_state(path)
                        batch = score_file(
                            path, root, model, store, run_id=run_id, now=now, timezone=timezone
                        )
                        after = file_state(path)
                    except Exception as error:  # noqa: BLE001 - reported per file
                        results.append(_failed(file, f"{type(error).__name__}: {error}"))
                        continue
                    sink = io.BytesIO()
                    batch.rows.write_ipc(sink)
                    results.append(
                        {
                            "file": file,
                            "rows": sink.getvalue(),
                            "lines": batch.lines,
                            "scored": batch.scored,
                            "errors": batch.errors,
                            "seconds": batch.seconds,
                            "size": before[0],
                            "mtime_ns": before[1],
                            "changed": after != before,
                            "failure": None,
                        }
                    )
                yield pa.RecordBatch.from_pylist(results, schema=RESULT_SCHEMA)
        finally:
            close = getattr(store, "close", None)
            if close is not None:
                close()

    from pyspark.sql.pandas.types import from_arrow_schema

    parallelism = max(1, spark.sparkContext.defaultParallelism) if _has_context(spark) else 2
    frame = spark.createDataFrame([(name,) for name in names], "file string").repartition(
        min(len(names), parallelism)
    )
    scored = frame.mapInArrow(batches, from_arrow_schema(RESULT_SCHEMA)).toArrow()
    found: dict[str, StreamBatch | Exception] = {}
    for row in scored.to_pylist():
        file = row["file"]
        if row["failure"] is not None:
            found[file] = RuntimeError(f"scoring landed file {file} on Spark: {row['failure']}")
            continue
        if row["changed"]:
            found[file] = FileChangedError(
                f"landed file {file} changed while it was scored on Spark "
                f"({row['size']} bytes before): it is scored once it settles"
            )
            continue
        found[file] = StreamBatch(
            source=file,
            rows=pl.read_ipc(io.BytesIO(row["rows"])),
            lines=row["lines"],
            scored=row["scored"],
            errors=row["errors"],
            seconds=row["seconds"],
            state=(row["size"], row["mtime_ns"]),
        )
    missing = [name for name in names if name not in found]
    if missing:  # every name is one row of the frame: a lost one is a defect, said loudly
        raise RuntimeError(f"Spark returned no result for landed file(s) {missing}")
    return found


def _failed(file: str, message: str) -> dict[str, Any]:
    return {
        "file": file,
        "rows": None,
        "lines": None,
        "scored": None,
        "errors": None,
        "seconds": None,
        "size": None,
        "mtime_ns": None,
        "changed": None,
        "failure": message,
    }


def _has_context(spark: SparkSession) -> bool:
    # A Spark Connect session has no SparkContext.
    try:
        spark.sparkContext  # noqa: B018
    except Exception:  # noqa: BLE001 - pyspark raises its own error type through Connect
        return False
    return True
