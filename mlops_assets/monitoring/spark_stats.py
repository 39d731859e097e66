"""Drift statistics and profiles of Spark frames, computed on the cluster: `drift` and `profile`.

`spark_drift` and `spark_profile` take Spark DataFrames and return what `drift.compute_drift`
and `profile.profile` return for the same rows (a `DriftResult`, a `PROFILE_SCHEMA` frame),
with the same methods, thresholds, verdicts and kinds. Only small results reach the driver:
per-column counts and moments, the category counts of categorical columns, and a few order
statistics; the values themselves stay on the executors.

Exactness:
- counts, nulls, null shares, means, minimum and maximum, category counts and shares, the
  Jensen-Shannon distance, chi-square and z p-values and categorical PSI are computed from exact
  counts: equal to the polars statistics up to floating-point summation order (relative
  1e-9 in the parity tests; integer counts are equal).
- Quantiles are exact, not `percentile_approx`: the numeric columns' valid values are stacked
  into one frame keyed by column, counted per distinct value and side, cut into ranges per
  column (edges from `percentile_approx`, which only balance the work), each range sorted on
  an executor, and the cumulative counts carried across ranges from the per-range totals
  collected on the driver. An order statistic is then the value whose cumulative count first
  passes its rank, and the linear-interpolation quantiles (profile percentiles, the PSI bin
  edges) equal polars' and numpy's. All numeric columns together take a fixed number of
  Spark jobs (about six), not a few per column; each categorical column takes one (drift)
  or three (profile).
- The Wasserstein distance is the integral of `|F_ref(x) - F_cur(x)|` over consecutive distinct
  values of both samples (the same cumulative counts): exact, like scipy's and `drift`'s,
  up to summation order.
- The Kolmogorov-Smirnov p-value (references of 1000 rows or fewer): with both samples of at
  most 10,000 values scipy's exact test needs the samples, which are then collected (at most
  20,000 values); beyond that scipy's `ks_2samp` uses the asymptotic distribution of the
  statistic, computed here from the same statistic (`kstwo.sf(D, round(n m / (n + m)))`).
- Category labels of the profile are the values cast to strings by Spark: integers, strings and
  booleans read as polars casts them; a float column profiled as categorical may print large or
  small numbers differently (`1.0E20` against `1e20`).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from mlops_assets.monitoring.drift import (
    DISCRETE_NUMERIC_VALUES,
    INTEGER_CARDINALITY_LIMIT,
    LARGE_REFERENCE_ROWS,
    PSI_BINS,
    WASSERSTEIN_MIN_STD,
    DriftResult,
    Kind,
    _categorical_test,
    _chosen_columns,
    _drift_result,
    _drift_row,
    _empty_row,
    _psi,
    _thresholds,
    psi_categorical,
)
from mlops_assets.monitoring.profile import OTHER, PROFILE_SCHEMA, QUANTILES, TOP_CATEGORIES
from mlops_assets.monitoring.thresholds import Thresholds

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

# scipy's `ks_2samp` runs its exact test when neither sample exceeds this many values.
KS_EXACT_MAX = 10_000
# Side markers of the value/count frames.
_REF, _CUR = "r", "c"
# A value range's key in the lookups: column index * _RANGE_KEY + range index.
_RANGE_KEY = 1 << 20


def spark_kind(frame: DataFrame, name: str) -> Kind | None:
    """Numeric, categorical or None for a Spark column, as `drift.infer_kind` decides for polars.

    Floats and decimals are numeric; integers are categorical with at most
    `INTEGER_CARDINALITY_LIMIT` distinct non-null values, numeric otherwise; strings and
    booleans are categorical; other types are left out.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    dtype = frame.schema[name].dataType
    if isinstance(dtype, T.FloatType | T.DoubleType | T.DecimalType):
        return "numeric"
    if isinstance(dtype, T.ByteType | T.ShortType | T.IntegerType | T.LongType):
        limit = INTEGER_CARDINALITY_LIMIT + 1
        distinct = frame.select(name).filter(F.col(name).isNotNull()).distinct().limit(limit)
        return "categorical" if distinct.count() <= INTEGER_CARDINALITY_LIMIT else "numeric"
    if isinstance(dtype, T.StringType | T.BooleanType):
        return "categorical"
    return None


