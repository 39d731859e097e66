"""Landing files read by Spark's executors: `landing.read_landing_file` run where the data is.

The driver lists the day's files (names only); one Spark task per file reads it with the very
function the polars path uses (`read_landing_file`: byte-order mark, CRLF, gzip, RFC 4180
quoting, UTF-8 validity, line numbers, the reasons of an unusable file), so the records and
their problems are the same by construction, and their rows reach the driver never. Each
file's header, its problem and its line count come back as one small row per file.

The executors need the project's Python (Spark's Python workers run the project's
interpreter, `spark_session.spark_config`) and must see the landing files at the same path as
the driver: a shared or network file system on a cluster.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from mlops_assets.transforms.bronze import (
    FIELDS,
    INGESTED_AT,
    LINE_NUMBER,
    PROBLEM,
    RAW,
    SOURCE_FILE,
    UTF8,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# One row per file carries its header and counts in this column (null on record rows).
_INFO = "__landing_file"
LINES_SCHEMA = pa.schema(
    [
        pa.field(RAW, pa.string()),
        pa.field(UTF8, pa.bool_()),
        pa.field(SOURCE_FILE, pa.string()),
        pa.field(LINE_NUMBER, pa.int64()),
        pa.field(INGESTED_AT, pa.timestamp("us", "UTC")),
        pa.field(FIELDS, pa.list_(pa.string())),
        pa.field(PROBLEM, pa.string()),
        pa.field(_INFO, pa.string()),
    ]
)


@dataclass(frozen=True)
class SparkLandingFile:
    """One landing file as the executors read it; `lines` is a Spark frame of its records.

    Attributes:
        relative: Its path relative to the landing root.
        header: Field names from the first record (empty when the file is unusable).
        header_problem: Why the whole file is unusable, or None.
        lines: Its records, with the columns `landing.LandingFile.lines` has for this file.
        count: Records read (an unusable file: its physical lines).
    """

    relative: str
    header: tuple[str, ...]
    header_problem: str | None
    lines: DataFrame
    count: int


def _reader(landing_root: str, ingested_at: datetime.datetime, required: Sequence[str]):
    """The function each task runs on its batch of file paths (picklable: plain arguments)."""

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import polars as pl

        from mlops_assets.lakehouse.landing import read_landing_file

        for batch in batches:
            for path in batch.column("path").to_pylist():
                landing = read_landing_file(
                    Path(path), Path(landing_root), ingested_at, required=required
                )
                lines = landing.lines
                present = [c for c in (FIELDS, PROBLEM) if c in lines.columns]
                info = {
                    "relative": landing.relative,
                    "header": list(landing.header),
                    "header_problem": landing.header_problem,
                    "count": lines.height,
                    "columns": lines.columns,
                    "optional": present,
                }
                rows = lines.with_columns(
                    *[
                        pl.lit(None, dtype=pl.List(pl.String) if c == FIELDS else pl.String).alias(
                            c
                        )
                        for c in (FIELDS, PROBLEM)
                        if c not in lines.columns
                    ],
                    pl.lit(None, dtype=pl.String).alias(_INFO),
                ).select(LINES_SCHEMA.names)
                marker = pl.DataFrame(
                    {
                        SOURCE_FILE: [landing.relative],
                        LINE_NUMBER: [-1],
                        _INFO: [json.dumps(info)],
                    }
                )
                frame = pl.concat([rows, marker], how="diagonal_relaxed").select(LINES_SCHEMA.names)
                yield from frame.to_arrow().cast(LINES_SCHEMA).to_batches()

    return read


def read_landing_files(
    spark: SparkSession,
    paths: Sequence[Path],
    landing_root: Path,
    ingested_at: datetime.datetime,
    *,
    required: Sequence[str] = (),
) -> list[SparkLandingFile]:
    """Read landing files on the executors, one task per file, in the order of `paths`.

    The records are read once (a local checkpoint keeps them on the executors); each file's
    `lines` is a lazy frame over them.

    Args:
        spark: The session.
        paths: The files, as the driver lists them.
        landing_root: Root the recorded source paths are relative to.
        ingested_at: Ingestion time stamped on every record.
        required: Columns the header must name (the source's contract).

    Returns:
        One entry per file, in the order of `paths`.

    Raises:
        pyspark.errors.PythonException: A task failed; its message carries the reading
            error (e.g. `LandingFileChangedError`: a file changed while it was read).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    if not paths:
        return []
    listed = spark.createDataFrame([(str(p),) for p in paths], "path string").repartition(
        len(paths)
    )
    reader = _reader(str(landing_root), ingested_at, tuple(required))
    read = listed.mapInArrow(reader, from_arrow_schema(LINES_SCHEMA)).localCheckpoint(eager=True)
    infos = {
        info["relative"]: info
        for info in (
            json.loads(row[0])
            for row in read.filter(F.col(_INFO).isNotNull()).select(_INFO).collect()
        )
    }
    records = read.filter(F.col(_INFO).isNull())
    files = []
    for path in paths:
        relative = path.relative_to(landing_root).as_posix()
        info = infos[relative]
        lines = records.filter(F.col(SOURCE_FILE) == F.lit(relative)).select(*info["columns"])
        files.append(
            SparkLandingFile(
                relative=relative,
                header=tuple(info["header"]),
                header_problem=info["header_problem"],
                lines=lines,
                count=int(info["count"]),
            )
        )
    return files
