"""One table store: what assets do with Delta tables, written once for delta-rs and for Spark.

Assets read a table or a partition as a narwhals frame, hand it to the domain's transforms
(which are narwhals, with engine-specific fast paths inside the transforms), and write the
result back through the store: replace a partition, merge a partition on keys, append, or
overwrite. Small results (counts, figures, reasons) come back to the driver as polars frames
with `to_polars`. The engine is chosen once, when the lakehouse resource hands out the store
of an asset group, so an asset body never branches on it.

Frames:
- `DeltaRsStore` works on polars: a partition is read into memory (`nw.DataFrame`), a table
  is scanned lazily (`nw.LazyFrame`); writes go through `delta_io` (delta-rs).
- `SparkStore` works on Spark: every frame is a lazy `nw.LazyFrame` over a Spark DataFrame;
  writes go through `spark_io` (delta-spark).

Both stores resolve tables through the catalog, so every write lands in the active
environment and every read is checked against the read policy.
"""

from __future__ import annotations

import contextlib
import datetime
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import narwhals as nw
import polars as pl
from typing_extensions import override

from mlops_assets.lakehouse import delta_io
from mlops_assets.lakehouse.catalog import Catalog, TableRef
from mlops_assets.lakehouse.delta_io import PartitionValue, SchemaPolicy, WriteResult

Frame = nw.DataFrame[Any] | nw.LazyFrame[Any]


class TableMissingError(LookupError):
    """A table an asset reads does not exist yet."""