def _is_float(frame: DataFrame, name: str) -> bool:
    from pyspark.sql import types as T

    return isinstance(frame.schema[name].dataType, T.FloatType | T.DoubleType)


def _valid(frame: DataFrame, name: str) -> Column:
    """True for the values the statistics keep: not null, and for floats finite."""
    from pyspark.sql import functions as F

    column = F.col(name)
    if _is_float(frame, name):
        return column.isNotNull() & ~F.isnan(column) & (F.abs(column) != F.lit(float("inf")))
    return column.isNotNull()


def _numbers(frame: DataFrame, name: str) -> DataFrame:
    """The valid values of a column as doubles, in a column `v`."""
    from pyspark.sql import functions as F

    return frame.filter(_valid(frame, name)).select(F.col(name).cast("double").alias("v"))


def _buckets(spark_frame: DataFrame) -> int:
    session = spark_frame.sparkSession
    try:
        return max(1, int(session.conf.get("spark.sql.shuffle.partitions")))
    except (TypeError, ValueError):
        return 4


class _Stacked:
    """Distinct values of several numeric columns at once, with per-side cumulative counts.

    Every column's valid values (as doubles) are stacked into one frame keyed by the column's
    index `k`, so a handful of Spark jobs serve all the columns: the counts per distinct value
    and side (`r` reference, `c` current), ranges of values per column (edges from
    `percentile_approx`, which only balance the work) sorted on the executors, and the
    cumulative counts `cr`/`cc` (values at or below `v`) carried across ranges from the
    per-range totals collected on the driver; `nv` is the next larger distinct value of the
    column (null for its largest).
    """

    def __init__(self, sides: Sequence[tuple[DataFrame, str]], names: Sequence[str]):
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        parts = []
        for frame, side in sides:
            entries = F.array(
                *[
                    F.struct(
                        F.lit(i).alias("k"),
                        F.when(_valid(frame, n), F.col(n).cast("double")).alias("v"),
                    )
                    for i, n in enumerate(names)
                ]
            )
            parts.append(
                frame.select(F.explode(entries).alias("e"))
                .select("e.k", "e.v")
                .filter(F.col("v").isNotNull())
                .select(
                    "k",
                    "v",
                    F.lit(int(side == _REF)).alias("r"),
                    F.lit(int(side == _CUR)).alias("c"),
                )
            )
        stacked = parts[0]
        for part in parts[1:]:
            stacked = stacked.unionByName(part)
        self.counts = (
            stacked.groupBy("k", "v").agg(F.sum("r").alias("r"), F.sum("c").alias("c")).persist()
        )
        buckets = _buckets(self.counts)
        edges: dict[int, list[float]] = {k: [] for k in range(len(names))}
        if buckets > 1:
            probabilities = [j / buckets for j in range(1, buckets)]
            for row in (
                self.counts.groupBy("k")
                .agg(F.percentile_approx("v", probabilities, 10_000).alias("e"))
                .collect()
            ):
                edges[int(row["k"])] = sorted(set(row["e"]))
        edge_map = F.create_map(
            *[
                item
                for k, values in edges.items()
                for item in (
                    F.lit(k),
                    F.array(*[F.lit(float(e)) for e in values]).cast("array<double>"),
                )
            ]
        )
        bucket = F.size(F.filter(F.element_at(edge_map, F.col("k")), lambda e: e < F.col("v")))
        ranged = self.counts.withColumn("b", bucket)
        totals = (
            ranged.groupBy("k", "b")
            .agg(
                F.sum("r").alias("r"),
                F.sum("c").alias("c"),
                F.min("v").alias("lo"),
                F.count(F.lit(1)).alias("n"),
            )
            .collect()
        )
        offsets_r: dict[int, int] = {}
        offsets_c: dict[int, int] = {}
        next_low: dict[int, float] = {}
        self.n_ref: dict[int, int] = {}
        self.n_cur: dict[int, int] = {}
        self.distinct: dict[int, int] = {}
        for k in range(len(names)):
            ordered = sorted((row for row in totals if row["k"] == k), key=lambda row: row["b"])
            seen_r = seen_c = distinct = 0
            for index, row in enumerate(ordered):
                key = k * _RANGE_KEY + int(row["b"])
                offsets_r[key], offsets_c[key] = seen_r, seen_c
                seen_r += int(row["r"])
                seen_c += int(row["c"])
                distinct += int(row["n"])
                if index + 1 < len(ordered):
                    next_low[key] = float(ordered[index + 1]["lo"])
            self.n_ref[k], self.n_cur[k], self.distinct[k] = seen_r, seen_c, distinct

        def lookup(values: Mapping[int, float | int], kind: str) -> Column:
            if not values:
                return F.lit(None).cast(kind)
            pairs = [item for key, x in values.items() for item in (F.lit(key), F.lit(x))]
            return F.element_at(F.create_map(*pairs), F.col("_key")).cast(kind)

        running = (
            Window.partitionBy("k", "b").orderBy("v").rowsBetween(Window.unboundedPreceding, 0)
        )
        following = Window.partitionBy("k", "b").orderBy("v")
        self.frame = ranged.withColumn("_key", F.col("k") * F.lit(_RANGE_KEY) + F.col("b")).select(
            "k",
            "v",
            "r",
            "c",
            (F.sum("r").over(running) + F.coalesce(lookup(offsets_r, "bigint"), F.lit(0))).alias(
                "cr"
            ),
            (F.sum("c").over(running) + F.coalesce(lookup(offsets_c, "bigint"), F.lit(0))).alias(
                "cc"
            ),
            F.coalesce(F.lead("v").over(following), lookup(next_low, "double")).alias("nv"),
        )

    def close(self) -> None:
        """Free the cached counts."""
        self.counts.unpersist()

    def order_statistics(
        self, wanted: Mapping[tuple[int, str], Sequence[int]]
    ) -> dict[tuple[int, str, int], float]:
        """The values at 0-based ranks of each (column, side)'s sorted sample, in one job."""
        from pyspark.sql import functions as F

        hit = F.lit(False)
        for (k, side), ranks in wanted.items():
            count, cumulative = (
                (F.col("r"), F.col("cr")) if side == _REF else (F.col("c"), F.col("cc"))
            )
            for rank in sorted(set(int(x) for x in ranks)):
                hit = hit | (
                    (F.col("k") == F.lit(k))
                    & (count > 0)
                    & (cumulative - count <= F.lit(rank))
                    & (cumulative > F.lit(rank))
                )
        rows = self.frame.filter(hit).select("k", "v", "r", "c", "cr", "cc").collect()
        found = {}
        for (k, side), ranks in wanted.items():
            spans = [
                (int(row["cr"] - row["r"]), int(row["cr"]), float(row["v"]))
                if side == _REF
                else (int(row["cc"] - row["c"]), int(row["cc"]), float(row["v"]))
                for row in rows
                if row["k"] == k and row[side] > 0
            ]
            for rank in ranks:
                found[(k, side, int(rank))] = next(v for s, e, v in spans if s <= rank < e)
        return found

    def quantiles(
        self, wanted: Mapping[tuple[int, str], Sequence[float]]
    ) -> dict[tuple[int, str], list[float]]:
        """Linear-interpolation quantiles (`numpy.quantile`'s default) of each (column, side)."""
        positions, ranks = {}, {}
        for (k, side), probabilities in wanted.items():
            size = self.n_ref[k] if side == _REF else self.n_cur[k]
            position = np.asarray(probabilities, dtype=np.float64) * (size - 1)
            below = np.floor(position).astype(np.int64)
            above = np.minimum(below + 1, size - 1)
            positions[(k, side)] = (position, below, above)
            ranks[(k, side)] = [*below.tolist(), *above.tolist()]
        values = self.order_statistics(ranks)
        result = {}
        for (k, side), (position, below, above) in positions.items():
            low = np.array([values[(k, side, int(x))] for x in below])
            high = np.array([values[(k, side, int(x))] for x in above])
            result[(k, side)] = (low + (high - low) * (position - below)).tolist()
        return result


