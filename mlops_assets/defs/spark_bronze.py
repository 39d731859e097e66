"""Bronze on Spark with the landing files read by the executors (`lakehouse.spark_landing`).

`defs.bronze.ingest_day`'s reading when the bronze group runs on Spark: the driver lists the
day's files, the executors read them (one task per file, `landing.read_landing_file`, so the
records, line numbers and reasons are the polars path's), and `ingest_day` splits, rejects and
shapes them on Spark with the same code and portable transforms as on polars. Only the file
names, each file's header and its line count pass through the driver.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import narwhals as nw

from mlops_assets.lakehouse.store import Frame, SparkStore

if TYPE_CHECKING:
    from mlops_assets.lakehouse.spark_landing import SparkLandingFile


def spark_landings(
    store: SparkStore,
    files: Sequence[Path],
    landing_root: Path,
    ingested_at: datetime.datetime,
    required: Sequence[str],
) -> list[tuple[SparkLandingFile, int, Frame]]:
    """The day's landing files read on the executors, for `defs.bronze.ingest_day`.

    Args:
        store: The Spark store.
        files: The day's files, as the driver lists them.
        landing_root: Root the recorded source paths are relative to.
        ingested_at: Ingestion time stamped on every record.
        required: Columns the header must name (the source's contract).

    Returns:
        Per file, in order: the file as read, its records read, and its records as a Spark
        frame.

    Raises:
        pyspark.errors.PythonException: A file could not be read (the task's error names it,
            e.g. a file that changed while it was read).
    """
    from mlops_assets.lakehouse.spark_landing import read_landing_files

    landings = read_landing_files(
        store.session, files, landing_root, ingested_at, required=required
    )
    return [(landing, landing.count, nw.from_native(landing.lines)) for landing in landings]
