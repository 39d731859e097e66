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
- Quantiles are exact, not `percentile_approx`: the distinct values of a column, with their
  counts per side, are cut into ranges (bucket edges from `approxQuantile`, which only balance
  the work), each range sorted on an executor, and cumulative counts carried across ranges from
  the per-range totals collected on the driver. An order statistic is then the value whose
  cumulative count first passes its rank, and the linear-interpolation quantiles (profile
  percentiles, the PSI bin edges) equal polars' and numpy's.
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

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from mlops_assets.monitoring.drift import (
    DISCRETE_NUMERIC_VALUES,
    DRIFT_SCHEMA,
    INTEGER_CARDINALITY_LIMIT,
    LARGE_REFERENCE_ROWS,
    PSI_BINS,
    WASSERSTEIN_MIN_STD,
    DriftResult,
    DriftSummary,
    Kind,
    _chisquare_p_value,
    _psi,
    _thresholds,
    _z_p_value,
    jensen_shannon,
    psi_categorical,
    psi_level,
)
from mlops_assets.monitoring.profile import OTHER, PROFILE_SCHEMA, QUANTILES, TOP_CATEGORIES
from mlops_assets.monitoring.thresholds import Thresholds, column_drifted

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

# scipy's `ks_2samp` runs its exact test when neither sample exceeds this many values.
KS_EXACT_MAX = 10_000
# Side markers of the value/count frames.
_REF, _CUR = "r", "c"


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


class _Cumulative:
    """Distinct values of one column with per-side counts and cumulative counts.

    Columns: `v` (the value), `r`/`c` (its count in the reference/current sample), `cr`/`cc`
    (counts of values at or below `v`) and `nv` (the next larger distinct value, null for the
    largest). Ranges of values are sorted on the executors; their totals, collected on the
    driver, carry the cumulative counts from one range to the next.
    """

    def __init__(self, counts: DataFrame):
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        buckets = _buckets(counts)
        probabilities = [k / buckets for k in range(1, buckets)]
        edges = sorted(set(counts.approxQuantile("v", probabilities, 0.01))) if buckets > 1 else []
        bucket = F.lit(0)
        for edge in edges:
            bucket = bucket + (F.col("v") > F.lit(edge)).cast("int")
        ranged = counts.withColumn("b", bucket)
        totals = (
            ranged.groupBy("b")
            .agg(F.sum("r").alias("r"), F.sum("c").alias("c"), F.min("v").alias("lo"))
            .collect()
        )
        offsets_r: dict[int, int] = {}
        offsets_c: dict[int, int] = {}
        next_low: dict[int, float] = {}
        seen_r = seen_c = 0
        ordered = sorted(totals, key=lambda row: row["b"])
        for index, row in enumerate(ordered):
            offsets_r[row["b"]], offsets_c[row["b"]] = seen_r, seen_c
            seen_r += int(row["r"])
            seen_c += int(row["c"])
            if index + 1 < len(ordered):
                next_low[row["b"]] = float(ordered[index + 1]["lo"])

        def lookup(values: Mapping[int, float | int], kind: str) -> Column:
            if not values:
                return F.lit(None).cast(kind)
            pairs = [item for b, x in values.items() for item in (F.lit(b), F.lit(x))]
            return F.element_at(F.create_map(*pairs), F.col("b")).cast(kind)

        running = Window.partitionBy("b").orderBy("v").rowsBetween(Window.unboundedPreceding, 0)
        following = Window.partitionBy("b").orderBy("v")
        self.frame = ranged.select(
            "v",
            "r",
            "c",
            (F.sum("r").over(running) + lookup(offsets_r, "bigint")).alias("cr"),
            (F.sum("c").over(running) + lookup(offsets_c, "bigint")).alias("cc"),
            F.coalesce(F.lead("v").over(following), lookup(next_low, "double")).alias("nv"),
        )
        self.n_ref, self.n_cur = seen_r, seen_c

    def order_statistics(self, side: str, ranks: Sequence[int]) -> dict[int, float]:
        """The values at 0-based `ranks` of one side's sorted sample."""
        from pyspark.sql import functions as F

        count, cumulative = (F.col("r"), F.col("cr")) if side == _REF else (F.col("c"), F.col("cc"))
        wanted = sorted(set(int(k) for k in ranks))
        hit = F.lit(False)
        for rank in wanted:
            hit = hit | ((cumulative - count <= F.lit(rank)) & (cumulative > F.lit(rank)))
        rows = self.frame.filter((count > 0) & hit).select("v", (cumulative - count).alias("s"))
        spans = sorted((int(row["s"]), float(row["v"])) for row in rows.collect())
        starts = [s for s, _ in spans]
        found = {}
        for rank in wanted:
            index = int(np.searchsorted(starts, rank, side="right")) - 1
            found[rank] = spans[index][1]
        return found

    def quantiles(self, side: str, probabilities: Sequence[float]) -> list[float]:
        """Linear-interpolation quantiles of one side (`numpy.quantile`'s default)."""
        size = self.n_ref if side == _REF else self.n_cur
        positions = np.asarray(probabilities, dtype=np.float64) * (size - 1)
        below = np.floor(positions).astype(np.int64)
        above = np.minimum(below + 1, size - 1)
        values = self.order_statistics(side, [*below.tolist(), *above.tolist()])
        low = np.array([values[int(k)] for k in below])
        high = np.array([values[int(k)] for k in above])
        return (low + (high - low) * (positions - below)).tolist()