def _frequencies(
    reference: DataFrame, current: DataFrame, name: str, numeric: bool
) -> pl.DataFrame:
    """Counts of each valid value per side, sorted by value (`drift._frequencies`' frame)."""
    from pyspark.sql import functions as F

    def side(frame: DataFrame, ref: int) -> DataFrame:
        value = F.col(name).cast("double") if numeric else F.col(name)
        return frame.filter(_valid(frame, name)).select(
            value.alias("value"), F.lit(ref).alias("r"), F.lit(1 - ref).alias("c")
        )

    rows = (
        side(reference, 1)
        .unionByName(side(current, 0))
        .groupBy("value")
        .agg(F.sum("r").alias("reference"), F.sum("c").alias("current"))
        .collect()
    )
    values = [row["value"] for row in rows]
    frame = pl.DataFrame(
        {
            "value": pl.Series(values, dtype=pl.Float64) if numeric else values,
            "reference": pl.Series([int(row["reference"]) for row in rows], dtype=pl.Int64),
            "current": pl.Series([int(row["current"]) for row in rows], dtype=pl.Int64),
        }
    )
    return frame.sort("value")


def _side_counts(frame: DataFrame, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Per column: (valid values, rows), in one job."""
    from pyspark.sql import functions as F

    if not names:
        return {}
    row = frame.select(
        F.count(F.lit(1)).alias("__rows"),
        *[F.count_if(_valid(frame, n)).alias(f"v{i}") for i, n in enumerate(names)],
    ).collect()[0]
    return {n: (int(row[f"v{i}"]), int(row["__rows"])) for i, n in enumerate(names)}


def spark_drift(
    reference: DataFrame,
    current: DataFrame,
    columns: Sequence[str] | None = None,
    *,
    kinds: Mapping[str, Kind] | None = None,
    thresholds: Thresholds | Mapping[str, float] | None = None,
    drift_share: float | None = None,
    psi_bins: int = PSI_BINS,
) -> DriftResult:
    """Drift of each column of `current` against `reference`, computed on Spark.

    Same arguments, methods, limits and result as `drift.compute_drift` (see the module
    docstring for what is exact).

    Args:
        reference: The baseline's rows (a Spark DataFrame).
        current: The window to judge (a Spark DataFrame).
        columns: Columns to compare (default: every column of `current` with a known kind).
        kinds: Per-column kind overriding the type inference.
        thresholds: The limits, or per-method limits overriding the defaults.
        drift_share: Share of drifted columns at or above which the dataset has drifted.
        psi_bins: Number of reference-quantile bins of numeric PSI.

    Returns:
        One row per column (`DRIFT_SCHEMA`), in the order of `columns`, and the summary.

    Raises:
        ValueError: A column is missing from one side, or has no kind; or a threshold is
            unknown or out of range.
    """
    limits = _thresholds(thresholds, drift_share)
    chosen = _chosen_columns(
        reference.columns,
        current.columns,
        columns,
        kinds,
        kind_of=lambda name: spark_kind(current, name),
        dtype_of=lambda name: current.schema[name].dataType.simpleString(),
    )
    ref_counts = _side_counts(reference, [n for n, _ in chosen])
    cur_counts = _side_counts(current, [n for n, _ in chosen])
    numeric = [
        name
        for name, kind in chosen
        if kind == "numeric" and ref_counts[name][0] and cur_counts[name][0]
    ]
    figures = _numeric_figures(reference, current, numeric, psi_bins) if numeric else {}
    rows = [
        _column_drift(
            name,
            kind,
            reference,
            current,
            ref_counts[name],
            cur_counts[name],
            figures.get(name),
            limits,
        )
        for name, kind in chosen
    ]
    return _drift_result(rows, limits)


def _numeric_figures(
    reference: DataFrame, current: DataFrame, names: Sequence[str], psi_bins: int
) -> dict[str, dict[str, Any]]:
    """Per numeric column: Wasserstein sum, KS statistic, PSI, std and few-value frequencies.

    A fixed number of Spark jobs for all the columns (`_Stacked`).
    """
    from pyspark.sql import functions as F

    stacked = _Stacked([(reference, _REF), (current, _CUR)], names)
    try:
        probabilities = np.arange(1, psi_bins) / psi_bins
        quantiles = stacked.quantiles({(k, _REF): probabilities for k in range(len(names))})
        edges = {k: np.unique(quantiles[(k, _REF)]) for k in range(len(names))}
        edge_map = F.create_map(
            *[
                item
                for k, values in edges.items()
                for item in (
                    F.lit(k),
                    F.array(*[F.lit(float(e)) for e in values]).cast("array<double>"),
                )
            ]
        )
        sizes = F.create_map(
            *[
                item
                for k in range(len(names))
                for item in (F.lit(k), F.array(F.lit(stacked.n_ref[k]), F.lit(stacked.n_cur[k])))
            ]
        )
        size = F.element_at(sizes, F.col("k"))
        gap = F.abs(F.col("cr") / size.getItem(0).cast("double") - F.col("cc") / size.getItem(1))
        below = []
        for j in range(psi_bins - 1):
            edge = F.get(F.element_at(edge_map, F.col("k")), j)
            below += [
                F.sum(F.when(F.col("v") <= edge, F.col("r"))).alias(f"r{j}"),
                F.sum(F.when(F.col("v") <= edge, F.col("c"))).alias(f"c{j}"),
            ]
        summaries = {
            int(row["k"]): row
            for row in stacked.frame.groupBy("k")
            .agg(
                F.sum(gap * (F.col("nv") - F.col("v"))).alias("w1"),
                F.max(gap).alias("d"),
                *below,
            )
            .collect()
        }
        deviations = reference.select(
            *[
                F.stddev_pop(F.when(_valid(reference, n), F.col(n).cast("double"))).alias(f"s{i}")
                for i, n in enumerate(names)
            ]
        ).collect()[0]
        few = [k for k in range(len(names)) if stacked.distinct[k] <= DISCRETE_NUMERIC_VALUES]
        frequencies: dict[int, pl.DataFrame] = {}
        if few:
            collected = stacked.counts.filter(F.col("k").isin(few)).collect()
            for k in few:
                rows = [row for row in collected if row["k"] == k]
                frequencies[k] = pl.DataFrame(
                    {
                        "value": pl.Series([float(row["v"]) for row in rows], dtype=pl.Float64),
                        "reference": pl.Series([int(row["r"]) for row in rows], dtype=pl.Int64),
                        "current": pl.Series([int(row["c"]) for row in rows], dtype=pl.Int64),
                    }
                ).sort("value")
        figures = {}
        for k, name in enumerate(names):
            summary = summaries[k]
            n_ref, n_cur = stacked.n_ref[k], stacked.n_cur[k]
            count = len(edges[k])
            below_r = np.array([int(summary[f"r{j}"] or 0) for j in range(count)], np.int64)
            below_c = np.array([int(summary[f"c{j}"] or 0) for j in range(count)], np.int64)
            figures[name] = {
                "w1": float(summary["w1"] or 0.0),
                "d": float(summary["d"] or 0.0),
                "psi": _psi(
                    np.diff(below_r, prepend=0, append=n_ref),
                    np.diff(below_c, prepend=0, append=n_cur),
                ),
                "std": float(deviations[f"s{k}"] or 0.0),
                "frequencies": frequencies.get(k),
            }
        return figures
    finally:
        stacked.close()


def _column_drift(
    name: str,
    kind: Kind,
    reference: DataFrame,
    current: DataFrame,
    ref_side: tuple[int, int],
    cur_side: tuple[int, int],
    figures: Mapping[str, Any] | None,
    limits: Thresholds,
) -> tuple:
    ref_count, cur_count = ref_side[0], cur_side[0]
    counts = (ref_count, cur_count, ref_side[1] - ref_count, cur_side[1] - cur_count)
    if not ref_count or not cur_count:
        return _empty_row(name, kind, counts)
    large = ref_count > LARGE_REFERENCE_ROWS
    if kind == "categorical":
        frequencies = _frequencies(reference, current, name, numeric=False)
        psi = psi_categorical(frequencies)
        method, score = _categorical_test(frequencies, large)
    else:
        if figures is None:
            raise RuntimeError(f"column {name!r}: numeric figures were not computed")
        psi = figures["psi"]
        if figures["frequencies"] is not None:
            method, score = _categorical_test(figures["frequencies"], large)
        elif large:
            method = "wasserstein"
            score = figures["w1"] / max(figures["std"], WASSERSTEIN_MIN_STD)
        else:
            method = "ks"
            score = _ks_p_value(reference, current, name, figures["d"], ref_count, cur_count)
    return _drift_row(name, kind, method, score, psi, counts, limits)


def _ks_p_value(
    reference: DataFrame, current: DataFrame, name: str, statistic: float, n: int, m: int
) -> float:
    """The two-sided p-value of scipy's `ks_2samp` (`method="auto"`), see the module docstring."""
    from scipy.stats import kstwo

    if max(n, m) <= KS_EXACT_MAX:
        from scipy.stats import ks_2samp

        ref = np.sort([row[0] for row in _numbers(reference, name).collect()])
        cur = np.sort([row[0] for row in _numbers(current, name).collect()])
        return float(ks_2samp(ref, cur).pvalue)
    return float(np.clip(kstwo.sf(statistic, np.round(n * m / (n + m))), 0.0, 1.0))


def spark_profile(
    frame: DataFrame,
    columns: Sequence[str] | None = None,
    *,
    kinds: Mapping[str, Kind] | None = None,
    top: int = TOP_CATEGORIES,
) -> pl.DataFrame:
    """Long-format profile of a Spark frame: `profile.profile`'s rows, computed on Spark.

    Args:
        frame: The rows to describe.
        columns: Columns to describe (default: every column with a known kind).
        kinds: Per-column kind overriding the type inference.
        top: Number of most frequent categories listed per categorical column.

    Returns:
        Rows of `PROFILE_SCHEMA`, columns in the given order.

    Raises:
        ValueError: A named column is missing or has no kind.
    """
    overrides = dict(kinds or {})
    names = list(columns) if columns is not None else list(frame.columns)
    parts = []
    for name in names:
        if name not in frame.columns:
            raise ValueError(f"column {name!r} is missing from the frame")
        kind = overrides.get(name) or spark_kind(frame, name)
        if kind is None:
            if columns is None:
                continue
            dtype = frame.schema[name].dataType.simpleString()
            raise ValueError(f"column {name!r} ({dtype}) needs a kind in `kinds`")
        parts.append((name, kind))
    if not parts:
        return pl.DataFrame(schema=PROFILE_SCHEMA)
    numeric = _numeric_profiles(frame, [n for n, kind in parts if kind == "numeric"])
    return pl.concat(
        [
            numeric[name] if kind == "numeric" else _categorical_profile(frame, name, top)
            for name, kind in parts
        ]
    )


def _profile_rows(
    name: str, kind: str, statistics: Mapping[str, Any], categories: Sequence[Any] = ()
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "column": name,
            "kind": kind,
            "statistic": list(statistics),
            "category": list(categories) or None,
            "value": [None if v is None else float(v) for v in statistics.values()],
        },
        schema=PROFILE_SCHEMA,
    )


