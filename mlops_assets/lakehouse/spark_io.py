"""Delta table I/O on Spark (delta-spark): the same tables and write semantics as `delta_io`.

A partition write replaces exactly that partition in one commit (`replaceWhere` on the
partition columns); a keyed write is a Delta MERGE limited to the partition. The schema
policies are `delta_io`'s (`check_schema` is shared), timestamps are UTC microseconds (Spark's
`timestamp`; `timestamp_ntz` is refused like polars' naive timestamps), and commits carry the
write id and lineage in `userMetadata`, which `delta_io.read_lineage` reads too. Tables written
here are read by polars and delta-rs, and the other way round.

Tables on the object store are `s3://` URIs to the rest of the project and `s3a://` to Spark
(Hadoop's S3A connector, configured from the settings by `spark_session.spark_config`): every
function here takes either and maps it (`spark_uri`); results name the URI as given.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mlops_assets.lakehouse.delta_io import (
    LINEAGE_KEY,
    WRITE_ID_KEY,
    DuplicateKeyError,
    PartitionMismatchError,
    PartitionValue,
    SchemaChangeError,
    SchemaPolicy,
    WriteResult,
    _comparable,
    check_schema,
)
from mlops_assets.lakehouse.spark_delta import delta_tables, plain_strings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Commits of the last this many versions are searched for a write's own commit.
_HISTORY_DEPTH = 50


def spark_uri(uri: str) -> str:
    """The location Spark opens for a table: `s3://` and `s3n://` become `s3a://`."""
    text = str(uri)
    for scheme in ("s3://", "s3n://"):
        if text.startswith(scheme):
            return "s3a://" + text[len(scheme) :]
    return text


def table_exists(spark: SparkSession, uri: str) -> bool:
    """Tell whether a Delta table exists at `uri`."""
    DeltaTable = delta_tables(spark)  # delta-spark's, or Delta SQL on Spark Connect

    return DeltaTable.isDeltaTable(spark, spark_uri(uri))


def table_version(spark: SparkSession, uri: str) -> int | None:
    """Current Delta version of the table at `uri`, or None when there is no table."""
    DeltaTable = delta_tables(spark)  # delta-spark's, or Delta SQL on Spark Connect

    if not table_exists(spark, uri):
        return None
    return int(DeltaTable.forPath(spark, spark_uri(uri)).history(1).collect()[0]["version"])


def read_table(spark: SparkSession, uri: str, version: int | None = None) -> DataFrame:
    """The table at `uri` (at `version` when given) as a lazy Spark DataFrame."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(spark_uri(uri))


def read_partition(
    spark: SparkSession,
    uri: str,
    partition: Mapping[str, PartitionValue],
    columns: Sequence[str] | None = None,
) -> DataFrame:
    """One partition of a table; Delta prunes the other partitions' files."""
    from pyspark.sql import functions as F

    frame = read_table(spark, uri)
    for name, value in partition.items():
        frame = frame.filter(F.col(name) == F.lit(value))
    return frame.select(*columns) if columns is not None else frame


def arrow_schema(frame: DataFrame, table: str) -> pa.Schema:
    """The Arrow schema of a Spark frame as the lake stores it (UTC microsecond timestamps).

    Raises:
        SchemaChangeError: A column is a `timestamp_ntz` (the lake stores UTC instants).
    """
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import TimestampNTZType

    naive = [f.name for f in frame.schema.fields if isinstance(f.dataType, TimestampNTZType)]
    if naive:
        raise SchemaChangeError(
            f"table {table}: timestamp columns {', '.join(naive)} have no time zone "
            "(timestamp_ntz); cast them to timestamp (the lake stores UTC instants)"
        )
    return to_arrow_schema(frame.schema, timezone="UTC")


def _literal(value: PartitionValue) -> str:
    if isinstance(value, bool):
        raise ValueError("boolean partition values are not supported")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime.date):
        return f"DATE'{value.isoformat()}'"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def partition_predicate(partition: Mapping[str, PartitionValue], alias: str = "") -> str:
    """SQL predicate selecting exactly one partition, e.g. `landing_date = DATE'2026-01-01'`."""
    prefix = f"{alias}." if alias else ""
    return " AND ".join(f"{prefix}`{c}` = {_literal(v)}" for c, v in partition.items())