def _counts_frame(reference: DataFrame | None, current: DataFrame, name: str) -> DataFrame:
    """Distinct valid values of a column with their counts per side (`v`, `r`, `c`)."""
    from pyspark.sql import functions as F

    cur = _numbers(current, name).select("v", F.lit(0).alias("r"), F.lit(1).alias("c"))
    if reference is not None:
        ref = _numbers(reference, name).select("v", F.lit(1).alias("r"), F.lit(0).alias("c"))
        cur = ref.unionByName(cur)
    return cur.groupBy("v").agg(F.sum("r").alias("r"), F.sum("c").alias("c"))


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
    overrides = dict(kinds or {})
    limits = _thresholds(thresholds, drift_share)
    names = list(columns) if columns is not None else list(current.columns)
    chosen: list[tuple[str, Kind]] = []
    for name in names:
        if name not in reference.columns or name not in current.columns:
            raise ValueError(f"column {name!r} is missing from the reference or current frame")
        kind = overrides.get(name) or spark_kind(current, name)
        if kind is None:
            if columns is not None:
                dtype = current.schema[name].dataType.simpleString()
                raise ValueError(f"column {name!r} ({dtype}) needs a kind in `kinds`")
            continue
        chosen.append((name, kind))
    ref_counts = _side_counts(reference, [n for n, _ in chosen])
    cur_counts = _side_counts(current, [n for n, _ in chosen])
    rows = [
        _column_drift(
            name, kind, reference, current, ref_counts[name], cur_counts[name], limits, psi_bins
        )
        for name, kind in chosen
    ]
    table = pl.DataFrame(rows, schema=DRIFT_SCHEMA, orient="row")
    drifted = int(table.get_column("drifted").sum())
    share = drifted / table.height if table.height else 0.0
    summary = DriftSummary(
        columns=table.height,
        drifted_columns=drifted,
        drifted_share=share,
        drift_share=limits.drift_share,
        dataset_drift=bool(table.height) and limits.dataset_drifted(share),
    )
    return DriftResult(columns=table, summary=summary)


