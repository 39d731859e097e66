"""Model declarations: the registry of models, their specs, gates, parameters and pipelines."""

import dataclasses

import numpy as np
import polars as pl
import pytest

from mlops_assets.features.spec import FRAUD_SPEC, FeatureSpec
from mlops_assets.models.declaration import (
    FRAUD_DETECTOR,
    FRAUD_LINEAR,
    MODELS,
    DecisionRule,
    DeclarationError,
    ModelDeclaration,
    ValidationGates,
    declared,
    primary,
)
from mlops_assets.models.training import build_linear_pipeline, model_inputs, train
from mlops_assets.models.windows import TrainingWindows


def test_the_fraud_detector_is_declared_first_and_keeps_its_names():
    assert list(MODELS)[:2] == ["fraud_detector", "fraud_linear"]
    assert primary() is FRAUD_DETECTOR and declared("fraud_linear") is FRAUD_LINEAR
    assert FRAUD_DETECTOR.registered_name("prod") == "prod.fraud_detector"
    assert FRAUD_LINEAR.registered_name("dev") == "dev.fraud_linear"
    assert FRAUD_DETECTOR.prefix == ("ml",) and FRAUD_DETECTOR.suffix == ""
    assert FRAUD_LINEAR.prefix == ("ml", "fraud_linear")
    assert FRAUD_LINEAR.suffix == "_fraud_linear"
    with pytest.raises(KeyError, match="no model 'nope' is declared; declared models: fraud_"):
        declared("nope")


def test_inputs_are_declared_numeric_or_categorical_and_stored_with_the_spec():
    assert FRAUD_SPEC.categorical_inputs == (
        "merchant_category",
        "channel",
        "entry_mode",
        "device_type",
    )
    assert FRAUD_LINEAR.spec.categorical_inputs == ("channel", "entry_mode")
    assert FRAUD_LINEAR.spec.numeric_inputs == ("amount",)
    for model in MODELS.values():
        assert FeatureSpec.from_json(model.spec.to_json()) == model.spec
    # A spec stored before the declaration: every model input but amount is categorical.
    legacy = FRAUD_SPEC.to_dict()
    del legacy["categorical"]
    assert FeatureSpec.from_dict(legacy).categorical_inputs == FRAUD_SPEC.categorical_inputs
    with pytest.raises(ValueError, match=r"categorical inputs \['country'\] are not model inputs"):
        dataclasses.replace(FRAUD_SPEC, categorical=("country",))


def test_gates_become_policies_with_a_runs_overrides():
    gates = FRAUD_LINEAR.gates
    assert gates.policy().min_recall_at_1pct_fpr == 0.05
    policy = gates.policy(min_pr_auc=0.3, mode="dry_run", max_latency_ms=None)
    assert (policy.min_pr_auc, policy.mode, policy.max_latency_ms) == (0.3, "dry_run", 50.0)
    with pytest.raises(ValueError, match=r"unknown validation gates \['min_auc'\]"):
        gates.policy(min_auc=0.1)
    with pytest.raises(ValueError, match="validation mode 'on' is not one of"):
        gates.policy(mode="on")


def test_hyper_parameter_overrides_keep_declared_types_and_refuse_unknown_names():
    assert FRAUD_DETECTOR.hyper_parameters({"max_iter": 50.0}) == {
        "max_iter": 50,
        "learning_rate": 0.1,
        "max_leaf_nodes": 31,
    }
    assert isinstance(FRAUD_DETECTOR.hyper_parameters({"max_iter": 50.0})["max_iter"], int)
    with pytest.raises(DeclarationError, match="has no hyper-parameter 'depth'; declared: C"):
        FRAUD_LINEAR.hyper_parameters({"depth": 3})
    with pytest.raises(DeclarationError, match="max_iter=2.5 is not a whole number"):
        FRAUD_LINEAR.hyper_parameters({"max_iter": 2.5})


def test_bad_declarations_name_the_field():
    base = {"description": "x", "spec": FRAUD_SPEC, "pipeline": build_linear_pipeline}
    with pytest.raises(DeclarationError, match="model name 'Fraud-2' must be lower case"):
        ModelDeclaration(name="Fraud-2", **base)
    with pytest.raises(DeclarationError, match="validation mode 'sometimes'"):
        ModelDeclaration(name="m", gates=ValidationGates(mode="sometimes"), **base)
    with pytest.raises(DeclarationError, match="no feature look-back declared .* 'merchant_risk'"):
        ModelDeclaration(
            name="m",
            windows=TrainingWindows(feature_lookback_days={"card_behaviour": 30}),
            **base,
        )
    no_id = dataclasses.replace(
        FRAUD_LINEAR.spec,
        request_fields=tuple(f for f in FRAUD_LINEAR.spec.request_fields if f != "transaction_id"),
    )
    with pytest.raises(DeclarationError, match=r"request fields lack \['transaction_id'\]"):
        ModelDeclaration(name="m", description="x", spec=no_id, pipeline=build_linear_pipeline)
    with pytest.raises(DeclarationError, match="review_fpr must be between 0 and 1, got 2"):
        DecisionRule(review_fpr=2)


def _events(n: int, seed: int) -> pl.DataFrame:
    """Rows with every feature column of the linear model; fraud follows amount and channel."""
    import datetime

    rng = np.random.default_rng(seed)
    spec = FRAUD_LINEAR.spec
    columns: dict = {c: rng.random(n) * 10 for c in spec.feature_columns}
    columns["channel"] = rng.choice(["online", "pos"], n)
    columns["entry_mode"] = rng.choice(["chip", "swipe", "manual"], n)
    columns["is_foreign"] = rng.random(n) < 0.2
    risk = columns["amount"] / 10 + (columns["channel"] == "online") * 0.5
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return pl.DataFrame(
        {
            **columns,
            "is_fraud": rng.random(n) < risk * 0.08,
            "transaction_id": [f"t{i:06d}" for i in range(n)],
            "event_time": [start + datetime.timedelta(minutes=i) for i in range(n)],
        }
    )


def test_the_linear_model_trains_from_its_declaration_and_picks_its_threshold():
    frame = _events(3000, seed=3)
    result = train(
        frame,
        FRAUD_LINEAR.spec,
        seed=1,
        params=FRAUD_LINEAR.hyper_parameters(),
        pipeline=FRAUD_LINEAR.pipeline,
        review_fpr=FRAUD_LINEAR.decision.review_fpr,
    )
    assert type(result.model.steps[-1][1]).__name__ == "LogisticRegression"
    assert list(result.model.feature_names_in_) == FRAUD_LINEAR.spec.feature_columns
    assert result.metrics["roc_auc"] > 0.6
    holdout = frame.sort("event_time").slice(result.train_rows)
    scores = result.model.predict_proba(model_inputs(holdout, FRAUD_LINEAR.spec))[:, 1]
    legit = scores[~holdout.get_column("is_fraud").to_numpy()]
    # The declared review rate: 2 % of the hold-out's legitimate events score above it.
    assert abs(float((legit > result.decision_threshold).mean()) - 0.02) < 0.005
    # Missing numbers are imputed, not refused.
    gaps = holdout.head(3).with_columns(pl.lit(None, dtype=pl.Float64).alias("amount"))
    assert np.isfinite(
        result.model.predict_proba(model_inputs(gaps, FRAUD_LINEAR.spec))[:, 1]
    ).all()
