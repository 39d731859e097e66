"""Delta table handles for classic Spark sessions and Spark Connect sessions alike.

delta-spark's `DeltaTable` runs in the driver's JVM on a classic session; on a Spark Connect
session it needs Delta Connect's server plugins, which the lake's servers do not carry (the
Delta jars and SQL extension are enough for everything else). The handful of `DeltaTable`
calls the lake makes (`isDeltaTable`, `forPath`, `history`, `detail`, `toDF` and one MERGE
shape) are plain Delta SQL on a Connect session, which the server's Delta SQL extension runs:
`delta_tables(spark)` gives the class to use for a session.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


# The alias a merge's condition gives its source rows (`spark_io.merge_partition`'s `s`).
SOURCE_ALIAS = "s"


def is_connect(spark: Any) -> bool:
    """Whether `spark` is a Spark Connect session (no JVM of its own on this side)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def delta_tables(spark: SparkSession) -> Any:
    """The `DeltaTable` API for `spark`: delta-spark's, or Delta SQL on Spark Connect."""
    if is_connect(spark):
        return SqlDeltaTable
    from delta.tables import DeltaTable

    return DeltaTable


def _quoted(path: str) -> str:
    return "delta.`" + path.replace("`", "``") + "`"


class SqlDeltaTable:
    """The part of delta-spark's `DeltaTable` the lake uses, as Delta SQL statements."""

    def __init__(self, spark: SparkSession, path: str, alias: str | None = None) -> None:
        self._spark = spark
        self._path = path
        self._alias = alias

    @classmethod
    def isDeltaTable(cls, spark: SparkSession, path: str) -> bool:  # noqa: N802 (delta's name)
        """Whether a Delta table exists at `path`."""
        from pyspark.errors import AnalysisException

        try:
            detail = spark.sql(f"DESCRIBE DETAIL {_quoted(path)}").select("format").collect()
        except AnalysisException:
            return False
        return bool(detail) and detail[0]["format"] == "delta"

    @classmethod
    def forPath(cls, spark: SparkSession, path: str) -> SqlDeltaTable:  # noqa: N802
        """The table at `path`."""
        return cls(spark, path)

    def history(self, limit: int | None = None) -> DataFrame:
        """The table's commits, latest first (`DESCRIBE HISTORY`)."""
        suffix = f" LIMIT {int(limit)}" if limit else ""
        return self._spark.sql(f"DESCRIBE HISTORY {_quoted(self._path)}{suffix}")

    def detail(self) -> DataFrame:
        """The table's detail row (`DESCRIBE DETAIL`): partition columns, files, ..."""
        return self._spark.sql(f"DESCRIBE DETAIL {_quoted(self._path)}")

    def toDF(self) -> DataFrame:  # noqa: N802
        """The table's rows, lazily."""
        return self._spark.read.format("delta").load(self._path)

    def alias(self, name: str) -> SqlDeltaTable:
        """The table under an alias, for a merge condition."""
        return SqlDeltaTable(self._spark, self._path, name)

    def merge(self, source: DataFrame, condition: str) -> _SqlMerge:
        """A MERGE of `source` (aliased as in `condition`) into the table."""
        return _SqlMerge(self, source, condition)


class _SqlMerge:
    """`MERGE INTO` built as delta-spark's merge builder is, run by `execute`."""

    def __init__(self, target: SqlDeltaTable, source: DataFrame, condition: str) -> None:
        self._target = target
        self._source = source
        self._condition = condition
        self._clauses: list[str] = []

    def whenMatchedUpdateAll(self) -> _SqlMerge:  # noqa: N802
        self._clauses.append("WHEN MATCHED THEN UPDATE SET *")
        return self

    def whenNotMatchedInsertAll(self) -> _SqlMerge:  # noqa: N802
        self._clauses.append("WHEN NOT MATCHED THEN INSERT *")
        return self

    def whenNotMatchedBySourceDelete(self, condition: str | None = None) -> _SqlMerge:  # noqa: N802
        guard = f" AND ({condition})" if condition else ""
        self._clauses.append(f"WHEN NOT MATCHED BY SOURCE{guard} THEN DELETE")
        return self

    def execute(self) -> None:
        """Run the MERGE (one Delta commit)."""
        view = f"merge_source_{uuid.uuid4().hex}"
        self._source.createOrReplaceTempView(view)
        spark = self._target._spark
        try:
            spark.sql(
                f"MERGE INTO {_quoted(self._target._path)} AS {self._target._alias or 't'} "
                f"USING {view} AS {SOURCE_ALIAS} ON {self._condition} " + " ".join(self._clauses)
            ).collect()
        finally:
            spark.catalog.dropTempView(view)


def plain_strings(frame: DataFrame) -> DataFrame:
    """On Spark Connect, string columns recast to the plain `string` type before a write.

    A cast to `StringType()` sent by a Connect client names its collation, and Delta then
    stores the column as `string collate UTF8_BINARY`, a type delta-rs cannot read; a cast to
    the SQL type `string` keeps the plain type every engine reads. Classic sessions write the
    plain type already and pass through.
    """
    if not is_connect(frame.sparkSession):
        return frame
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    return frame.select(
        *[
            (
                F.col(f"`{f.name}`").cast("string").alias(f.name)
                if isinstance(f.dataType, StringType)
                else F.col(f"`{f.name}`")
            )
            for f in frame.schema.fields
        ]
    )
