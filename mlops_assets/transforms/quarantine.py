"""Quarantine records: the one shape every rejected landing line or record takes."""

from __future__ import annotations

import datetime

import narwhals as nw
from narwhals.typing import FrameT

from mlops_assets.transforms import SPARK_LIKE
from mlops_assets.transforms.bronze import LINE_NUMBER, RAW, REASON, SOURCE_FILE

QUARANTINE_COLUMNS = (
    "landing_date",
    "stage",
    SOURCE_FILE,
    LINE_NUMBER,
    RAW,
    REASON,
    "column",
    "quarantined_at",
)


def to_quarantine(
    rejects: FrameT,
    *,
    stage: str,
    landing_date: datetime.date,
    quarantined_at: datetime.datetime,
    raw_fields: list[str] | None = None,
) -> FrameT:
    """Shape rejected lines or records as quarantine rows.

    Args:
        rejects: Rejected rows with `_source_file`, `_line_number`, `reason`, and either a
            `raw` text column or the string fields listed in `raw_fields`.
        stage: Where the row was rejected: `bronze` (unparseable line) or `silver` (invalid
            record).
        landing_date: The landing day (the quarantine partition).
        quarantined_at: When the rejection happened (UTC).
        raw_fields: Fields to keep as the raw text, as a JSON object, when `raw` is absent.

    Returns:
        Rows with exactly `QUARANTINE_COLUMNS`.
    """
    if raw_fields is not None:
        # The record's fields as one JSON object (absent fields as null), encoded by the
        # engine so that any character in a value is escaped properly.
        import polars as pl

        native = rejects.to_native()
        if isinstance(native, pl.DataFrame | pl.LazyFrame):
            rejects = nw.from_native(
                native.with_columns(pl.struct(raw_fields).struct.json_encode().alias(RAW))
            )
        elif rejects.implementation in SPARK_LIKE:
            # Spark's JSON encoder, keeping null fields as polars' does.
            from pyspark.sql import functions as F

            rejects = nw.from_native(
                native.withColumn(
                    RAW,
                    F.to_json(F.struct(*raw_fields), {"ignoreNullFields": "false"}),
                )
            )
        else:
            raise NotImplementedError(
                f"quarantine rows are built from polars or Spark frames; got "
                f"{rejects.implementation}"
            )
    if "column" not in rejects.columns:
        rejects = rejects.with_columns(nw.lit(None, dtype=nw.String).alias("column"))
    return rejects.select(
        nw.lit(landing_date).alias("landing_date"),
        nw.lit(stage).alias("stage"),
        nw.col(SOURCE_FILE).cast(nw.String),
        nw.col(LINE_NUMBER).cast(nw.Int64),
        nw.col(RAW).cast(nw.String),
        nw.col(REASON).cast(nw.String),
        nw.col("column").cast(nw.String),
        nw.lit(quarantined_at).cast(nw.Datetime("us", "UTC")).alias("quarantined_at"),
    )
