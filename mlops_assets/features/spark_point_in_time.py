"""Point-in-time training sets on Spark: the rule of `point_in_time`, without an as-of join.

Spark has no as-of join, so each lookup is a union and a window: the events and the feature
rows of a table go into one frame, partitioned by the entity keys and ordered by time (events
before feature rows of the same instant), and every event takes the last feature row seen
before it, `last(row, ignorenulls=True)` over the rows from the partition's start up to the
event. A feature row travels as one struct, null on event rows, so a feature row whose values
are null still counts as the latest row (a per-column `last` would skip it and reach an older
one). Staleness, defaults and the on-demand features follow, as in
`point_in_time.point_in_time_join` and `FeatureSpec.training_set`; the parity tests hold the
two equal on awkward inputs (equal times, missing keys, stale rows, nulls, duplicates).

The on-demand features are polars expressions; they are row-wise, so they run per Arrow batch
on the executors (`mapInArrow`), the very expressions the polars path and the server use.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from mlops_assets.features.point_in_time import (
    check_clashes,
    check_present,
    checked_names,
    key_type_mismatch,
)
from mlops_assets.features.spec import ON_DEMAND_FEATURES, FeatureSpec

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

# Internal columns; they never reach the result.
_TIME = "__pit_time"
_KIND = "__pit_kind"  # 0: event row, 1: feature row (events sort first on equal times)
_ROW = "__pit_row"  # the feature row's struct: null on event rows
_USED = "__pit_used"


def point_in_time_join(
    events: DataFrame,
    features: DataFrame,
    *,
    keys: Sequence[str] | str,
    event_time: str,
    feature_time: str,
    columns: Sequence[str] | str,
    tie_breaker: str | None = None,
    max_staleness: datetime.timedelta | None = None,
    prefix: str = "",
) -> DataFrame:
    """Join each event to the latest feature values known strictly before its event time.

    The rule and the arguments are those of `point_in_time.point_in_time_join` (strictly
    before, `max_staleness` inclusive, duplicates settled by the greatest `tie_breaker` or
    refused, null keys and times matching nothing); here both frames are Spark frames and the
    result is one, lazy. Spark frames have no row order: the result holds every event row
    once, with its columns, then `prefix` + each column and `prefix` + `feature_time`.

    Args:
        events: Labelled events (Spark frame).
        features: A feature table's rows (Spark frame).
        keys: Entity key columns, named the same in both frames.
        event_time: Timestamp (or date) column of `events`.
        feature_time: Timestamp (or date) column of `features`, of the same type.
        columns: Feature columns to bring over.
        tie_breaker: Column of `features` ordering rows that share keys and feature time.
        max_staleness: Feature rows older than this (relative to the event) count as missing.
        prefix: Prefix for the joined feature columns and the joined feature time.

    Returns:
        `events` with the prefixed feature columns and feature time appended.

    Raises:
        ValueError: A column is missing, types differ, an output column would clash with an
            event column, or feature rows are duplicated (the message shows one).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys, columns = checked_names(keys, columns, max_staleness)
    is_date = _validate(
        events, features, keys, event_time, feature_time, columns, tie_breaker, prefix
    )
    tie = [tie_breaker] if tie_breaker else []
    usable = features.select(*dict.fromkeys([*keys, feature_time, *columns, *tie])).where(
        F.col(feature_time).isNotNull() & _all_not_null(keys)
    )
    usable = _settle_duplicates(usable, keys, feature_time, tie_breaker)

    # The feature row's values under their output names, with the row's own time.
    added = {f"{prefix}{c}": c for c in [*columns, feature_time]}
    row = F.struct(*[F.col(source).alias(name) for name, source in added.items()])
    feature_side = usable.select(
        *keys,
        F.col(feature_time).alias(_TIME),
        F.lit(1).alias(_KIND),
        row.alias(_ROW),
    )
    event_side = events.select(
        "*",
        F.col(event_time).alias(_TIME),
        F.lit(0).alias(_KIND),
        F.lit(None).cast(feature_side.schema[_ROW].dataType).alias(_ROW),
    )
    both = event_side.unionByName(feature_side, allowMissingColumns=True)
    # Rows up to the event itself: feature rows of the same instant sort after it (the tie
    # rule), and the event's own struct is null, so `last` skips it.
    before = (
        Window.partitionBy(*keys)
        .orderBy(F.col(_TIME).asc_nulls_first(), F.col(_KIND).asc())
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    used = F.last(F.col(_ROW), ignorenulls=True).over(before)
    joined = both.select("*", used.alias(_USED)).where(F.col(_KIND) == 0)
    # Events with a null key or time match nothing; too old a row counts as missing.
    matched = _all_not_null(keys) & F.col(event_time).isNotNull()
    if max_staleness is not None:
        age = _age(F.col(event_time), F.col(f"{_USED}.{prefix}{feature_time}"), is_date)
        matched &= age <= _ticks(max_staleness, is_date)
    return joined.select(
        *[F.col(f"`{c}`") for c in events.columns],
        *[
            F.when(matched, F.col(_USED).getField(name)).alias(name)
            for name in added  # a struct field keeps its type; unmatched rows get null
        ],
    )


def training_set(
    events: DataFrame, tables: Mapping[str, DataFrame], spec: FeatureSpec
) -> DataFrame:
    """A feature spec's training set on Spark, as `FeatureSpec.training_set` builds on polars.

    Every lookup of the spec joins its table's rows (entity keys renamed to the lookup's
    keys), its features' nulls take their defaults, and the on-demand features are derived
    per Arrow batch on the executors by the spec's polars expressions.

    Args:
        events: Labelled events with the spec's request fields (Spark frame).
        tables: Feature table name to its rows (Spark frames).
        spec: The model's feature spec.

    Returns:
        The events with every feature column (Spark frame, lazy, no row order).

    Raises:
        KeyError: A table the spec looks up is not in `tables`.
    """
    from pyspark.sql import functions as F

    frame = events
    for lookup in spec.lookups:
        definition = lookup.definition
        rows = lookup.rows_in(tables)
        for entity, key in zip(definition.entity_keys, lookup.keys, strict=True):
            if entity != key:
                rows = rows.withColumnRenamed(entity, key)
        prefix = lookup.prefix
        frame = point_in_time_join(frame, rows, **lookup.join_arguments())
        renamed = {
            f"{prefix}{definition.timestamp_key}": lookup.time_column,
            **{f"{prefix}{f}": f for f in lookup.features},
        }
        types = dict(frame.dtypes)
        frame = frame.select(
            *[
                (
                    F.col(f"`{c}`")
                    if c not in renamed
                    else _filled(c, renamed[c], definition, lookup.features, types[c])
                )
                for c in frame.columns
            ]
        )
    return derive(frame, spec)


def derive(frame: DataFrame, spec: FeatureSpec) -> DataFrame:
    """Add the spec's on-demand features, computed per Arrow batch on the executors.

    The expressions are the spec's polars ones (row-wise), so values equal the polars path's.
    """
    if not spec.on_demand:
        return frame
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    names = list(spec.on_demand)
    zone = frame.sparkSession.conf.get("spark.sql.session.timeZone")
    source = to_arrow_schema(frame.schema, timezone=zone)

    def add(batch: pl.DataFrame) -> pl.DataFrame:
        return batch.with_columns(ON_DEMAND_FEATURES[n].expression().alias(n) for n in names)

    # The output's types come from the same expressions on an empty frame of the input's.
    empty = pl.from_arrow(pa.Table.from_batches([], source))
    target = to_arrow_schema(from_arrow_schema(add(empty).to_arrow().schema), timezone=zone)

    def batches(parts: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for part in parts:
            table = add(pl.from_arrow(pa.Table.from_batches([part]))).to_arrow()
            yield from table.cast(target).to_batches()

    return frame.mapInArrow(batches, from_arrow_schema(target))


def _filled(column: str, name: str, definition: Any, features: Sequence[str], dtype: str) -> Column:
    from pyspark.sql import functions as F

    value = F.col(f"`{column}`")
    if name in features:
        default = definition.feature(name).default
        if default is not None:
            value = F.coalesce(value, F.lit(default).cast(dtype))
    return value.alias(name)


def _validate(
    events: DataFrame,
    features: DataFrame,
    keys: list[str],
    event_time: str,
    feature_time: str,
    columns: list[str],
    tie_breaker: str | None,
    prefix: str,
) -> bool:
    """Check the frames as the polars join does; True when the times are dates."""
    from pyspark.sql.types import DateType, TimestampType

    check_present(
        events.columns, features.columns, keys, event_time, feature_time, columns, tie_breaker
    )
    event_type = events.schema[event_time].dataType
    feature_type = features.schema[feature_time].dataType
    if event_type != feature_type:
        raise ValueError(
            f"event time {event_time!r} is {event_type.simpleString()} but feature time "
            f"{feature_time!r} is {feature_type.simpleString()}; cast one so both have the "
            "same type"
        )
    if not isinstance(event_type, DateType | TimestampType):
        raise ValueError(
            f"event time {event_time!r} and feature time {feature_time!r} must be dates or "
            f"timestamps with a time zone, not {event_type.simpleString()}"
        )
    for key in keys:
        left, right = events.schema[key].dataType, features.schema[key].dataType
        if left != right:
            raise key_type_mismatch(key, left.simpleString(), right.simpleString())
    check_clashes(events.columns, columns, feature_time, prefix)
    internal = sorted({_TIME, _KIND, _ROW, _USED} & set(events.columns))
    if internal:
        raise ValueError(f"events hold column(s) {internal} the join uses internally")
    return isinstance(event_type, DateType)


def _all_not_null(names: Sequence[str]) -> Column:
    from pyspark.sql import functions as F

    condition = F.lit(True)
    for name in names:
        condition &= F.col(name).isNotNull()
    return condition


def _settle_duplicates(
    rows: DataFrame, keys: list[str], feature_time: str, tie_breaker: str | None
) -> DataFrame:
    """Keep one row per keys and time (the greatest tie breaker), or refuse ambiguous rows."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    group = [*keys, feature_time]
    shared = rows.groupBy(*group).count().where(F.col("count") > 1).limit(1).collect()
    if not shared:
        return rows
    example = ", ".join(f"{c}={shared[0][c]!r}" for c in group)
    if tie_breaker is None:
        raise ValueError(
            f"features hold rows sharing keys {keys} and feature time {feature_time!r} "
            f"(for example {example}); pass tie_breaker to choose the row to use among them"
        )
    tied = rows.groupBy(*group, tie_breaker).count().where(F.col("count") > 1).limit(1).collect()
    if tied:
        example = ", ".join(f"{c}={tied[0][c]!r}" for c in [*group, tie_breaker])
        raise ValueError(
            f"features hold rows sharing keys {keys}, feature time {feature_time!r} and tie "
            f"breaker {tie_breaker!r} (for example {example}); the row to use is ambiguous"
        )
    # A null tie breaker ranks below any value.
    latest = Window.partitionBy(*group).orderBy(F.col(tie_breaker).desc_nulls_last())
    return (
        rows.withColumn("__pit_rank", F.row_number().over(latest))
        .where(F.col("__pit_rank") == 1)
        .drop("__pit_rank")
    )


def _age(event: Column, feature: Column, is_date: bool) -> Column:
    from pyspark.sql import functions as F

    if is_date:
        return F.unix_date(event) - F.unix_date(feature)
    return F.unix_micros(event) - F.unix_micros(feature)


def _ticks(max_staleness: datetime.timedelta, is_date: bool) -> int:
    # Whole days or microseconds, floored as the polars join floors them.
    if is_date:
        return max_staleness // datetime.timedelta(days=1)
    return max_staleness // datetime.timedelta(microseconds=1)


def labelled_events(
    transactions: DataFrame, labels: DataFrame, window: Any, request_fields: Sequence[str]
) -> DataFrame:
    """The window's events with `is_fraud`, as `models.windows.labelled_events` on Spark.

    Args:
        transactions: Silver transactions (Spark frame).
        labels: Silver label reports (Spark frame).
        window: The training set's window (`models.windows.Window`).
        request_fields: The model's request fields, kept as columns.

    Returns:
        The events of the window's days up to `mature_until`, with `is_fraud` (lazy, no row
        order: sort by `event_time`, `transaction_id` for the polars order).
    """
    import narwhals as nw
    from pyspark.sql import functions as F

    from mlops_assets.transforms.labels import labels_as_of

    fraud = (
        labels_as_of(nw.from_native(labels), window.cutoff)
        .to_native()
        .where(F.col("is_fraud"))
        .select("transaction_id", "is_fraud")
    )
    events = transactions.where(
        F.col("event_date").between(F.lit(window.start), F.lit(window.end))
        & (F.col("event_time") <= F.lit(window.mature_until))
    ).select(*request_fields, "event_date")
    return events.join(fraud, on="transaction_id", how="left").withColumn(
        "is_fraud", F.coalesce(F.col("is_fraud"), F.lit(False))
    )


def feature_rows(
    scan: Callable[[str], DataFrame],
    spec: FeatureSpec,
    windows: Any,
    start: datetime.date,
    end: datetime.date,
) -> dict[str, DataFrame]:
    """The feature rows a join of events from `start` to `end` can use, as Spark frames.

    As `models.windows.feature_rows`: each looked-up table from its declared look-back before
    `start` to `end`, by its daily partition column (Delta prunes the other partitions).
    """
    from pyspark.sql import functions as F

    rows = {}
    for lookup in spec.lookups:
        table = lookup.definition
        first = start - datetime.timedelta(days=windows.lookback(table.name))
        rows[table.name] = scan(f"features/{table.name}").where(
            F.col(table.partition_column).between(F.lit(first), F.lit(end))
        )
    return rows
