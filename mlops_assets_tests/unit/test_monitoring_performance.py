import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score

from mlops_assets.monitoring.performance import (
    PERFORMANCE_SCHEMA,
    average_precision,
    performance,
    performance_by,
)


def predictions(rows):
    """Rows of (score, decision, label, amount, model_version)."""
    return pl.DataFrame(
        rows,
        schema={
            "score": pl.Float64,
            "decision": pl.Boolean,
            "is_fraud": pl.Boolean,
            "amount": pl.Float64,
            "model_version": pl.String,
        },
        orient="row",
    )


SAMPLE = predictions(
    [
        (0.95, True, True, 100.0, "1"),
        (0.90, True, False, 20.0, "1"),
        (0.80, True, None, 30.0, "1"),
        (0.40, False, True, 50.0, "1"),
        (0.30, False, False, 10.0, "2"),
        (0.20, False, None, 15.0, "2"),
        (0.10, False, False, 5.0, "2"),
        (0.85, True, True, 70.0, "2"),
    ]
)


def test_metrics_use_the_labelled_rows_only():
    metrics = performance(SAMPLE, amount="amount", min_labelled=1)
    assert set(metrics) == set(PERFORMANCE_SCHEMA)
    assert metrics["predictions"] == 8
    assert metrics["labelled"] == 6
    assert metrics["label_share"] == pytest.approx(6 / 8)
    assert metrics["frauds"] == 3
    assert metrics["flagged"] == 4
    assert metrics["flagged_labelled"] == 3
    assert metrics["fraud_caught"] == 2
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["fraud_amount"] == pytest.approx(220.0)
    assert metrics["fraud_caught_amount"] == pytest.approx(170.0)
    assert metrics["fraud_caught_amount_share"] == pytest.approx(170 / 220)
    labelled = SAMPLE.filter(pl.col("is_fraud").is_not_null())
    assert metrics["pr_auc"] == pytest.approx(
        average_precision_score(labelled["is_fraud"].to_numpy(), labelled["score"].to_numpy())
    )


def test_too_few_labels_give_nulls_not_numbers():
    metrics = performance(SAMPLE, amount="amount", min_labelled=7)
    for name in ("precision", "recall", "pr_auc", "fraud_caught_amount_share"):
        assert metrics[name] is None, name
    assert metrics["labelled"] == 6
    assert metrics["fraud_caught"] == 2


def test_undefined_rates_are_null():
    no_fraud = predictions([(0.2, False, False, 1.0, "1"), (0.9, True, False, 1.0, "1")])
    metrics = performance(no_fraud, min_labelled=1)
    assert metrics["recall"] is None
    assert metrics["pr_auc"] is None
    assert metrics["precision"] == 0.0
    assert metrics["fraud_amount"] is None
    nothing_flagged = predictions([(0.2, False, True, 1.0, "1"), (0.1, False, False, 1.0, "1")])
    metrics = performance(nothing_flagged, min_labelled=1)
    assert metrics["precision"] is None
    assert metrics["recall"] == 0.0
    unlabelled = predictions([(0.2, False, None, 1.0, "1")])
    metrics = performance(unlabelled, min_labelled=0)
    assert metrics["labelled"] == 0
    assert metrics["precision"] is None and metrics["recall"] is None


def test_average_precision_equals_sklearn_with_ties():
    rng = np.random.default_rng(4)
    for _ in range(100):
        size = int(rng.integers(2, 400))
        labels = rng.random(size) < 0.1
        if not labels.any():
            continue
        scores = (rng.random(size) + 0.3 * labels).round(int(rng.integers(0, 3)))
        assert average_precision(scores, labels) == pytest.approx(
            average_precision_score(labels, scores), abs=1e-12
        )


def test_performance_by_group():
    table = performance_by(SAMPLE, ["model_version"], amount="amount", min_labelled=1)
    assert table.columns == ["model_version", *PERFORMANCE_SCHEMA]
    rows = {r["model_version"]: r for r in table.iter_rows(named=True)}
    assert rows["1"]["labelled"] == 3
    assert rows["1"]["precision"] == pytest.approx(1 / 2)
    assert rows["1"]["recall"] == pytest.approx(1 / 2)
    assert rows["2"]["fraud_caught"] == 1
    assert rows["2"]["recall"] == 1.0