class TableStore(ABC):
    """Delta tables of one environment, on one engine.

    Attributes:
        catalog: Table locations and the read policy of the active environment.
        storage_options: Object-store options of the lake (empty on a local disk).
    """

    #: Engine name, as the settings spell it (`polars`, `spark`).
    engine: str

    def __init__(self, catalog: Catalog, storage_options: Mapping[str, str] | None = None):
        self.catalog = catalog
        self.storage_options = dict(storage_options or {})

    # Locations ---------------------------------------------------------------------------

    def uri(self, table: TableRef, env: str | None = None) -> str:
        """Location to read `table` from (`env`'s when the read policy allows it)."""
        return self.catalog.uri_for_read(table, env)

    def write_uri(self, table: TableRef) -> str:
        """Location to write `table`: always in the active environment."""
        return self.catalog.uri_for_write(table)

    # Reads -------------------------------------------------------------------------------

    @abstractmethod
    def exists(self, table: TableRef, env: str | None = None) -> bool:
        """Tell whether the table exists."""

    @abstractmethod
    def version(self, table: TableRef, env: str | None = None) -> int | None:
        """The table's current Delta version, None when it does not exist."""

    @abstractmethod
    def scan(
        self, table: TableRef, *, version: int | None = None, env: str | None = None
    ) -> nw.LazyFrame[Any]:
        """The whole table (at `version`) as a lazy frame; filters prune files by statistics.

        Raises:
            TableMissingError: The table does not exist.
        """

    @abstractmethod
    def read_partition(
        self,
        table: TableRef,
        partition: Mapping[str, PartitionValue],
        columns: Sequence[str] | None = None,
        env: str | None = None,
    ) -> Frame:
        """One partition of a table, as the frame the engine computes on.

        Raises:
            TableMissingError: The table does not exist.
        """

    def read_window(
        self,
        table: TableRef,
        column: str,
        start: datetime.date,
        end: datetime.date,
        columns: Sequence[str],
    ) -> tuple[Frame, int]:
        """Rows with `column` in `[start, end]` at one pinned version, and that version.

        Raises:
            TableMissingError: The table does not exist.
        """
        version = self.version(table)
        if version is None:
            raise TableMissingError(f"{table} does not exist yet: materialize it first")
        frame = (
            self.scan(table, version=version)
            .filter(nw.col(column) >= start, nw.col(column) <= end)
            .select(*columns)
        )
        return self.materialize(frame), version

    # Frames on the engine ----------------------------------------------------------------

    @abstractmethod
    def from_polars(self, data: pl.DataFrame) -> Frame:
        """A driver-side polars frame on the store's engine."""

    def empty(self, schema: Mapping[str, pl.DataType | type[pl.DataType]]) -> Frame:
        """An empty frame with `schema` (polars types) on the store's engine."""
        return self.from_polars(pl.DataFrame(schema=dict(schema)))

    @abstractmethod
    def materialize(self, frame: Frame) -> Frame:
        """The frame the engine computes on: in memory on polars, lazy on Spark."""

    @abstractmethod
    def concat(self, frames: Sequence[Frame]) -> Frame:
        """Frames stacked by column name; a column missing from a frame is null there."""

    def to_polars(self, frame: Frame) -> pl.DataFrame:
        """A small result (figures, counts, reasons) on the driver, as a polars frame.

        Spark hands out naive timestamps in the session's clock, which is UTC: they come back
        as UTC instants, as on polars.
        """
        if isinstance(frame, nw.LazyFrame):
            data = frame.collect(backend=nw.Implementation.POLARS).to_native()
        else:
            data = frame.to_native()
            if not isinstance(data, pl.DataFrame):
                data = pl.from_arrow(frame.to_arrow())
        naive = [
            name
            for name, dtype in data.schema.items()
            if isinstance(dtype, pl.Datetime) and dtype.time_zone is None
        ]
        return data.with_columns(pl.col(naive).dt.replace_time_zone("UTC")) if naive else data

    def lazy(self, frame: Frame) -> nw.LazyFrame[Any]:
        """The frame as a lazy frame, to combine with scans."""
        return frame.lazy() if isinstance(frame, nw.DataFrame) else frame

    def read_written(self, result: WriteResult) -> nw.LazyFrame[Any]:
        """The partition a write replaced or merged, read back from the table as of the write.

        On Spark the latest snapshot is the write's (one writer of a table at a time): Spark
        keeps the snapshot of a table it wrote, and rebuilding a given version from the log
        would cost seconds per read.
        """
        frame = self._read_as_of(result)
        for column, value in _partition_values(result).items():
            frame = frame.filter(nw.col(column) == value)
        return frame

    @abstractmethod
    def _read_as_of(self, result: WriteResult) -> nw.LazyFrame[Any]:
        """The written table as of a write."""

    def count(self, frame: Frame) -> int:
        """Rows of a frame."""
        return int(self.to_polars(frame.select(nw.len())).item())

    @contextlib.contextmanager
    def kept(self, frame: Frame) -> Iterator[Frame]:
        """The frame, kept in memory while the block reads it more than once."""
        yield frame

    @abstractmethod
    def written(self, frame: Frame, result: WriteResult) -> Frame:
        """The rows a write just stored, the cheapest way to read them again.

        On polars the frame in memory; on Spark the written partition of the table (the
        frame's plan would be computed a second time).
        """

    # Writes ------------------------------------------------------------------------------

    @abstractmethod
    def replace_partition(
        self,
        table: TableRef,
        data: Frame,
        partition: Mapping[str, PartitionValue],
        *,
        policy: SchemaPolicy = SchemaPolicy.STRICT,
    ) -> WriteResult:
        """Replace exactly one partition of `table` with `data`, in one commit."""

    @abstractmethod
    def merge_partition(
        self,
        table: TableRef,
        data: Frame,
        partition: Mapping[str, PartitionValue],
        *,
        keys: Sequence[str],
        lineage: Mapping[str, Any] | None = None,
    ) -> WriteResult:
        """Merge one partition's rows on `keys` (update, insert, delete what is gone)."""

    @abstractmethod
    def overwrite(
        self, table: TableRef, data: Frame, *, lineage: Mapping[str, Any] | None = None
    ) -> WriteResult:
        """Replace a whole unpartitioned table in one commit (strict schema policy)."""

    @abstractmethod
    def append(
        self,
        table: TableRef,
        data: Frame,
        *,
        partition_by: Sequence[str] = (),
        policy: SchemaPolicy = SchemaPolicy.ADDITIVE,
    ) -> WriteResult:
        """Append rows in one commit: new files only, no existing row rewritten."""