def _check_partition(data: DataFrame, partition: Mapping[str, PartitionValue], name: str) -> None:
    from pyspark.sql import functions as F

    for column in partition:
        if column not in data.columns:
            raise PartitionMismatchError(f"table {name}: data lacks partition column {column!r}")
    outside = data.filter(
        ~F.expr(" AND ".join(f"`{c}` <=> {_literal(v)}" for c, v in partition.items()))
    ).count()
    if outside:
        raise PartitionMismatchError(
            f"table {name}: {outside} rows lie outside partition "
            f"{', '.join(f'{c}={v!s}' for c, v in partition.items())}; a partition write "
            "carries only that partition's rows"
        )


def _conform(data: DataFrame, existing: pa.Schema, incoming: pa.Schema) -> DataFrame:
    """Columns the data lacks become typed nulls; table order first, new columns last."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import NullType

    existing_spark = _spark_types(data, existing)
    columns = []
    for field in existing:
        if field.name not in incoming.names:
            columns.append(F.lit(None).cast(existing_spark[field.name]).alias(field.name))
        elif isinstance(data.schema[field.name].dataType, NullType):
            columns.append(F.col(field.name).cast(existing_spark[field.name]).alias(field.name))
        else:
            columns.append(F.col(field.name))
    columns += [F.col(n) for n in incoming.names if n not in existing.names]
    return data.select(*columns)


def _spark_types(data: DataFrame, schema: pa.Schema) -> dict[str, Any]:
    from pyspark.sql.pandas.types import from_arrow_type

    return {field.name: from_arrow_type(field.type) for field in schema}


def _metadata(write_id: str, lineage: Mapping[str, Any] | None) -> str:
    payload = {WRITE_ID_KEY: write_id}
    if lineage is not None:
        payload[LINEAGE_KEY] = json.dumps(lineage, default=str)
    return json.dumps(payload)


def write_partition(
    spark: SparkSession,
    uri: str,
    data: DataFrame,
    partition: Mapping[str, PartitionValue],
    *,
    partition_by: Sequence[str] | None = None,
    policy: SchemaPolicy = SchemaPolicy.STRICT,
    table: str | None = None,
) -> WriteResult:
    """Replace exactly one partition of a Delta table with `data`, atomically, on Spark.

    One Delta commit (`replaceWhere` on the partition columns) removes the partition's files
    and adds the new ones; other partitions are untouched, and a write that fails leaves the
    table at its previous version. Same arguments and errors as `delta_io.write_partition`.

    Raises:
        PartitionMismatchError: Some rows do not belong to `partition`.
        SchemaChangeError: The data's schema breaks the policy.
    """
    DeltaTable = delta_tables(spark)  # delta-spark's, or Delta SQL on Spark Connect

    uri = str(uri)
    name = table or uri
    data = plain_strings(data)  # Delta's plain string type, also through Spark Connect
    partition_by = list(partition_by or partition.keys())
    _check_partition(data, partition, name)
    incoming = arrow_schema(data, name)
    write_id = str(uuid.uuid4())
    added: list[str] = []
    writer_data = data
    exists = table_exists(spark, uri)
    if exists:
        target = DeltaTable.forPath(spark, spark_uri(uri))
        detail = target.detail().select("partitionColumns").collect()[0]
        if list(detail["partitionColumns"]) != partition_by:
            raise SchemaChangeError(
                f"table {name}: partitioned by {list(detail['partitionColumns'])}, "
                f"not {partition_by}"
            )
        existing = arrow_schema(target.toDF(), name)
        added, _ = check_schema(existing, incoming, policy, name)
        writer_data = _conform(data, existing, incoming)
    writer = (
        writer_data.write.format("delta")
        .option("userMetadata", _metadata(write_id, None))
        .partitionBy(*partition_by)
    )
    if exists:
        writer = writer.mode("overwrite").option("replaceWhere", partition_predicate(partition))
        if added:
            writer = writer.option("mergeSchema", "true")
    else:
        writer = writer.mode("append")
    writer.save(spark_uri(uri))
    return describe_write(spark, uri, write_id, partition=partition, added=added)


def merge_partition(
    spark: SparkSession,
    uri: str,
    data: DataFrame,
    partition: Mapping[str, PartitionValue],
    *,
    keys: Sequence[str],
    table: str | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> WriteResult:
    """Merge one partition's rows into a keyed table: update, insert, delete what is gone.

    A Delta MERGE on `keys` limited to the partition, in one commit, as
    `delta_io.merge_partition` does; the schema policy is strict.

    Raises:
        DuplicateKeyError: Two rows share a key.
        PartitionMismatchError: Some rows do not belong to the partition.
        SchemaChangeError: The data's schema differs from the table's.
    """
    DeltaTable = delta_tables(spark)  # delta-spark's, or Delta SQL on Spark Connect

    uri = str(uri)
    name = table or uri
    data = plain_strings(data)  # Delta's plain string type, also through Spark Connect
    _check_partition(data, partition, name)
    rows = data.count()
    repeated = rows - data.select(*keys).distinct().count()
    if repeated:
        raise DuplicateKeyError(f"table {name}: {repeated} rows repeat a key of {list(keys)}")
    incoming = arrow_schema(data, name)
    write_id = str(uuid.uuid4())
    metadata = _metadata(write_id, lineage)
    if not table_exists(spark, uri):
        (
            data.write.format("delta")
            .option("userMetadata", metadata)
            .partitionBy(*partition)
            .mode("append")
            .save(spark_uri(uri))
        )
        return describe_write(spark, uri, write_id, partition=partition)
    target = DeltaTable.forPath(spark, spark_uri(uri))
    check_schema(arrow_schema(target.toDF(), name), incoming, SchemaPolicy.STRICT, name)
    in_partition = partition_predicate(partition, "t")
    on_keys = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    # MERGE takes no write options: the commit's metadata comes from the session, set for
    # this one command.
    setting = "spark.databricks.delta.commitInfo.userMetadata"
    spark.conf.set(setting, metadata)
    try:
        (
            target.alias("t")
            .merge(data.alias("s"), f"{in_partition} AND {on_keys}")
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .whenNotMatchedBySourceDelete(condition=in_partition)
            .execute()
        )
    finally:
        spark.conf.unset(setting)
    return describe_write(spark, uri, write_id, partition=partition)


def describe_write(
    spark: SparkSession,
    uri: str,
    write_id: str,
    *,
    partition: Mapping[str, PartitionValue],
    added: Sequence[str] = (),
) -> WriteResult:
    """Version, rows and schema of the table as this write (found by its id) left it."""
    DeltaTable = delta_tables(spark)  # delta-spark's, or Delta SQL on Spark Connect
    from pyspark.sql import functions as F

    history = (
        DeltaTable.forPath(spark, spark_uri(uri))
        .history(_HISTORY_DEPTH)
        .filter(F.col("userMetadata").contains(write_id))
        .select("version")
        .collect()
    )
    # Delta on Spark makes no commit for a write that neither adds nor removes a file (an
    # empty day over an empty partition): the table is then as it was, at its latest version.
    version = int(history[0]["version"]) if history else table_version(spark, uri)
    # The latest snapshot is the one the write just made (Spark keeps it, where rebuilding an
    # older version from the log costs seconds); a concurrent writer's later commit can add
    # its rows to `table_rows`, never to `rows_written`, which counts this partition.
    snapshot = read_table(spark, uri)
    # After a partition write or merge, the partition holds exactly the rows written.
    in_partition = F.expr(partition_predicate(partition)) if partition else F.lit(True)
    counts = snapshot.select(
        F.count(F.lit(1)).alias("table"), F.count_if(in_partition).alias("written")
    ).collect()[0]
    if not history and counts["written"]:
        raise RuntimeError(f"table {uri}: the commit of write {write_id} is not in its history")
    schema = arrow_schema(snapshot, uri)
    return WriteResult(
        uri=uri,
        version=version,
        rows_written=int(counts["written"]),
        table_rows=int(counts["table"]),
        schema={f.name: _comparable(f.type) for f in schema},
        partition={k: str(v) for k, v in partition.items()},
        added_columns=tuple(added),
    )