def _column_drift(
    name: str,
    kind: Kind,
    reference: DataFrame,
    current: DataFrame,
    ref_side: tuple[int, int],
    cur_side: tuple[int, int],
    limits: Thresholds,
    psi_bins: int,
) -> tuple:
    from pyspark.sql import functions as F

    ref_count, cur_count = ref_side[0], cur_side[0]
    counts = (ref_count, cur_count, ref_side[1] - ref_count, cur_side[1] - cur_count)
    if not ref_count or not cur_count:
        return (name, kind, None, None, None, False, None, None, *counts)
    large = ref_count > LARGE_REFERENCE_ROWS
    if kind == "categorical":
        frequencies = _frequencies(reference, current, name, numeric=False)
        psi = psi_categorical(frequencies)
        method, score = _categorical_test(frequencies, large)
    else:
        values = _counts_frame(reference, current, name)
        few = values.limit(DISCRETE_NUMERIC_VALUES + 1).count() <= DISCRETE_NUMERIC_VALUES
        cumulative = _Cumulative(values)
        edges = np.unique(cumulative.quantiles(_REF, np.arange(1, psi_bins) / psi_bins))
        aggregates = [
            F.sum(F.when(F.col("v") <= F.lit(float(e)), F.col(side))).alias(f"{side}{i}")
            for i, e in enumerate(edges)
            for side in ("r", "c")
        ]
        cdf_gap = F.abs(F.col("cr") / F.lit(ref_count) - F.col("cc") / F.lit(cur_count))
        summary = cumulative.frame.select(
            F.sum(cdf_gap * (F.col("nv") - F.col("v"))).alias("w1"),
            F.max(cdf_gap).alias("d"),
            *aggregates,
        ).collect()[0]
        below_r = np.array([int(summary[f"r{i}"] or 0) for i in range(len(edges))], np.int64)
        below_c = np.array([int(summary[f"c{i}"] or 0) for i in range(len(edges))], np.int64)
        psi = _psi(
            np.diff(below_r, prepend=0, append=ref_count),
            np.diff(below_c, prepend=0, append=cur_count),
        )
        if few:
            frequencies = _frequencies(reference, current, name, numeric=True)
            method, score = _categorical_test(frequencies, large)
        elif large:
            std = _numbers(reference, name).select(F.stddev_pop("v")).collect()[0][0]
            method = "wasserstein"
            score = float(summary["w1"] or 0.0) / max(float(std or 0.0), WASSERSTEIN_MIN_STD)
        else:
            method = "ks"
            score = _ks_p_value(reference, current, name, float(summary["d"]), ref_count, cur_count)
    threshold = getattr(limits, method)
    drifted = column_drifted(method, score, threshold)
    return (
        name,
        kind,
        method,
        score,
        threshold,
        bool(drifted),
        psi,
        psi_level(psi, limits),
        *counts,
    )


def _categorical_test(frequencies: pl.DataFrame, large: bool) -> tuple[str, float]:
    if large:
        return "jensenshannon", jensen_shannon(frequencies)
    if frequencies.height > 2:
        return "chisquare", _chisquare_p_value(frequencies)
    return "z", _z_p_value(frequencies)


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
        if kind == "numeric":
            parts.append(_numeric_profile(frame, name))
        else:
            parts.append(_categorical_profile(frame, name, top))
    if not parts:
        return pl.DataFrame(schema=PROFILE_SCHEMA)
    return pl.concat(parts)


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


def _numeric_profile(frame: DataFrame, name: str) -> pl.DataFrame:
    from pyspark.sql import functions as F

    rows, valid, statistics = _head_counts(frame, name)
    moments = (
        _numbers(frame, name)
        .select(
            F.mean("v").alias("mean"),
            F.stddev_samp("v").alias("std"),
            F.min("v").alias("min"),
            F.max("v").alias("max"),
        )
        .collect()[0]
    )
    statistics.update(mean=moments["mean"], std=moments["std"] if valid > 1 else None)
    statistics["min"] = moments["min"]
    if valid:
        cumulative = _Cumulative(_counts_frame(None, frame, name))
        statistics.update(
            zip(QUANTILES, cumulative.quantiles(_CUR, list(QUANTILES.values())), strict=True)
        )
    else:
        statistics.update(dict.fromkeys(QUANTILES))
    statistics["max"] = moments["max"]
    return _profile_rows(name, "numeric", statistics)


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
