import datetime
import math

import numpy as np
import polars as pl
import pytest
from scipy import stats
from scipy.spatial import distance

from mlops_assets.monitoring import drift as drift_module
from mlops_assets.monitoring.drift import (
    DRIFT_SCHEMA,
    PSI_FLOOR,
    compute_drift,
    infer_kind,
    jensen_shannon,
    psi_level,
    psi_numeric,
    sorted_quantiles,
    wasserstein_normed,
    wasserstein_sorted,
)


def frequencies(reference: dict, current: dict) -> pl.DataFrame:
    keys = sorted(set(reference) | set(current))
    return pl.DataFrame(
        {
            "value": keys,
            "reference": [reference.get(k, 0) for k in keys],
            "current": [current.get(k, 0) for k in keys],
        }
    )


def transactions(seed: int, rows: int, *, amount_scale=50.0, online_share=0.3, null_share=0.0):
    """A frame like the inference log's inputs: numeric, discrete, categorical columns."""
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, amount_scale, rows).round(2)
    if null_share:
        amount[rng.random(rows) < null_share] = np.nan
    return pl.DataFrame(
        {
            "amount": amount,
            "score": rng.beta(1.0, 30.0, rows),
            "txn_count_24h": rng.poisson(4.0, rows).astype(np.int64) + rng.integers(0, 30, rows),
            "channel": np.where(rng.random(rows) < online_share, "online", "pos"),
            "country": rng.choice(["FR", "DE", "ES", "IT", "NL"], rows),
            "hour_bucket": rng.integers(0, 4, rows),
        }
    )


