"""Bronze on Spark with the landing files read by the executors (`lakehouse.spark_landing`).

`defs.bronze.ingest_day`'s work when the bronze group runs on Spark: the driver lists the
day's files, the executors read them (one task per file, `landing.read_landing_file`, so the
records, line numbers and reasons are the polars path's), and splitting, rejecting and
shaping run on Spark with the same portable transforms. Only the file names, each file's
header and its line count pass through the driver.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import narwhals as nw
import polars as pl

from mlops_assets.lakehouse.landing import day_files, day_folder
from mlops_assets.lakehouse.store import Frame, SparkStore
from mlops_assets.transforms.bronze import (
    INGESTED_AT,
    LINE_NUMBER,
    RAW,
    REASON,
    SOURCE_FILE,
    rescued_names,
    split_records,
)
from mlops_assets.transforms.quarantine import to_quarantine

if TYPE_CHECKING:
    from mlops_assets.defs.bronze import Ingested


def spark_ingest_day(
    store: SparkStore,
    landing_root: Path,
    source: str,
    day: datetime.date,
    ingested_at: datetime.datetime,
) -> Ingested:
    """One source's landing day as bronze records and quarantine rows, read on the executors.

    Raises:
        pyspark.errors.PythonException: A file could not be read (the task's error names it,
            e.g. a file that changed while it was read).
    """
    from pyspark.sql import functions as F

    from mlops_assets.defs.bronze import CONTRACTS, Ingested, bronze_schema
    from mlops_assets.lakehouse.spark_landing import read_landing_files

    contract = CONTRACTS[source]
    files = day_files(landing_root, source, day)
    landings = read_landing_files(
        store.session, files, landing_root, ingested_at, required=contract.required
    )
    records: list[Frame] = []
    rejects: list[Frame] = []
    rescued: dict[str, tuple[str, ...]] = {}
    lines = 0
    for landing in landings:
        lines += landing.count
        if landing.header_problem:
            # A file the project cannot read goes to quarantine whole, with the reason.
            rejects.append(
                nw.from_native(
                    landing.lines.select(
                        SOURCE_FILE,
                        LINE_NUMBER,
                        INGESTED_AT,
                        RAW,
                        F.lit(landing.header_problem).alias(REASON),
                    )
                )
            )
            continue
        extras = tuple(rescued_names(landing.header, contract.columns).values())
        if extras:
            rescued[landing.relative] = extras
        good, bad = split_records(nw.from_native(landing.lines), landing.header, contract.columns)
        records.append(good)
        rejects.append(bad)
    empty_rejects = {
        SOURCE_FILE: pl.String,
        LINE_NUMBER: pl.Int64,
        RAW: pl.String,
        REASON: pl.String,
    }
    bronze = (
        store.concat(records) if records else store.empty(bronze_schema(source))
    ).with_columns(nw.lit(day).alias("landing_date"))
    quarantine = to_quarantine(
        store.concat(rejects) if rejects else store.empty(empty_rejects),
        stage="bronze",
        landing_date=day,
        quarantined_at=ingested_at,
    )
    return Ingested(
        bronze, quarantine, len(files), lines, day_folder(landing_root, source, day), rescued
    )
