"""Training and evaluation of a declared model on a point-in-time training set.

A model's pipeline comes from its declaration (`models.declaration`): a function of the
feature spec, the seed and the hyper-parameters returning an unfitted scikit-learn estimator.
`build_pipeline` (gradient-boosted trees) is the fraud detector's, `build_linear_pipeline`
(logistic regression) the linear fraud model's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from mlops_assets.features.spec import FeatureSpec

LABEL = "is_fraud"
# Fraud teams review a fixed share of legitimate traffic; recall is reported at that rate.
REVIEW_FPR = 0.01


@dataclass(frozen=True)
class TrainingResult:
    """A fitted model with the figures that describe it.

    Attributes:
        model: The fitted scikit-learn pipeline (takes the spec's feature columns).
        metrics: Hold-out metrics (see `evaluate`).
        params: Hyper-parameters and split settings used.
        train_rows: Rows trained on.
        holdout_rows: Rows evaluated on (the most recent ones).
        split_time: Events at or after this time form the hold-out.
        decision_threshold: Serving's threshold chosen on the hold-out (NaN when the
            training did not choose one; see `registry.decision_threshold`).
    """

    model: Any
    metrics: dict[str, float]
    params: dict[str, Any]
    train_rows: int
    holdout_rows: int
    split_time: str
    extra: dict[str, Any] = field(default_factory=dict)
    decision_threshold: float = float("nan")


def model_inputs(frame: pl.DataFrame, spec: FeatureSpec) -> Any:
    """The spec's feature columns as the pandas frame the pipeline takes."""
    columns = spec.feature_columns
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the frame lacks feature columns {missing} of the feature spec")
    selected = frame.select(
        *[
            pl.col(c).cast(pl.String).fill_null("unknown")
            if c in categorical_inputs(spec)
            else pl.col(c).cast(pl.Float64)
            for c in columns
        ]
    )
    return selected.to_pandas()


def categorical_inputs(spec: FeatureSpec) -> list[str]:
    """The spec's inputs the model one-hot encodes (its declared categorical inputs)."""
    return list(spec.categorical_inputs)


def split_by_time(frame: pl.DataFrame, holdout_fraction: float) -> tuple[pl.DataFrame, ...]:
    """Split into the earlier events (train) and the latest `holdout_fraction` (hold-out)."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be between 0 and 1, got {holdout_fraction}")
    ordered = frame.sort("event_time", "transaction_id")
    cut = int(ordered.height * (1 - holdout_fraction))
    return ordered.head(cut), ordered.slice(cut)


def build_pipeline(spec: FeatureSpec, seed: int, params: dict[str, Any]) -> Any:
    """One-hot categoricals, numbers as they are, then gradient-boosted trees."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    categorical = categorical_inputs(spec)
    numeric = [c for c in spec.feature_columns if c not in categorical]
    encode = ColumnTransformer(
        [
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                categorical,
            ),
            ("numeric", "passthrough", numeric),
        ]
    )
    classifier = HistGradientBoostingClassifier(random_state=seed, **params)
    return Pipeline([("encode", encode), ("classify", classifier)])