# --- Wasserstein --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "m"), [(1, 1), (1, 7), (7, 1), (5, 5), (3, 9), (1000, 997), (250, 1000), (4096, 6144)]
)
def test_wasserstein_matches_scipy_exactly(n, m):
    rng = np.random.default_rng(n * 10_000 + m)
    # Rounding makes ties, within and across samples.
    a = np.sort(rng.normal(0, 1, n).round(1))
    b = np.sort(rng.normal(0.4, 1.5, m).round(1))
    expected = stats.wasserstein_distance(a, b)
    assert wasserstein_sorted(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert wasserstein_sorted(b, a) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_wasserstein_over_many_random_sizes():
    rng = np.random.default_rng(7)
    for _ in range(200):
        n, m = (int(x) for x in rng.integers(1, 400, 2))
        a = np.sort(rng.exponential(3.0, n).round(int(rng.integers(0, 3))))
        b = np.sort(rng.exponential(3.5, m).round(int(rng.integers(0, 3))))
        expected = stats.wasserstein_distance(a, b)
        assert wasserstein_sorted(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_wasserstein_across_chunk_boundaries():
    rng = np.random.default_rng(8)
    a = np.sort(rng.gamma(2.0, 50.0, 150_000).round(2))
    b = np.sort(rng.gamma(2.2, 50.0, 70_001).round(2))
    expected = stats.wasserstein_distance(a, b)
    assert wasserstein_sorted(a, b) == pytest.approx(expected, rel=1e-9)


def test_wasserstein_is_normed_by_the_population_std_of_the_reference():
    reference = np.sort(np.array([0.0, 1.0, 2.0, 3.0]))
    current = reference + 0.5
    # np.std (ddof 0) of [0, 1, 2, 3] is sqrt(1.25); shifting by 0.5 moves every quantile 0.5.
    assert wasserstein_normed(reference, current) == pytest.approx(0.5 / math.sqrt(1.25))


def test_wasserstein_norm_has_a_floor_for_a_constant_reference():
    reference = np.full(10, 2.0)
    current = np.full(10, 2.0005)
    assert wasserstein_normed(reference, current) == pytest.approx(0.0005 / 0.001)


# --- Jensen-Shannon ----------------------------------------------------------------------


def test_jensen_shannon_matches_scipy_with_natural_log_and_absent_values():
    table = frequencies({"a": 50, "b": 30, "c": 20}, {"a": 10, "b": 60, "d": 30})
    expected = distance.jensenshannon(
        table.get_column("reference").to_numpy(), table.get_column("current").to_numpy()
    )
    assert jensen_shannon(table) == pytest.approx(expected, rel=1e-12)


def test_jensen_shannon_of_disjoint_values_is_its_maximum():
    assert jensen_shannon(frequencies({"a": 3}, {"b": 5})) == pytest.approx(math.sqrt(math.log(2)))
    assert jensen_shannon(frequencies({"a": 3, "b": 1}, {"a": 6, "b": 2})) == pytest.approx(0.0)


# --- PSI ---------------------------------------------------------------------------------


def test_psi_of_the_same_sample_is_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(3)
    reference = np.sort(rng.normal(0, 1, 50_000))
    assert psi_numeric(reference, reference) == pytest.approx(0.0, abs=1e-12)
    small = psi_numeric(reference, np.sort(rng.normal(0.1, 1, 50_000)))
    large = psi_numeric(reference, np.sort(rng.normal(0.5, 1, 50_000)))
    assert 0 < small < 0.1 < large


def test_psi_bins_are_reference_deciles_and_empty_bins_use_the_floor():
    reference = np.arange(100, dtype=np.float64)
    # Every current value falls in the top decile of the reference.
    current = np.full(10, 99.0)
    ref_share, cur_share = 0.1, 1.0
    # Nine bins where current is empty (floor), one where it holds everything.
    expected = 9 * (PSI_FLOOR - ref_share) * math.log(PSI_FLOOR / ref_share) + (
        cur_share - ref_share
    ) * math.log(cur_share / ref_share)
    assert psi_numeric(reference, current) == pytest.approx(expected)


def test_psi_levels():
    assert [psi_level(v) for v in (0.0, 0.099, 0.1, 0.249, 0.25, None)] == [
        "stable",
        "stable",
        "moderate",
        "moderate",
        "major",
        None,
    ]


def test_sorted_quantiles_equal_numpy():
    rng = np.random.default_rng(5)
    levels = np.linspace(0, 1, 41)
    for size in (1, 2, 3, 10, 1001):
        values = np.sort(rng.normal(size=size))
        np.testing.assert_allclose(sorted_quantiles(values, levels), np.quantile(values, levels))


# --- kinds and methods -------------------------------------------------------------------


def test_kinds_follow_evidently_inference():
    frame = pl.DataFrame(
        {
            "amount": [1.5, 2.5] * 10,
            "few_ints": list(range(10)) * 2,
            "many_ints": list(range(20)),
            "channel": ["a", "b"] * 10,
            "flag": [True, False] * 10,
            "day": [datetime.date(2026, 1, 1)] * 20,
        }
    )
    kinds = {c: infer_kind(frame.get_column(c)) for c in frame.columns}
    assert kinds == {
        "amount": "numeric",
        "few_ints": "categorical",
        "many_ints": "numeric",
        "channel": "categorical",
        "flag": "categorical",
        "day": None,
    }


def test_columns_without_a_kind_are_left_out_unless_named():
    frame = pl.DataFrame({"amount": [1.0, 2.0, 3.0], "day": [datetime.date(2026, 1, 1)] * 3})
    assert compute_drift(frame, frame).columns.get_column("column").to_list() == ["amount"]
    with pytest.raises(ValueError, match="needs a kind"):
        compute_drift(frame, frame, ["day"])
    with pytest.raises(ValueError, match="missing"):
        compute_drift(frame, frame.drop("amount"), ["amount"])


def test_methods_by_reference_size_and_distinct_values():
    large = transactions(1, 5_000)
    small = transactions(2, 800)
    binary = {"channel": "categorical"}
    methods_large = dict(
        compute_drift(large, transactions(3, 5_000), kinds=binary)
        .columns.select("column", "method")
        .iter_rows()
    )
    assert methods_large == {
        "amount": "wasserstein",
        "score": "wasserstein",
        "txn_count_24h": "wasserstein",
        "channel": "jensenshannon",
        "country": "jensenshannon",
        "hour_bucket": "jensenshannon",
    }
    methods_small = dict(
        compute_drift(small, transactions(4, 800)).columns.select("column", "method").iter_rows()
    )
    assert methods_small == {
        "amount": "ks",
        "score": "ks",
        "txn_count_24h": "ks",
        "channel": "z",
        "country": "chisquare",
        "hour_bucket": "chisquare",
    }


def test_a_numeric_column_with_at_most_five_values_is_compared_by_its_values():
    rng = np.random.default_rng(11)
    reference = pl.DataFrame({"rate": rng.choice([0.0, 0.25, 0.5, 1.0], 2_000)})
    current = pl.DataFrame({"rate": rng.choice([0.0, 0.25, 0.5, 1.0, 2.0], 2_000)})
    row = compute_drift(reference, current, kinds={"rate": "numeric"}).columns.row(0, named=True)
    assert row["kind"] == "numeric"
    assert row["method"] == "jensenshannon"


def test_small_reference_tests_match_scipy():
    rng = np.random.default_rng(12)
    reference = pl.DataFrame({"x": rng.normal(0, 1, 300), "c": rng.choice(["a", "b", "c"], 300)})
    current = pl.DataFrame({"x": rng.normal(0.3, 1, 200), "c": rng.choice(["a", "b", "c"], 200)})
    rows = {r["column"]: r for r in compute_drift(reference, current).columns.iter_rows(named=True)}
    ks = stats.ks_2samp(reference.get_column("x").to_numpy(), current.get_column("x").to_numpy())
    assert rows["x"]["score"] == pytest.approx(ks.pvalue)
    assert rows["x"]["drifted"] == (ks.pvalue <= 0.05)
    ref_counts = reference.get_column("c").value_counts().sort("c").get_column("count").to_numpy()
    cur_counts = current.get_column("c").value_counts().sort("c").get_column("count").to_numpy()
    chi = stats.chisquare(cur_counts, ref_counts * (200 / 300))
    assert rows["c"]["score"] == pytest.approx(chi.pvalue)


def test_z_test_of_a_binary_column():
    reference = pl.DataFrame({"flag": [True] * 300 + [False] * 700})
    same = pl.DataFrame({"flag": [True] * 30 + [False] * 70})
    shifted = pl.DataFrame({"flag": [True] * 60 + [False] * 40})
    quiet = compute_drift(reference, same).columns.row(0, named=True)
    loud = compute_drift(reference, shifted).columns.row(0, named=True)
    assert quiet["method"] == loud["method"] == "z"
    assert quiet["score"] == pytest.approx(1.0)
    assert not quiet["drifted"]
    # p1 = 0.7 (share of the non-first value), p2 = 0.4, pooled over 1100 rows.
    pooled = (0.7 * 1000 + 0.4 * 100) / 1100
    z = 0.3 / math.sqrt(pooled * (1 - pooled) * (1 / 1000 + 1 / 100))
    assert loud["score"] == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert loud["drifted"]


# --- nulls, thresholds, summary ----------------------------------------------------------


def test_nulls_nan_and_infinities_are_dropped_and_counted():
    reference = pl.DataFrame(
        {"amount": [1.0, 2.0, None, float("nan"), float("inf")] * 1000, "c": ["a", None] * 2500}
    )
    current = pl.DataFrame({"amount": [1.0, 2.0, None] * 500, "c": ["a", "a", None] * 500})
    rows = {r["column"]: r for r in compute_drift(reference, current).columns.iter_rows(named=True)}
    assert rows["amount"]["reference_count"] == 2000
    assert rows["amount"]["reference_nulls"] == 3000
    assert rows["amount"]["current_nulls"] == 500
    # Cleaned, both sides hold 1.0 and 2.0 in equal shares: no drift at all.
    assert rows["amount"]["method"] == "jensenshannon"
    assert rows["amount"]["score"] == pytest.approx(0.0)
    assert rows["c"]["score"] == pytest.approx(0.0)
    assert rows["c"]["reference_nulls"] == 2500


def test_a_column_with_no_values_left_gets_no_verdict():
    reference = pl.DataFrame({"amount": [1.0, 2.0] * 1000})
    current = pl.DataFrame({"amount": [None, float("nan")] * 10})
    row = compute_drift(reference, current).columns.row(0, named=True)
    assert row["method"] is None
    assert row["score"] is None
    assert row["drifted"] is False
    assert row["current_nulls"] == 20


def test_thresholds_and_drift_share_are_configurable():
    reference = transactions(21, 5_000)
    current = transactions(22, 5_000, amount_scale=60.0)
    default = compute_drift(reference, current)
    row = default.columns.filter(pl.col("column") == "amount").row(0, named=True)
    assert row["threshold"] == 0.1
    assert row["drifted"] == (row["score"] >= 0.1)
    assert default.columns.schema == pl.Schema(DRIFT_SCHEMA)
    strict = compute_drift(reference, current, thresholds={"wasserstein": row["score"] + 1e-9})
    assert not strict.columns.filter(pl.col("column") == "amount").get_column("drifted").item()
    exact = compute_drift(reference, current, thresholds={"wasserstein": row["score"]})
    assert exact.columns.filter(pl.col("column") == "amount").get_column("drifted").item()
    one_of_six = compute_drift(reference, current, drift_share=1 / 6)
    assert one_of_six.summary.drifted_columns >= 1
    assert one_of_six.summary.dataset_drift
    assert not default.summary.dataset_drift
    assert default.summary.drifted_share == default.summary.drifted_columns / 6


# --- behaviour the drift sensor relies on ------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_noise_stays_quiet(seed):
    reference = transactions(1000 + seed, 20_000, null_share=0.02)
    current = transactions(2000 + seed, 5_000, null_share=0.02)
    result = compute_drift(reference, current)
    table = result.columns
    assert not table.get_column("drifted").any(), table
    assert (table.get_column("score") < 0.05).all()
    assert (table.get_column("psi") < 0.1).all()
    assert not result.summary.dataset_drift


def test_real_drift_is_detected():
    reference = transactions(31, 20_000)
    current = transactions(32, 5_000, amount_scale=75.0, online_share=0.6)
    result = compute_drift(reference, current)
    drifted = set(result.columns.filter("drifted").get_column("column"))
    assert drifted == {"amount", "channel"}
    levels = dict(result.columns.select("column", "psi_level").iter_rows())
    assert levels["amount"] in {"moderate", "major"}
    assert levels["channel"] == "major"


def test_columns_spread_over_threads_give_the_rows_of_one_thread(monkeypatch):
    # 150,000 rows a side is above the size at which columns run on several threads.
    reference = transactions(11, 150_000, null_share=0.01)
    current = transactions(12, 149_990, amount_scale=60.0, online_share=0.4)
    threaded = compute_drift(reference, current)
    monkeypatch.setattr(drift_module, "_PARALLEL_ROWS", 10**12)
    single = compute_drift(reference, current)
    assert threaded.columns.equals(single.columns)
    assert threaded.summary == single.summary
    assert threaded.columns.get_column("column").to_list() == [
        c for c in current.columns if infer_kind(current.get_column(c)) is not None
    ]
