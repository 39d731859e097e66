"""Model performance on labelled predictions: precision, recall, PR-AUC, fraud caught.

Labels arrive late and not for every prediction, so every metric is computed on the rows whose
label is known, and says how many those are. A metric whose denominator is too small is null,
not 0 or 1: precision needs `min_labelled` labelled rows and at least one of them flagged;
recall and fraud caught share need at least one labelled fraud; PR-AUC needs both a fraud and a
legitimate labelled row. PR-AUC is average precision, the definition of
`sklearn.metrics.average_precision_score` (and of `models.training.evaluate`):
`sum_k (R_k - R_{k-1}) * P_k` over the distinct scores taken as thresholds, highest first.
"""

from __future__ import annotations

import numpy as np
import polars as pl

MIN_LABELLED = 100

PERFORMANCE_SCHEMA = {
    "predictions": pl.Int64,
    "labelled": pl.Int64,
    "label_share": pl.Float64,
    "frauds": pl.Int64,
    "flagged": pl.Int64,
    "flagged_labelled": pl.Int64,
    "fraud_caught": pl.Int64,
    "precision": pl.Float64,
    "recall": pl.Float64,
    "pr_auc": pl.Float64,
    "fraud_amount": pl.Float64,
    "fraud_caught_amount": pl.Float64,
    "fraud_caught_amount_share": pl.Float64,
}


def performance(
    predictions: pl.DataFrame,
    *,
    score: str = "score",
    decision: str = "decision",
    label: str = "is_fraud",
    amount: str | None = None,
    min_labelled: int = MIN_LABELLED,
) -> dict[str, float | int | None]:
    """Performance of one set of predictions (one window of one model version, say).

    Args:
        predictions: One row per prediction: the model's score, its decision (true when the
            transaction was flagged as fraud) and the label (true for fraud, null while unknown).
        score: Score column (higher means more likely fraud).
        decision: Boolean decision column.
        label: Boolean label column, null where unknown.
        amount: Optional amount column: fraud amounts caught and missed are summed.
        min_labelled: Labelled rows below which every rate is null.

    Returns:
        The keys of `PERFORMANCE_SCHEMA`: counts (`predictions`, `labelled`, `frauds` among the
        labelled, `flagged` among all, `flagged_labelled`, `fraud_caught` = flagged frauds),
        rates (null when undefined, see the module docstring), and amounts (null without
        `amount`).
    """
    labelled = predictions.filter(pl.col(label).is_not_null())
    n_labelled = labelled.height
    labels = labelled.get_column(label).cast(pl.Boolean).to_numpy()
    flagged = labelled.get_column(decision).cast(pl.Boolean).fill_null(False).to_numpy()
    frauds = int(labels.sum())
    caught = int((labels & flagged).sum())
    flagged_labelled = int(flagged.sum())
    enough = n_labelled >= min_labelled
    metrics: dict[str, float | int | None] = {
        "predictions": predictions.height,
        "labelled": n_labelled,
        "label_share": n_labelled / predictions.height if predictions.height else None,
        "frauds": frauds,
        "flagged": int(predictions.get_column(decision).cast(pl.Boolean).fill_null(False).sum()),
        "flagged_labelled": flagged_labelled,
        "fraud_caught": caught,
        "precision": caught / flagged_labelled if enough and flagged_labelled else None,
        "recall": caught / frauds if enough and frauds else None,
        "pr_auc": None,
        "fraud_amount": None,
        "fraud_caught_amount": None,
        "fraud_caught_amount_share": None,
    }
    if enough and 0 < frauds < n_labelled:
        scores = labelled.get_column(score).cast(pl.Float64).to_numpy()
        metrics["pr_auc"] = average_precision(scores, labels)
    if amount is not None:
        amounts = labelled.get_column(amount).cast(pl.Float64).fill_null(0.0).to_numpy()
        fraud_amount = float(amounts[labels].sum())
        caught_amount = float(amounts[labels & flagged].sum())
        metrics["fraud_amount"] = fraud_amount
        metrics["fraud_caught_amount"] = caught_amount
        share_defined = enough and frauds and fraud_amount > 0
        metrics["fraud_caught_amount_share"] = (
            caught_amount / fraud_amount if share_defined else None
        )
    return metrics


def performance_by(predictions: pl.DataFrame, by: list[str], **options: object) -> pl.DataFrame:
    """`performance` for each group of `by` (a window and a model version, say).

    Args:
        predictions: As for `performance`, with the `by` columns.
        by: Grouping columns.
        **options: Passed to `performance` (column names, `amount`, `min_labelled`).

    Returns:
        One row per group: the `by` columns, then `PERFORMANCE_SCHEMA`; sorted by `by`.
    """
    rows = []
    for key, group in predictions.group_by(by, maintain_order=False):
        rows.append({**dict(zip(by, key, strict=True)), **performance(group, **options)})
    schema = {**{c: predictions.schema[c] for c in by}, **PERFORMANCE_SCHEMA}
    return pl.DataFrame(rows, schema=schema).sort(by)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve as sklearn defines it).

    Args:
        scores: Scores, higher meaning more likely positive.
        labels: Booleans, at least one true.

    Returns:
        `sum_k (R_k - R_{k-1}) * P_k` over the distinct scores, highest first.
    """
    order = np.argsort(-scores, kind="stable")
    ranked_scores = scores[order]
    hits = labels[order].astype(np.float64)
    true_positives = np.cumsum(hits)
    # One threshold per distinct score: the last position of each run of equal scores.
    last = np.r_[np.flatnonzero(np.diff(ranked_scores)), ranked_scores.size - 1]
    true_positives = true_positives[last]
    predicted = last + 1.0
    precision = true_positives / predicted
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))