class DeltaRsStore(TableStore):
    """The embedded store: polars frames, delta-rs tables."""

    engine = "polars"

    def _options(self) -> dict[str, Any]:
        return {"storage_options": self.storage_options} if self.storage_options else {}

    @override
    def exists(self, table: TableRef, env: str | None = None) -> bool:
        return delta_io.table_exists(self.uri(table, env), **self._options())

    @override
    def version(self, table: TableRef, env: str | None = None) -> int | None:
        return delta_io.table_version(self.uri(table, env), **self._options())

    @override
    def scan(
        self, table: TableRef, *, version: int | None = None, env: str | None = None
    ) -> nw.LazyFrame[Any]:
        uri = self.uri(table, env)
        if not delta_io.table_exists(uri, **self._options()):
            raise TableMissingError(f"{table} does not exist yet: materialize it first")
        return nw.from_native(delta_io.scan_table(uri, version=version, **self._options()))

    @override
    def read_partition(
        self,
        table: TableRef,
        partition: Mapping[str, PartitionValue],
        columns: Sequence[str] | None = None,
        env: str | None = None,
    ) -> nw.DataFrame[Any]:
        uri = self.uri(table, env)
        if not delta_io.table_exists(uri, **self._options()):
            raise TableMissingError(f"{table} does not exist yet: materialize it first")
        return nw.from_native(delta_io.read_partition(uri, partition, columns, **self._options()))

    @override
    def from_polars(self, data: pl.DataFrame) -> nw.DataFrame[Any]:
        return nw.from_native(data)

    @override
    def materialize(self, frame: Frame) -> nw.DataFrame[Any]:
        return frame.collect() if isinstance(frame, nw.LazyFrame) else frame

    @override
    def concat(self, frames: Sequence[Frame]) -> nw.DataFrame[Any]:
        natives = [self.materialize(f).to_native() for f in frames]
        return nw.from_native(pl.concat(natives, how="diagonal_relaxed"))

    @override
    def written(self, frame: Frame, result: WriteResult) -> Frame:
        return frame

    def _read_as_of(self, result: WriteResult) -> nw.LazyFrame[Any]:
        return nw.from_native(
            delta_io.scan_table(result.uri, version=result.version, **self._options())
        )

    def _polars(self, data: Frame) -> pl.DataFrame:
        return self.materialize(data).to_native()

    @override
    def replace_partition(
        self,
        table: TableRef,
        data: Frame,
        partition: Mapping[str, PartitionValue],
        *,
        policy: SchemaPolicy = SchemaPolicy.STRICT,
    ) -> WriteResult:
        return delta_io.write_partition(
            self.write_uri(table),
            self._polars(data),
            partition,
            policy=policy,
            table=str(table),
            **self._options(),
        )

    @override
    def merge_partition(
        self,
        table: TableRef,
        data: Frame,
        partition: Mapping[str, PartitionValue],
        *,
        keys: Sequence[str],
        lineage: Mapping[str, Any] | None = None,
    ) -> WriteResult:
        return delta_io.merge_partition(
            self.write_uri(table),
            self._polars(data),
            partition,
            keys=keys,
            table=str(table),
            lineage=lineage,
            **self._options(),
        )

    @override
    def overwrite(
        self, table: TableRef, data: Frame, *, lineage: Mapping[str, Any] | None = None
    ) -> WriteResult:
        return delta_io.overwrite_table(
            self.write_uri(table),
            self._polars(data),
            table=str(table),
            lineage=lineage,
            **self._options(),
        )

    @override
    def append(
        self,
        table: TableRef,
        data: Frame,
        *,
        partition_by: Sequence[str] = (),
        policy: SchemaPolicy = SchemaPolicy.ADDITIVE,
    ) -> WriteResult:
        return delta_io.append_table(
            self.write_uri(table),
            self._polars(data),
            partition_by=partition_by,
            table=str(table),
            policy=policy,
            **self._options(),
        )


