"""Drift statistics and profiles on Spark equal the polars ones: same methods, scores, verdicts.

One Spark session (local[2]) for the module. The frames are small but cover every method
(Wasserstein, Jensen-Shannon on large references; KS in its exact and asymptotic modes,
chi-square and z on small ones), nulls, NaN and infinities, integer columns on both sides of
the categorical limit, and a day with drift and a day without.
"""

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.defs.resources import SparkResource
from mlops_assets.monitoring.drift import compute_drift
from mlops_assets.monitoring.profile import profile
from mlops_assets.monitoring.spark_stats import spark_drift, spark_profile
from mlops_assets.settings import load_settings

pytestmark = pytest.mark.slow

EXACT_COLUMNS = [
    "column",
    "kind",
    "method",
    "threshold",
    "drifted",
    "psi_level",
    "reference_count",
    "current_count",
    "reference_nulls",
    "current_nulls",
]


@pytest.fixture(scope="module")
def spark():
    return SparkResource.from_settings(load_settings({"MLOPS_SPARK_MASTER": "local[2]"})).session


def day(rows: int, seed: int, shift: float) -> pl.DataFrame:
    """A day of features; `shift` moves every distribution (0: the reference's)."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.0 + shift, 1.0, rows)
    amount[rng.random(rows) < 0.02] = np.nan
    amount[:3] = [np.inf, -np.inf, np.nan]
    hour = rng.integers(0, 24, rows)
    if shift:
        hour = np.where(rng.random(rows) < shift, 3, hour)
    category = rng.choice(["food", "travel", "games", "fuel"], rows, p=[0.4, 0.3, 0.2, 0.1])
    if shift:
        category = np.where(rng.random(rows) < shift, "games", category)
    channel = rng.integers(0, 3 + (1 if shift else 0), rows)
    online = rng.random(rows) < 0.3 + shift / 2
    steps = rng.choice([0.0, 0.5, 1.0], rows, p=[0.5, 0.3, 0.2])
    score = rng.beta(1.0, 20.0 - 10 * shift, rows)
    frame = pl.DataFrame(
        {
            "amount": amount,
            "hour": hour.astype(np.int64),
            "merchant_category": category,
            "channel": channel.astype(np.int32),
            "online": online,
            "steps": steps,
            "score": score,
        }
    )
    # Nulls in every column.
    return frame.with_columns(
        pl.when(pl.int_range(pl.len()) % 97 == 5).then(None).otherwise(pl.all()).name.keep()
    )


def to_spark(spark, frame: pl.DataFrame):
    return spark.createDataFrame(frame.to_arrow())


def assert_drift_equal(expected, found) -> None:
    assert_frame_equal(found.columns.select(EXACT_COLUMNS), expected.columns.select(EXACT_COLUMNS))
    for name in ("score", "psi"):
        np.testing.assert_allclose(
            found.columns.get_column(name).to_numpy(),
            expected.columns.get_column(name).to_numpy(),
            rtol=1e-9,
            atol=1e-12,
        )
    assert found.summary == expected.summary


@pytest.mark.parametrize(
    ("ref_rows", "cur_rows", "shift"),
    [(4000, 3000, 0.0), (4000, 3000, 0.4), (600, 800, 0.0), (600, 800, 0.4), (600, 12000, 0.3)],
    ids=["large-stable", "large-drift", "small-stable", "small-drift", "small-asymptotic-ks"],
)
def test_drift_matches_polars(spark, ref_rows, cur_rows, shift):
    reference, current = day(ref_rows, 1, 0.0), day(cur_rows, 2, shift)
    expected = compute_drift(reference, current)
    found = spark_drift(to_spark(spark, reference), to_spark(spark, current))
    assert_drift_equal(expected, found)
    methods = set(expected.columns.get_column("method"))
    if ref_rows > 1000:
        assert methods == {"wasserstein", "jensenshannon"}
    else:
        assert {"ks", "chisquare", "z"} <= methods
    assert expected.summary.dataset_drift is (shift > 0)


def test_drift_with_kinds_and_explicit_columns(spark):
    reference, current = day(2000, 3, 0.0), day(1500, 4, 0.2)
    kinds = {"hour": "categorical", "steps": "categorical", "channel": "numeric"}
    columns = ["hour", "steps", "channel", "score"]
    expected = compute_drift(reference, current, columns, kinds=kinds, psi_bins=5)
    found = spark_drift(
        to_spark(spark, reference), to_spark(spark, current), columns, kinds=kinds, psi_bins=5
    )
    assert_drift_equal(expected, found)


def test_drift_refuses_a_missing_column(spark):
    reference = to_spark(spark, day(50, 5, 0.0))
    with pytest.raises(ValueError, match="'nope' is missing"):
        spark_drift(reference, reference, ["nope"])


def test_empty_side_gives_a_row_without_method(spark):
    reference = day(300, 6, 0.0)
    current = reference.with_columns(pl.lit(None, dtype=pl.Float64).alias("amount"))
    expected = compute_drift(reference, current, ["amount"])
    found = spark_drift(to_spark(spark, reference), to_spark(spark, current), ["amount"])
    assert_drift_equal(expected, found)
    assert found.columns.get_column("method").to_list() == [None]


@pytest.mark.parametrize("shift", [0.0, 0.4], ids=["stable", "drift"])
def test_profile_matches_polars(spark, shift):
    frame = day(3000, 7, shift)
    expected = profile(frame, top=3)
    found = spark_profile(to_spark(spark, frame), top=3)
    assert_frame_equal(found.drop("value"), expected.drop("value"))
    np.testing.assert_allclose(
        found.get_column("value").to_numpy(),
        expected.get_column("value").to_numpy(),
        rtol=1e-9,
        atol=1e-12,
    )


def test_profile_of_one_value_and_of_nulls_only(spark):
    frame = pl.DataFrame({"one": [2.5, None], "none": pl.Series([None, None], dtype=pl.Float64)})
    expected = profile(frame, ["one", "none"], kinds={"one": "numeric", "none": "numeric"})
    found = spark_profile(
        to_spark(spark, frame), ["one", "none"], kinds={"one": "numeric", "none": "numeric"}
    )
    assert_frame_equal(found, expected)