def _head_counts(frame: DataFrame, name: str) -> tuple[int, int, dict[str, float | None]]:
    from pyspark.sql import functions as F

    row = frame.select(
        F.count(F.lit(1)).alias("rows"), F.count_if(_valid(frame, name)).alias("valid")
    ).collect()[0]
    rows, valid = int(row["rows"]), int(row["valid"])
    nulls = rows - valid
    return (
        rows,
        valid,
        {"count": rows, "nulls": nulls, "null_share": nulls / rows if rows else None},
    )


def _numeric_profiles(frame: DataFrame, names: Sequence[str]) -> dict[str, pl.DataFrame]:
    """Profiles of the numeric columns: counts and moments in one job, quantiles in a few."""
    from pyspark.sql import functions as F

    if not names:
        return {}
    values = [F.when(_valid(frame, n), F.col(n).cast("double")) for n in names]
    row = frame.select(
        F.count(F.lit(1)).alias("rows"),
        *[F.count(v).alias(f"n{i}") for i, v in enumerate(values)],
        *[F.mean(v).alias(f"mean{i}") for i, v in enumerate(values)],
        *[F.stddev_samp(v).alias(f"std{i}") for i, v in enumerate(values)],
        *[F.min(v).alias(f"min{i}") for i, v in enumerate(values)],
        *[F.max(v).alias(f"max{i}") for i, v in enumerate(values)],
    ).collect()[0]
    rows = int(row["rows"])
    present = [i for i in range(len(names)) if row[f"n{i}"]]
    quantiles: dict[int, list[float]] = {}
    if present:
        stacked = _Stacked([(frame, _CUR)], [names[i] for i in present])
        try:
            found = stacked.quantiles(
                {(j, _CUR): list(QUANTILES.values()) for j in range(len(present))}
            )
        finally:
            stacked.close()
        quantiles = {present[j]: found[(j, _CUR)] for j in range(len(present))}
    profiles = {}
    for i, name in enumerate(names):
        valid = int(row[f"n{i}"])
        nulls = rows - valid
        statistics: dict[str, Any] = {
            "count": rows,
            "nulls": nulls,
            "null_share": nulls / rows if rows else None,
            "mean": row[f"mean{i}"],
            "std": row[f"std{i}"] if valid > 1 else None,
            "min": row[f"min{i}"],
        }
        statistics.update(zip(QUANTILES, quantiles.get(i, [None] * len(QUANTILES)), strict=True))
        statistics["max"] = row[f"max{i}"]
        profiles[name] = _profile_rows(name, "numeric", statistics)
    return profiles


