"""Our drift statistics against Evidently 0.7.23's DataDriftPreset on the same data.

Evidently runs in this process (its import alone takes seconds, so these tests are slow). Each
column's method, score and threshold must match, its verdict be the same, and so must the
dataset-level count and share of drifted columns.
"""

import numpy as np
import polars as pl
import pytest

from mlops_assets.monitoring.drift import compute_drift
from mlops_assets.monitoring.report import drift_report_html

pytestmark = pytest.mark.slow

# Evidently names methods by their display names.
DISPLAY_NAMES = {
    "wasserstein": "Wasserstein distance (normed)",
    "jensenshannon": "Jensen-Shannon distance",
    "ks": "K-S p_value",
    "chisquare": "chi-square p_value",
    "z": "Z-test p_value",
}


def with_nulls(rng, values, share):
    values = values.astype(object) if values.dtype.kind in "UO" else values.astype(float)
    values[rng.random(values.size) < share] = None if values.dtype == object else np.nan
    return values


def window(seed: int, rows: int, *, drift: bool) -> pl.DataFrame:
    """Numeric, discrete and categorical columns, some drifted (when `drift`), most with nulls."""
    rng = np.random.default_rng(seed)
    shift = 1.0 if drift else 0.0
    countries = ["FR", "DE", "ES", "IT", "NL", "BE"]
    country_p = [0.3, 0.25, 0.15, 0.15, 0.1, 0.05]
    drifted_p = [0.1, 0.1, 0.15, 0.15, 0.2, 0.3]
    return pl.DataFrame(
        {
            # Drifted: the mean moves by about a third of a standard deviation.
            "amount": with_nulls(rng, rng.gamma(2.0, 50.0 + 20.0 * shift, rows).round(2), 0.03),
            # Not drifted.
            "amount_mean_7d": with_nulls(rng, rng.gamma(2.0, 40.0, rows), 0.05),
            "score": rng.beta(1.0, 30.0, rows),
            # Drifted, slightly: a small location shift.
            "seconds_since_card_txn": rng.exponential(3_600.0, rows) + 900.0 * shift,
            # Discrete numeric (at most 5 values): compared by value.
            "online_share_bucket": with_nulls(
                rng, rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], rows), 0.02
            ),
            # Categorical, drifted.
            "country": with_nulls(
                rng, rng.choice(countries, rows, p=drifted_p if drift else country_p), 0.01
            ),
            # Categorical, not drifted.
            "channel": with_nulls(rng, rng.choice(["online", "pos", "atm"], rows), 0.02),
            # Small integers are categorical for both.
            "hour_bucket": rng.integers(0, 6, rows),
            "is_foreign": rng.random(rows) < 0.1,
        }
    )


def evidently_drift(reference: pl.DataFrame, current: pl.DataFrame):
    from evidently import Report
    from evidently.presets import DataDriftPreset

    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        current_data=current.to_pandas(), reference_data=reference.to_pandas()
    )
    result = snapshot.dict()
    columns, summary = {}, None
    for metric in result["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            columns[config["column"]] = {
                "method": config["method"],
                "threshold": config["threshold"],
                "score": metric["value"],
            }
        elif config["type"].endswith("DriftedColumnsCount"):
            summary = metric["value"]
    for test in result["tests"]:
        if test["id"] == "drift":
            column = test["metric_config"]["params"]["column"]
            columns[column]["drifted"] = test["status"] == "FAIL"
    return columns, summary


def assert_same(reference: pl.DataFrame, current: pl.DataFrame):
    ours = compute_drift(reference, current)
    theirs, summary = evidently_drift(reference, current)
    assert set(ours.columns.get_column("column")) == set(theirs)
    for row in ours.columns.iter_rows(named=True):
        expected = theirs[row["column"]]
        assert DISPLAY_NAMES[row["method"]] == expected["method"], row
        assert row["threshold"] == expected["threshold"], row
        assert row["score"] == pytest.approx(expected["score"], rel=1e-6, abs=1e-9), row
        assert row["drifted"] == expected["drifted"], row
    assert ours.summary.drifted_columns == summary["count"]
    assert ours.summary.drifted_share == pytest.approx(summary["share"])
    return ours


def test_large_reference_scores_and_verdicts_match_evidently():
    reference = window(1, 20_000, drift=False)
    current = window(2, 8_000, drift=True)
    ours = assert_same(reference, current)
    methods = dict(ours.columns.select("column", "method").iter_rows())
    assert methods["amount"] == "wasserstein"
    assert methods["online_share_bucket"] == "jensenshannon"
    assert methods["country"] == "jensenshannon"
    drifted = set(ours.columns.filter("drifted").get_column("column"))
    assert {"amount", "seconds_since_card_txn", "country"} <= drifted
    assert not {"amount_mean_7d", "score", "channel"} & drifted


def test_same_distribution_matches_evidently_and_stays_quiet():
    ours = assert_same(window(3, 20_000, drift=False), window(4, 8_000, drift=False))
    assert not ours.columns.get_column("drifted").any()


def test_small_reference_p_value_tests_match_evidently():
    ours = assert_same(window(5, 900, drift=False), window(6, 700, drift=True))
    methods = set(ours.columns.get_column("method"))
    assert {"ks", "chisquare", "z"} <= methods


def test_html_report_is_written_on_a_sample(tmp_path):
    reference = window(7, 30_000, drift=False)
    current = window(8, 30_000, drift=True)
    path = drift_report_html(
        reference, current, tmp_path / "reports" / "drift.html", max_rows=5_000
    )
    html = path.read_text()
    assert path.stat().st_size > 10_000
    assert "seconds_since_card_txn" in html
