"""Models as declarations: everything the platform needs to know about a model, in one place.

A `ModelDeclaration` names a model (its registered name is `<env>.<name>`), its feature spec
(feature tables and columns, numeric and categorical inputs), how its scikit-learn pipeline is
built and with which default hyper-parameters, the gates a challenger must clear against the
champion, its training-set windows and how its decision threshold is chosen. `MODELS` lists
the declared models, the fraud detector first; the Dagster wiring (`defs/`) generates each
model's training set, training, validation, promotion, batch scoring, CD sensor and serving
from these declarations, and the REST server serves every declared model's champion.

Declaring a model is adding a `ModelDeclaration` to `MODELS`; nothing here imports Dagster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlops_assets.features.spec import FRAUD_SPEC, FeatureLookup, FeatureSpec
from mlops_assets.models.lifecycle import model_name
from mlops_assets.models.training import (
    REVIEW_FPR,
    TREE_PARAMS,
    PipelineBuilder,
    build_linear_pipeline,
    build_pipeline,
)
from mlops_assets.models.validation import DEFAULT_POLICY, MODES, ValidationPolicy
from mlops_assets.models.windows import TrainingWindows

# A model's name is a registered model name's tail and part of asset keys and job names.
_NAME_CHARACTERS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


class DeclarationError(ValueError):
    """A model declaration that cannot be used (the message names the field and the problem)."""


@dataclass(frozen=True)
class ValidationGates:
    """What a challenger must clear before it may replace the champion.

    A gate not declared is the validation's default (`models.validation.DEFAULT_POLICY`).

    Attributes:
        mode: `enabled` (failures block promotion), `dry_run` (reported only), `disabled`.
        min_pr_auc: Lowest acceptable PR-AUC on the hold-out.
        min_recall_at_1pct_fpr: Lowest acceptable recall at a 1 % false-positive rate.
        max_pr_auc_drop: How far below the champion's PR-AUC on the same hold-out it may be.
        max_latency_ms: Slowest acceptable median single-row prediction time (CPU).
    """

    mode: str = DEFAULT_POLICY.mode
    min_pr_auc: float = DEFAULT_POLICY.min_pr_auc
    min_recall_at_1pct_fpr: float = DEFAULT_POLICY.min_recall_at_1pct_fpr
    max_pr_auc_drop: float = DEFAULT_POLICY.max_pr_auc_drop
    max_latency_ms: float = DEFAULT_POLICY.max_latency_ms

    def policy(self, **overrides: Any) -> ValidationPolicy:
        """The gates as a validation policy, with a run's overrides (None keeps a gate).

        Raises:
            ValueError: An override names no gate, or the mode is unknown.
        """
        unknown = sorted(set(overrides) - set(self.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"unknown validation gates {unknown}; known: {', '.join(self.__dataclass_fields__)}"
            )
        values = {
            name: getattr(self, name) if overrides.get(name) is None else overrides[name]
            for name in self.__dataclass_fields__
        }
        return ValidationPolicy(**values)


@dataclass(frozen=True)
class DecisionRule:
    """How serving's decision threshold is chosen when a version is trained.

    Attributes:
        review_fpr: The threshold is the hold-out score above which this share of the
            legitimate events lie (the review rate fraud teams can afford); None for a fixed
            threshold.
        fixed: The threshold when `review_fpr` is None, or when the hold-out has no
            legitimate event to choose one from.
    """

    review_fpr: float | None = REVIEW_FPR
    fixed: float = 0.5

    def __post_init__(self) -> None:
        if self.review_fpr is not None and not 0 < self.review_fpr < 1:
            raise DeclarationError(f"review_fpr must be between 0 and 1, got {self.review_fpr}")
        if not 0 <= self.fixed <= 1:
            raise DeclarationError(f"fixed threshold must be in [0, 1], got {self.fixed}")

    def describe(self) -> str:
        """In words, for metadata and the demo."""
        if self.review_fpr is None:
            return f"fixed at {self.fixed}"
        return f"hold-out score at {self.review_fpr:.1%} false positives"


@dataclass(frozen=True)
class ModelDeclaration:
    """One model of the platform.

    Attributes:
        name: The model's name: the registered model is `<env>.<name>`; lower case letters,
            digits and underscores.
        description: What the model decides, for the asset graph and the readiness answer.
        spec: Its feature spec (stored with every version).
        pipeline: Builds the unfitted scikit-learn estimator from the spec, a seed and the
            hyper-parameters.
        params: Default hyper-parameters given to `pipeline`; a run may override them.
        gates: The challenger-vs-champion validation gates.
        windows: The training-set windows (days, label maturity, feature look-backs).
        decision: How the decision threshold is chosen.
        asset_prefix: Asset key prefix of its ML assets (default `ml/<name>`).
        model_asset: Last part of its trained model's asset key.
        job_suffix: Appended to its job and sensor names (default `_<name>`).
        streamed: Whether landed files are scored with it as they arrive (stream scoring).
        owners: Owners of its assets.
    """

    name: str
    description: str
    spec: FeatureSpec
    pipeline: PipelineBuilder
    params: Mapping[str, Any] = field(default_factory=dict)
    gates: ValidationGates = field(default_factory=ValidationGates)
    windows: TrainingWindows = field(default_factory=TrainingWindows)
    decision: DecisionRule = field(default_factory=DecisionRule)
    asset_prefix: tuple[str, ...] | None = None
    model_asset: str = "model"
    job_suffix: str | None = None
    streamed: bool = False
    owners: tuple[str, ...] = ("team:ml-platform",)

    def __post_init__(self) -> None:
        if not self.name or set(self.name) - _NAME_CHARACTERS or self.name[0].isdigit():
            raise DeclarationError(
                f"model name {self.name!r} must be lower case letters, digits and underscores, "
                "starting with a letter"
            )
        if self.gates.mode not in MODES:
            raise DeclarationError(
                f"model {self.name}: validation mode {self.gates.mode!r} is not one of "
                f"{', '.join(MODES)}"
            )
        missing = [f for f in ("transaction_id", "event_time") if f not in self.spec.request_fields]
        if missing:
            raise DeclarationError(
                f"model {self.name}: its spec's request fields lack {missing}, which training "
                "sets and the inference log key on"
            )
        for lookup in self.spec.lookups:
            if lookup.table not in self.windows.feature_lookback_days:
                raise DeclarationError(
                    f"model {self.name}: no feature look-back declared in its windows for "
                    f"{lookup.table!r}, which its spec looks up"
                )

    def registered_name(self, env: str) -> str:
        """Its registered model name in an environment, e.g. `dev.fraud_detector`."""
        return model_name(env, self.name)

    @property
    def prefix(self) -> tuple[str, ...]:
        """Asset key prefix of its ML assets."""
        return self.asset_prefix if self.asset_prefix is not None else ("ml", self.name)

    @property
    def suffix(self) -> str:
        """Appended to its job and sensor names."""
        return self.job_suffix if self.job_suffix is not None else f"_{self.name}"

    def hyper_parameters(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The declared hyper-parameters with a run's overrides, in the declared types.

        Raises:
            DeclarationError: An override names no declared hyper-parameter, or its value
                does not convert to the declared type.
        """
        params = dict(self.params)
        for key, value in (overrides or {}).items():
            if key not in params:
                raise DeclarationError(
                    f"model {self.name} has no hyper-parameter {key!r}; declared: "
                    f"{', '.join(sorted(params)) or 'none'}"
                )
            kind = type(params[key])
            try:
                converted = kind(value)
            except (TypeError, ValueError):
                raise DeclarationError(
                    f"model {self.name}: hyper-parameter {key}={value!r} is not a {kind.__name__}"
                ) from None
            if kind is int and converted != value:
                raise DeclarationError(
                    f"model {self.name}: hyper-parameter {key}={value!r} is not a whole number"
                )
            params[key] = converted
        return params

    def summary(self) -> dict[str, Any]:
        """Plain data describing the declaration (asset metadata, `mlops model models`)."""
        return {
            "name": self.name,
            "description": self.description,
            "feature_columns": self.spec.feature_columns,
            "categorical_inputs": list(self.spec.categorical_inputs),
            "numeric_inputs": list(self.spec.numeric_inputs),
            "pipeline": f"{self.pipeline.__module__}.{self.pipeline.__qualname__}",
            "params": dict(self.params),
            "gates": dict(vars(self.gates)),
            "windows": self.windows.to_dict(),
            "decision": self.decision.describe(),
            "streamed": self.streamed,
        }