class SparkStore(TableStore):
    """The scale-out store: lazy Spark frames, delta-spark tables.

    Args:
        catalog: Table locations and the read policy.
        session: The Spark session (Delta Lake on Spark).
        storage_options: Object-store options of the lake (the session carries Spark's own).
    """

    engine = "spark"

    def __init__(
        self, catalog: Catalog, session: Any, storage_options: Mapping[str, str] | None = None
    ):
        super().__init__(catalog, storage_options)
        self.session = session

    @override
    def exists(self, table: TableRef, env: str | None = None) -> bool:
        from mlops_assets.lakehouse import spark_io

        return spark_io.table_exists(self.session, self.uri(table, env))

    @override
    def version(self, table: TableRef, env: str | None = None) -> int | None:
        from mlops_assets.lakehouse import spark_io

        return spark_io.table_version(self.session, self.uri(table, env))

    @override
    def scan(
        self, table: TableRef, *, version: int | None = None, env: str | None = None
    ) -> nw.LazyFrame[Any]:
        from mlops_assets.lakehouse import spark_io

        uri = self.uri(table, env)
        if not spark_io.table_exists(self.session, uri):
            raise TableMissingError(f"{table} does not exist yet: materialize it first")
        return nw.from_native(spark_io.read_table(self.session, uri, version))

    @override
    def read_partition(
        self,
        table: TableRef,
        partition: Mapping[str, PartitionValue],
        columns: Sequence[str] | None = None,
        env: str | None = None,
    ) -> nw.LazyFrame[Any]:
        from mlops_assets.lakehouse import spark_io

        uri = self.uri(table, env)
        if not spark_io.table_exists(self.session, uri):
            raise TableMissingError(f"{table} does not exist yet: materialize it first")
        return nw.from_native(spark_io.read_partition(self.session, uri, partition, columns))

    @override
    def from_polars(self, data: pl.DataFrame) -> nw.LazyFrame[Any]:
        if data.height == 0:
            # Spark infers nothing from an empty Arrow table: give it the schema.
            from pyspark.sql.pandas.types import from_arrow_schema

            schema = from_arrow_schema(data.to_arrow().schema)
            return nw.from_native(self.session.createDataFrame([], schema))
        return nw.from_native(self.session.createDataFrame(data.to_arrow()))

    @override
    def materialize(self, frame: Frame) -> Frame:
        return frame

    @override
    def concat(self, frames: Sequence[Frame]) -> nw.LazyFrame[Any]:
        natives = [f.to_native() for f in frames]
        combined = natives[0]
        for more in natives[1:]:
            combined = combined.unionByName(more, allowMissingColumns=True)
        return nw.from_native(combined)

    @override
    @contextlib.contextmanager
    def kept(self, frame: Frame) -> Iterator[Frame]:
        native = frame.to_native().cache()
        try:
            yield nw.from_native(native)
        finally:
            native.unpersist()

    @override
    def written(self, frame: Frame, result: WriteResult) -> Frame:
        return self.read_written(result)

    def _read_as_of(self, result: WriteResult) -> nw.LazyFrame[Any]:
        from mlops_assets.lakehouse import spark_io

        return nw.from_native(spark_io.read_table(self.session, result.uri))

    @override
    def replace_partition(
        self,
        table: TableRef,
        data: Frame,
        partition: Mapping[str, PartitionValue],
        *,
        policy: SchemaPolicy = SchemaPolicy.STRICT,
    ) -> WriteResult:
        from mlops_assets.lakehouse import spark_io

        return spark_io.write_partition(
            self.session,
            self.write_uri(table),
            data.to_native(),
            partition,
            policy=policy,
            table=str(table),
        )

    @override
    def merge_partition(
        self,
        table: TableRef,
        data: Frame,
        partition: Mapping[str, PartitionValue],
        *,
        keys: Sequence[str],
        lineage: Mapping[str, Any] | None = None,
    ) -> WriteResult:
        from mlops_assets.lakehouse import spark_io

        return spark_io.merge_partition(
            self.session,
            self.write_uri(table),
            data.to_native(),
            partition,
            keys=keys,
            table=str(table),
            lineage=lineage,
        )

    @override
    def overwrite(
        self, table: TableRef, data: Frame, *, lineage: Mapping[str, Any] | None = None
    ) -> WriteResult:
        raise NotImplementedError(
            f"{table}: whole-table overwrites run on polars only (the ml group); "
            "Spark writes partitions"
        )

    @override
    def append(
        self,
        table: TableRef,
        data: Frame,
        *,
        partition_by: Sequence[str] = (),
        policy: SchemaPolicy = SchemaPolicy.ADDITIVE,
    ) -> WriteResult:
        raise NotImplementedError(
            f"{table}: appends run on polars only (the serving and monitoring groups); "
            "Spark writes partitions"
        )


def _partition_values(result: WriteResult) -> dict[str, PartitionValue]:
    """A write's partition as typed values (dates back to dates)."""
    values: dict[str, PartitionValue] = {}
    for column, text in result.partition.items():
        try:
            values[column] = datetime.date.fromisoformat(text)
        except ValueError:
            values[column] = text
    return values
