"""Batch scoring on Spark: the champion applied per partition on the executors.

The day's events with their point-in-time features (`features.spark_point_in_time`) are
scored by `mapInArrow`: each Arrow batch becomes a polars frame and goes through
`scoring.batch_predictions` (the champion's compiled form, or its pyfunc when that refuses,
exactly as the polars batch path scores) and `inference_log.prepare_frame`, so every row has
the inference log's columns and types and the score the polars path gives the same event, bit
for bit. The model travels to the executors with the function (pickled once per task); it is
never loaded there from the registry. The rows are appended to the inference log by Delta on
Spark, one commit partitioned by `day` like the log's polars appends.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from mlops_assets.lakehouse.delta_io import SchemaPolicy, WriteResult, check_schema
from mlops_assets.serving.inference_log import (
    INFERENCE_LOG,
    PARTITION_COLUMN,
    inference_schema,
    prepare_frame,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def batch_predictions(
    model: Any,
    features: DataFrame,
    *,
    mode: str,
    run_id: str,
    logged_at: datetime.datetime | None = None,
) -> DataFrame:
    """Score events carrying every feature column, per partition; rows in the log's shape.

    Args:
        model: A loaded `ServingModel` (it is pickled to the executors).
        features: Events with the spec's request fields and feature columns (Spark frame).
        mode: `batch` or `stream`.
        run_id: The run scoring them (part of each request id).
        logged_at: The rows' `logged_at` (one instant for the whole batch); now by default.

    Returns:
        A lazy Spark frame of `ok` rows with the inference log's columns in its order;
        `latency_ms` is the vectorised call's time per row of each partition's batch.

    Raises:
        ValueError: `features` lack a request field or feature column the spec needs.
    """
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    from mlops_assets.serving.scoring import batch_predictions as score

    spec = model.spec
    needed = [*spec.request_fields, *spec.feature_columns]
    missing = [c for c in dict.fromkeys(needed) if c not in features.columns]
    if missing:
        raise ValueError(
            f"features to score lack column(s) {missing}; they have {features.columns}"
        )
    schema = inference_schema(spec)
    stamp = logged_at or datetime.datetime.now(datetime.UTC)
    zone = features.sparkSession.conf.get("spark.sql.session.timeZone")
    source = to_arrow_schema(features.schema, timezone=zone)

    def rows(frame: pl.DataFrame) -> pl.DataFrame:
        scored = score(model, frame, mode=mode, run_id=run_id)
        return prepare_frame(scored.with_columns(pl.lit(stamp).alias("logged_at")), schema)

    # The output's types: the same functions on an empty frame of the input's schema.
    empty = pl.from_arrow(pa.Table.from_batches([], source))
    target = to_arrow_schema(from_arrow_schema(rows(empty).to_arrow().schema), timezone=zone)

    def batches(parts: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for part in parts:
            if part.num_rows:
                frame = pl.from_arrow(pa.Table.from_batches([part]))
                yield from rows(frame).to_arrow().cast(target).to_batches()

    return features.mapInArrow(batches, from_arrow_schema(target))


def append_to_log(spark: SparkSession, uri: str, rows: DataFrame) -> WriteResult:
    """Append scored rows to the inference log in one Delta commit, partitioned by `day`.

    The log's schema policy is additive, as for its polars appends: new feature columns are
    added, columns the rows lack are written as nulls, a changed type is refused. The table is
    created by the first append.

    Args:
        spark: The Spark session.
        uri: The inference log's location.
        rows: Rows in the log's shape (`batch_predictions`).

    Returns:
        The write's result: its Delta version, the rows appended and the table's rows.

    Raises:
        SchemaChangeError: A column's type differs from the log's.
    """
    from pyspark.sql import functions as F

    from mlops_assets.lakehouse import spark_io
    from mlops_assets.lakehouse.spark_delta import delta_tables, plain_strings

    DeltaTable = delta_tables(spark)  # noqa: N806 (delta-spark's class, or its SQL twin)

    name = str(INFERENCE_LOG)
    rows = plain_strings(rows)  # Delta's plain string type, also through Spark Connect
    incoming = spark_io.arrow_schema(rows, name)
    added: list[str] = []
    data = rows
    exists = spark_io.table_exists(spark, uri)
    if exists:
        existing = spark_io.arrow_schema(
            DeltaTable.forPath(spark, spark_io.spark_uri(uri)).toDF(), name
        )
        added, _ = check_schema(existing, incoming, SchemaPolicy.ADDITIVE, name)
        data = spark_io._conform(rows, existing, incoming)
    write_id = str(uuid.uuid4())
    writer = (
        data.write.format("delta")
        .mode("append")
        .option("userMetadata", spark_io._metadata(write_id, None))
        .partitionBy(PARTITION_COLUMN)
    )
    if added:
        writer = writer.option("mergeSchema", "true")
    writer.save(spark_io.spark_uri(uri))
    version = spark_io.table_version(spark, uri)
    history = (
        DeltaTable.forPath(spark, spark_io.spark_uri(uri))
        .history(50)
        .filter(F.col("userMetadata").contains(write_id))
        .select("version", "operationMetrics")
        .collect()
    )
    if history:
        version = int(history[0]["version"])
        metrics = history[0]["operationMetrics"] or {}
        appended = int(metrics.get("numOutputRows", 0))
    else:
        appended = 0  # nothing to write: Delta on Spark makes no commit
    table_rows = spark_io.read_table(spark, uri).count()
    final = spark_io.arrow_schema(spark_io.read_table(spark, uri), name)
    return WriteResult(
        uri=uri,
        version=version if version is not None else -1,
        rows_written=appended,
        table_rows=int(table_rows),
        schema={f.name: spark_io._comparable(f.type) for f in final},
        partition={},
        added_columns=tuple(added),
    )