def build_linear_pipeline(spec: FeatureSpec, seed: int, params: dict[str, Any]) -> Any:
    """One-hot categoricals, numbers imputed (median) and standardised, logistic regression."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    categorical = categorical_inputs(spec)
    numeric = [c for c in spec.feature_columns if c not in categorical]
    encode = ColumnTransformer(
        [
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                categorical,
            ),
            (
                "numeric",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                numeric,
            ),
        ]
    )
    classifier = LogisticRegression(random_state=seed, **params)
    return Pipeline([("encode", encode), ("classify", classifier)])


PipelineBuilder = Callable[[FeatureSpec, int, dict[str, Any]], Any]
# The fraud detector's hyper-parameters when none are given.
TREE_PARAMS: dict[str, Any] = {"max_iter": 200, "learning_rate": 0.1, "max_leaf_nodes": 31}


def review_threshold(probabilities: Any, labels: Any, review_fpr: float) -> float:
    """The score above which `review_fpr` of the legitimate events lie (NaN without any)."""
    import numpy as np

    labels = np.asarray(labels, dtype=int)
    negatives = np.asarray(probabilities, dtype=float)[labels == 0]
    if not 0 < review_fpr < 1:
        raise ValueError(f"review_fpr must be between 0 and 1, got {review_fpr}")
    return float(np.quantile(negatives, 1 - review_fpr)) if negatives.size else float("nan")


def evaluate(probabilities: Any, labels: Any) -> dict[str, float]:
    """PR-AUC, ROC-AUC, recall at the review false-positive rate, and calibration (Brier)."""
    import numpy as np
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    positives = int(labels.sum())
    metrics: dict[str, float] = {
        "holdout_rows": float(labels.size),
        "holdout_positives": float(positives),
        "brier": float(brier_score_loss(labels, probabilities)) if labels.size else float("nan"),
    }
    if 0 < positives < labels.size:
        fpr, tpr, _ = roc_curve(labels, probabilities)
        metrics["pr_auc"] = float(average_precision_score(labels, probabilities))
        metrics["roc_auc"] = float(roc_auc_score(labels, probabilities))
        metrics["recall_at_1pct_fpr"] = float(np.interp(REVIEW_FPR, fpr, tpr))
        # The score above which the review rate of legitimate traffic stays at REVIEW_FPR:
        # serving's decision threshold.
        metrics["threshold_at_1pct_fpr"] = float(
            np.quantile(probabilities[labels == 0], 1 - REVIEW_FPR)
        )
    else:
        metrics.update(
            pr_auc=float("nan"),
            roc_auc=float("nan"),
            recall_at_1pct_fpr=float("nan"),
            threshold_at_1pct_fpr=float("nan"),
        )
    return metrics


def train(
    frame: pl.DataFrame,
    spec: FeatureSpec,
    *,
    seed: int = 7,
    holdout_fraction: float = 0.2,
    params: dict[str, Any] | None = None,
    pipeline: PipelineBuilder | None = None,
    review_fpr: float | None = None,
) -> TrainingResult:
    """Fit on the earlier events and evaluate on the most recent ones.

    Args:
        frame: The training set (feature columns, `is_fraud`, `event_time`).
        spec: The model's feature spec.
        seed: Random seed of the estimator.
        holdout_fraction: Share of the most recent events held out.
        params: Hyper-parameters given to `pipeline` (with the gradient-boosted trees of
            `build_pipeline`, `TREE_PARAMS` fill in the ones not given).
        pipeline: Builds the unfitted estimator (default `build_pipeline`).
        review_fpr: When given, the decision threshold is the hold-out score at this
            false-positive rate.

    Raises:
        ValueError: The training part has no fraud (or only fraud) to learn from.
    """
    if pipeline is None:
        pipeline = build_pipeline
        params = {**TREE_PARAMS, **(params or {})}
    params = dict(params or {})
    training, holdout = split_by_time(frame, holdout_fraction)
    labels = training.get_column(LABEL).cast(pl.Int64)
    if labels.sum() in (0, training.height):
        raise ValueError(
            f"the training part ({training.height} events) holds {labels.sum()} fraud events: "
            "nothing to learn from; widen the window or wait for labels"
        )
    model = pipeline(spec, seed, params)
    model.fit(model_inputs(training, spec), labels.to_numpy())
    scores = model.predict_proba(model_inputs(holdout, spec))[:, 1]
    truth = holdout.get_column(LABEL).cast(pl.Int64).to_numpy()
    return TrainingResult(
        model=model,
        metrics=evaluate(scores, truth),
        params={"seed": seed, "holdout_fraction": holdout_fraction, **params},
        train_rows=training.height,
        holdout_rows=holdout.height,
        split_time=str(holdout.get_column("event_time").min()),
        decision_threshold=(
            review_threshold(scores, truth, review_fpr) if review_fpr is not None else float("nan")
        ),
    )