FRAUD_DETECTOR = ModelDeclaration(
    name="fraud_detector",
    description=(
        "Card-fraud detector: gradient-boosted trees on card behaviour, merchant risk and "
        "request fields; decides at the score that flags 1 % of legitimate traffic."
    ),
    spec=FRAUD_SPEC,
    pipeline=build_pipeline,
    params=dict(TREE_PARAMS),
    gates=ValidationGates(),
    windows=TrainingWindows(days=28),
    decision=DecisionRule(),
    # The fraud detector keeps the asset keys and job names it had before declarations.
    asset_prefix=("ml",),
    model_asset="fraud_model",
    job_suffix="",
    streamed=True,
)

FRAUD_LINEAR_SPEC = FeatureSpec(
    request_fields=(
        "transaction_id",
        "card_id",
        "merchant_id",
        "event_time",
        "amount",
        "channel",
        "entry_mode",
        "country",
        "card_country",
    ),
    lookups=(
        FeatureLookup(
            "card_behaviour",
            (
                "txn_count_1h",
                "txn_count_24h",
                "amount_mean_7d",
                "amount_std_7d",
                "foreign_share_7d",
                "night_share_7d",
            ),
        ),
        FeatureLookup("merchant_risk", ("fraud_rate_30d", "transactions_30d")),
    ),
    on_demand=("amount_zscore_7d", "is_foreign", "hour_of_day", "card_without_history"),
    model_inputs=("amount", "channel", "entry_mode"),
    categorical=("channel", "entry_mode"),
    description="Linear fraud model inputs: a few card and merchant features, request fields.",
)

