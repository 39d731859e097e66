"""Validation of a challenger against the champion before any promotion.

Blocking checks: the feature spec is one serving can satisfy, the model takes exactly the
spec's inputs, quality clears absolute thresholds, quality does not regress against the
champion on the same hold-out beyond a margin, and one prediction is fast enough. Modes:
`enabled` (failures block), `dry_run` (failures are reported, the result still passes),
`disabled` (nothing is checked; the result passes and says so).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from mlops_assets.features.registry import FEATURE_TABLES
from mlops_assets.features.spec import FeatureSpec
from mlops_assets.models.training import LABEL, categorical_inputs, evaluate, model_inputs

MODES = ("enabled", "dry_run", "disabled")


@dataclass(frozen=True)
class ValidationPolicy:
    """Thresholds and mode of validation.

    Attributes:
        mode: `enabled`, `dry_run` or `disabled`.
        min_pr_auc: Lowest acceptable PR-AUC on the hold-out.
        min_recall_at_1pct_fpr: Lowest acceptable recall at a 1 % false-positive rate.
        max_pr_auc_drop: How much lower than the champion's PR-AUC the challenger may be.
        max_latency_ms: Slowest acceptable median CPU time of one single-row prediction.
    """

    mode: str = "enabled"
    min_pr_auc: float = 0.05
    min_recall_at_1pct_fpr: float = 0.1
    max_pr_auc_drop: float = 0.01
    max_latency_ms: float = 50.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"validation mode {self.mode!r} is not one of {', '.join(MODES)}")


# The gates of a model whose declaration sets none: the one definition of each default.
DEFAULT_POLICY = ValidationPolicy()


@dataclass(frozen=True)
class Check:
    """One check's outcome with the numbers behind it."""

    name: str
    passed: bool
    detail: str
    value: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class ValidationResult:
    """All checks of one validation and the verdict under the policy's mode."""

    mode: str
    checks: tuple[Check, ...]
    metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] | None = None

    @property
    def failed(self) -> list[str]:
        """Names of the checks that did not pass."""
        return [c.name for c in self.checks if not c.passed]

    @property
    def passed(self) -> bool:
        """Whether the challenger may be promoted under the mode."""
        return self.mode != "enabled" or not self.failed

    def to_dict(self) -> dict[str, Any]:
        """Plain data for tags, metadata and the audit table."""
        return {
            "mode": self.mode,
            "passed": self.passed,
            "failed": self.failed,
            "checks": [vars(c) for c in self.checks],
            "metrics": self.metrics,
            "champion_metrics": self.champion_metrics,
        }


def spec_check(spec: FeatureSpec, serving_fields: tuple[str, ...]) -> Check:
    """The spec asks only for request fields serving sends and features that exist."""
    problems = [
        f"request field {f!r} is not sent" for f in spec.request_fields if f not in serving_fields
    ]
    for lookup in spec.lookups:
        table = FEATURE_TABLES.get(lookup.table)
        if table is None:
            problems.append(f"feature table {lookup.table!r} does not exist")
            continue
        problems += [
            f"{lookup.table} has no feature {f!r}"
            for f in lookup.features
            if f not in table.feature_names
        ]
    return Check("feature_spec_compatible", not problems, "; ".join(problems) or "compatible")


def input_check(model: Any, spec: FeatureSpec) -> Check:
    """The model takes exactly the spec's feature columns, in order."""
    expected = list(spec.feature_columns)
    actual = list(getattr(model, "feature_names_in_", []))
    passed = actual == expected
    detail = (
        "inputs match the spec"
        if passed
        else (f"model takes {actual}, the spec provides {expected}")
    )
    return Check("inputs_match_spec", passed, detail)


def spec_signature(spec: FeatureSpec) -> list[tuple[str, str]]:
    """The (column, type) inputs serving sends for a spec: strings for categoricals, doubles."""
    categorical = set(categorical_inputs(spec))
    return [(c, "string" if c in categorical else "double") for c in spec.feature_columns]