def _categorical_profile(frame: DataFrame, name: str, top: int) -> pl.DataFrame:
    from pyspark.sql import functions as F

    _, valid, statistics = _head_counts(frame, name)
    counted = (
        frame.filter(_valid(frame, name))
        .groupBy(F.col(name).cast("string").alias("category"))
        .agg(F.count(F.lit(1)).alias("n"))
    )
    statistics["distinct"] = counted.count()
    listed = [
        (row["category"], int(row["n"]))
        for row in counted.orderBy(F.col("n").desc(), F.col("category").asc()).limit(top).collect()
    ]
    rest = valid - sum(n for _, n in listed)
    if rest > 0:
        listed.append((OTHER, rest))
    total = max(valid, 1)
    head = _profile_rows(name, "categorical", statistics)
    per_category = pl.DataFrame(
        {
            "column": name,
            "kind": "categorical",
            "statistic": ["category_count", "category_share"] * len(listed),
            "category": [c for c, _ in listed for _ in range(2)],
            "value": [x for _, n in listed for x in (float(n), n / total)],
        },
        schema=PROFILE_SCHEMA,
    )
    return pl.concat([head, per_category])


def spark_window_predictions(log: DataFrame, day: datetime.date) -> DataFrame:
    """The day's `ok` predictions on Spark, as `windows.window_predictions` keeps them.

    Batch rows keep the latest prediction per (version, transaction) by `logged_at`; the
    other modes keep every row. The order of rows is left to Spark (the statistics need none).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rows = log.filter((F.col("day") == F.lit(day)) & (F.col("status") == F.lit("ok")))
    latest = Window.partitionBy("model_version", "transaction_id").orderBy(
        F.col("logged_at").desc()
    )
    batch = (
        rows.filter(F.col("mode") == F.lit("batch"))
        .withColumn("_latest", F.row_number().over(latest))
        .filter(F.col("_latest") == 1)
        .drop("_latest")
    )
    return batch.unionByName(rows.filter(F.col("mode") != F.lit("batch")))
