"""Profile of a frame: per column counts, nulls, moments, quantiles and top categories.

The result is long: one row per column and statistic (`PROFILE_SCHEMA`), so numeric and
categorical columns share one Delta table and a new statistic needs no schema change. A row
holds its number in `value`; category frequencies name their category in `category` (null on
every other row). Statistics:

- every column: `count` (rows), `nulls`, `null_share`;
- numeric: `mean`, `std` (sample, ddof 1), `min`, `p01`, `p05`, `p25`, `p50`, `p75`, `p95`,
  `p99`, `max` over the non-null values (linear interpolation between order statistics; NaN
  and +-inf are counted as nulls, as the drift statistics drop them);
- categorical: `distinct` (non-null values), then for each of the `top` most frequent
  values `category_count` and `category_share` (share of non-null rows), and the rest summed
  under the category `OTHER` when there is a rest.

Kinds are decided as in `drift.infer_kind`, with the same override.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

from mlops_assets.monitoring.drift import Kind, infer_kind

PROFILE_SCHEMA = {
    "column": pl.String,
    "kind": pl.String,
    "statistic": pl.String,
    "category": pl.String,
    "value": pl.Float64,
}
QUANTILES = {
    "p01": 0.01,
    "p05": 0.05,
    "p25": 0.25,
    "p50": 0.5,
    "p75": 0.75,
    "p95": 0.95,
    "p99": 0.99,
}
TOP_CATEGORIES = 20
OTHER = "__other__"


def profile(
    frame: pl.DataFrame,
    columns: Sequence[str] | None = None,
    *,
    kinds: Mapping[str, Kind] | None = None,
    top: int = TOP_CATEGORIES,
) -> pl.DataFrame:
    """Long-format profile of `frame` (see the module docstring for the statistics).

    Args:
        frame: The rows to describe (one window of one model version, say).
        columns: Columns to describe (default: every column with a known kind).
        kinds: Per-column kind overriding the dtype inference.
        top: Number of most frequent categories listed per categorical column.

    Returns:
        Rows of `PROFILE_SCHEMA`, columns in the given order.

    Raises:
        ValueError: A named column has no kind.
    """
    overrides = dict(kinds or {})
    names = list(columns) if columns is not None else list(frame.columns)
    parts = []
    for name in names:
        series = frame.get_column(name)
        kind = overrides.get(name) or infer_kind(series)
        if kind is None:
            if columns is None:
                continue
            raise ValueError(f"column {name!r} ({series.dtype}) needs a kind in `kinds`")
        if kind == "numeric":
            parts.append(_numeric(series))
        else:
            parts.append(_categorical(series, top))
    if not parts:
        return pl.DataFrame(schema=PROFILE_SCHEMA)
    return pl.concat(parts)


def _rows(name: str, kind: str, statistics: dict[str, float | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "column": name,
            "kind": kind,
            "statistic": list(statistics),
            "category": None,
            "value": list(statistics.values()),
        },
        schema=PROFILE_SCHEMA,
    )


def _counts(series: pl.Series, values: pl.Series) -> dict[str, float | None]:
    rows = series.len()
    nulls = rows - values.len()
    return {
        "count": float(rows),
        "nulls": float(nulls),
        "null_share": nulls / rows if rows else None,
    }


def _numeric(series: pl.Series) -> pl.DataFrame:
    values = series.filter(series.is_finite()) if series.dtype.is_float() else series.drop_nulls()
    values = values.cast(pl.Float64)
    statistics = _counts(series, values)
    summary = values.to_frame("x").select(
        pl.col("x").mean().alias("mean"),
        pl.col("x").std(ddof=1).alias("std"),
        pl.col("x").min().alias("min"),
        *[pl.col("x").quantile(q, "linear").alias(k) for k, q in QUANTILES.items()],
        pl.col("x").max().alias("max"),
    )
    statistics.update(summary.row(0, named=True))
    return _rows(series.name, "numeric", statistics)


def _categorical(series: pl.Series, top: int) -> pl.DataFrame:
    values = series.filter(series.is_finite()) if series.dtype.is_float() else series.drop_nulls()
    statistics = _counts(series, values)
    statistics["distinct"] = float(values.n_unique())
    head = _rows(series.name, "categorical", statistics)
    frequencies = (
        values.cast(pl.String)
        .rename("category")
        .value_counts(name="n")
        .sort(["n", "category"], descending=[True, False])
    )
    listed = frequencies.head(top)
    rest = values.len() - int(listed.get_column("n").sum())
    if rest > 0:
        listed = pl.concat(
            [listed, pl.DataFrame({"category": [OTHER], "n": [rest]}, schema=listed.schema)]
        )
    total = max(values.len(), 1)
    per_category = listed.select(
        pl.lit(series.name).alias("column"),
        pl.lit("categorical").alias("kind"),
        pl.lit(["category_count", "category_share"]).alias("statistic"),
        "category",
        pl.concat_list(pl.col("n").cast(pl.Float64), pl.col("n").cast(pl.Float64) / total).alias(
            "value"
        ),
    ).explode("statistic", "value", empty_as_null=False)
    return pl.concat([head, per_category.cast(PROFILE_SCHEMA)])