def signature_check(signature: list[tuple[str, str]] | None, spec: FeatureSpec) -> Check:
    """The model's logged signature takes the spec's columns with the types serving sends.

    Categorical inputs are strings, every other input a double; a model logged without a
    signature cannot be checked by serving and is refused.
    """
    if signature is None:
        return Check("signature_matches_spec", False, "the model was logged without a signature")
    expected = spec_signature(spec)
    passed = list(signature) == expected
    if passed:
        return Check("signature_matches_spec", True, "signature matches the spec")
    have, want = dict(signature), dict(expected)
    problems = [f"{c} missing" for c in want if c not in have]
    problems += [f"{c} is not an input of the spec" for c in have if c not in want]
    problems += [
        f"{c} is {have[c]}, serving sends {want[c]}"
        for c in want
        if c in have and have[c] != want[c]
    ]
    detail = "; ".join(problems) or "columns are in another order than the spec's"
    return Check("signature_matches_spec", False, detail)


def latency_ms(model: Any, row: Any, repeats: int = 30) -> float:
    """Median CPU time of one single-row `predict_proba` on one thread, in milliseconds.

    CPU time of this process on one thread, not wall time: other work on a busy machine (a
    backfill, the test suite) must not fail a model, and idle OpenMP threads spinning on a
    single row must not count; the model's own cost still does.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        model.predict_proba(row)  # warm caches once
        times = []
        for _ in range(repeats):
            started = time.process_time()
            model.predict_proba(row)
            times.append((time.process_time() - started) * 1000)
    return statistics.median(times)


def validate(
    challenger: Any,
    challenger_spec: FeatureSpec,
    holdout: pl.DataFrame,
    policy: ValidationPolicy,
    *,
    serving_fields: tuple[str, ...],
    signature: list[tuple[str, str]] | None = None,
    champion: Any | None = None,
    champion_spec: FeatureSpec | None = None,
) -> ValidationResult:
    """Validate a challenger (and compare it with the champion) on the same hold-out.

    Args:
        challenger: The candidate model (a fitted pipeline with `predict_proba`).
        challenger_spec: The feature spec stored with it.
        holdout: The most recent labelled events with every feature column.
        policy: Thresholds and mode.
        serving_fields: Request fields the serving path sends.
        signature: The challenger's logged input signature as (column, type) pairs.
        champion: The current champion, if any (the first model has none).
        champion_spec: The champion's feature spec.

    Returns:
        Every check's outcome and the verdict.
    """
    if policy.mode == "disabled":
        return ValidationResult("disabled", (Check("disabled", True, "validation disabled"),))
    checks = [
        spec_check(challenger_spec, serving_fields),
        input_check(challenger, challenger_spec),
        signature_check(signature, challenger_spec),
    ]
    if not all(c.passed for c in checks):
        return ValidationResult(policy.mode, tuple(checks))
    labels = holdout.get_column(LABEL).cast(pl.Int64).to_numpy()
    inputs = model_inputs(holdout, challenger_spec)
    metrics = evaluate(challenger.predict_proba(inputs)[:, 1], labels)
    checks.append(
        Check(
            "min_pr_auc",
            metrics["pr_auc"] >= policy.min_pr_auc,
            f"PR-AUC {metrics['pr_auc']:.4f}",
            metrics["pr_auc"],
            policy.min_pr_auc,
        )
    )
    checks.append(
        Check(
            "min_recall_at_1pct_fpr",
            metrics["recall_at_1pct_fpr"] >= policy.min_recall_at_1pct_fpr,
            f"recall at 1% FPR {metrics['recall_at_1pct_fpr']:.4f}",
            metrics["recall_at_1pct_fpr"],
            policy.min_recall_at_1pct_fpr,
        )
    )
    champion_metrics = None
    if champion is not None and champion_spec is not None:
        champion_metrics = evaluate(
            champion.predict_proba(model_inputs(holdout, champion_spec))[:, 1], labels
        )
        floor = champion_metrics["pr_auc"] - policy.max_pr_auc_drop
        checks.append(
            Check(
                "no_regression_vs_champion",
                metrics["pr_auc"] >= floor,
                f"PR-AUC {metrics['pr_auc']:.4f} vs champion {champion_metrics['pr_auc']:.4f}",
                metrics["pr_auc"],
                floor,
            )
        )
    latency = latency_ms(challenger, inputs.head(1))
    checks.append(
        Check(
            "latency",
            latency <= policy.max_latency_ms,
            f"{latency:.2f} ms CPU per prediction",
            latency,
            policy.max_latency_ms,
        )
    )
    return ValidationResult(policy.mode, tuple(checks), metrics, champion_metrics)
