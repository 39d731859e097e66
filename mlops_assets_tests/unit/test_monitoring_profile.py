import datetime

import numpy as np
import polars as pl
import pytest

from mlops_assets.monitoring.profile import OTHER, PROFILE_SCHEMA, QUANTILES, profile


def statistics(table: pl.DataFrame, column: str) -> dict:
    rows = table.filter(pl.col("column") == column, pl.col("category").is_null())
    return dict(rows.select("statistic", "value").iter_rows())


def categories(table: pl.DataFrame, column: str, statistic: str) -> dict:
    rows = table.filter(pl.col("column") == column, pl.col("statistic") == statistic)
    return dict(rows.select("category", "value").iter_rows())


def test_numeric_statistics_ignore_nulls_nan_and_infinities():
    rng = np.random.default_rng(0)
    values = rng.normal(10.0, 2.0, 1_000)
    with_gaps = [*values.tolist(), None, float("nan"), float("inf"), None]
    table = profile(pl.DataFrame({"amount": with_gaps}))
    assert table.schema == pl.Schema(PROFILE_SCHEMA)
    stats = statistics(table, "amount")
    assert stats["count"] == 1_004
    assert stats["nulls"] == 4
    assert stats["null_share"] == pytest.approx(4 / 1_004)
    assert stats["mean"] == pytest.approx(values.mean())
    assert stats["std"] == pytest.approx(values.std(ddof=1))
    assert stats["min"] == values.min()
    assert stats["max"] == values.max()
    for name, level in QUANTILES.items():
        assert stats[name] == pytest.approx(np.quantile(values, level)), name
    assert list(stats) == [
        "count",
        "nulls",
        "null_share",
        "mean",
        "std",
        "min",
        *QUANTILES,
        "max",
    ]


def test_categorical_frequencies_list_the_top_values_and_the_rest():
    channel = ["pos"] * 6 + ["online"] * 3 + ["atm"] + [None] * 2
    table = profile(pl.DataFrame({"channel": channel}), top=2)
    stats = statistics(table, "channel")
    assert stats == {"count": 12.0, "nulls": 2.0, "null_share": 2 / 12, "distinct": 3.0}
    assert categories(table, "channel", "category_count") == {"pos": 6, "online": 3, OTHER: 1}
    assert categories(table, "channel", "category_share") == pytest.approx(
        {"pos": 0.6, "online": 0.3, OTHER: 0.1}
    )


def test_no_rest_row_when_every_value_is_listed():
    table = profile(pl.DataFrame({"flag": [True, False, True]}))
    assert categories(table, "flag", "category_count") == {"true": 2, "false": 1}


def test_kinds_are_inferred_or_overridden_and_unknown_types_skipped():
    frame = pl.DataFrame(
        {
            "hour_bucket": [0, 1, 2, 3] * 5,
            "txn_count": list(range(20)),
            "day": [datetime.date(2026, 1, 1)] * 20,
        }
    )
    table = profile(frame)
    kinds = dict(table.select("column", "kind").unique().iter_rows())
    assert kinds == {"hour_bucket": "categorical", "txn_count": "numeric"}
    overridden = profile(frame, ["hour_bucket"], kinds={"hour_bucket": "numeric"})
    assert statistics(overridden, "hour_bucket")["mean"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="needs a kind"):
        profile(frame, ["day"])


def test_an_empty_or_all_null_column_still_gets_its_counts():
    table = profile(pl.DataFrame({"amount": [None, None]}, schema={"amount": pl.Float64}))
    stats = statistics(table, "amount")
    assert stats["count"] == 2
    assert stats["null_share"] == 1.0
    assert stats["mean"] is None
    assert profile(pl.DataFrame(schema={"d": pl.Date})).height == 0