FRAUD_LINEAR = ModelDeclaration(
    name="fraud_linear",
    description=(
        "A linear fraud model (logistic regression on standardised card, merchant and request "
        "features): an interpretable second opinion beside the fraud detector."
    ),
    spec=FRAUD_LINEAR_SPEC,
    pipeline=build_linear_pipeline,
    params={"C": 1.0, "max_iter": 1000},
    gates=ValidationGates(min_recall_at_1pct_fpr=0.05, max_pr_auc_drop=0.02),
    windows=TrainingWindows(
        days=21,
        feature_lookback_days={"card_behaviour": 30, "merchant_risk": 4},
    ),
    decision=DecisionRule(review_fpr=0.02),
)

# Every declared model; the first is the platform's primary model (the daily loop's).
MODELS: dict[str, ModelDeclaration] = {m.name: m for m in (FRAUD_DETECTOR, FRAUD_LINEAR)}


def declared(name: str) -> ModelDeclaration:
    """A declared model by name.

    Raises:
        KeyError: No model is declared under that name; the message lists those that are.
    """
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(
            f"no model {name!r} is declared; declared models: {', '.join(MODELS)}"
        ) from None


def primary() -> ModelDeclaration:
    """The primary model: the first declared (the fraud detector)."""
    return next(iter(MODELS.values()))


def feature_tables(model: ModelDeclaration) -> tuple[str, ...]:
    """The feature tables a model looks up."""
    return tuple(lookup.table for lookup in model.spec.lookups)
