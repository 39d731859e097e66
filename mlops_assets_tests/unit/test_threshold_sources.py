"""Each default threshold of validation and label maturity has one definition."""

import dataclasses

from mlops_assets.models.declaration import MODELS, ValidationGates
from mlops_assets.models.validation import DEFAULT_POLICY, ValidationPolicy
from mlops_assets.models.windows import TrainingWindows
from mlops_assets.monitoring.thresholds import DEFAULT as THRESHOLDS


def test_undeclared_gates_are_the_validation_defaults():
    assert ValidationGates().policy() == DEFAULT_POLICY == ValidationPolicy()
    # A declaration that sets one gate keeps the others' defaults.
    gates = ValidationGates(max_pr_auc_drop=0.02).policy()
    assert gates.max_pr_auc_drop == 0.02
    assert dataclasses.replace(gates, max_pr_auc_drop=DEFAULT_POLICY.max_pr_auc_drop) == (
        DEFAULT_POLICY
    )


def test_label_maturity_of_training_is_the_monitoring_one():
    assert TrainingWindows().label_maturity_days == THRESHOLDS.label_maturity_days
    for model in MODELS.values():
        assert model.windows.label_maturity_days == THRESHOLDS.label_maturity_days, model.name


def test_the_review_rate_of_a_decision_is_the_training_one():
    from mlops_assets.models.declaration import DecisionRule
    from mlops_assets.models.training import REVIEW_FPR

    assert DecisionRule().review_fpr == REVIEW_FPR
    assert MODELS["fraud_detector"].decision.review_fpr == REVIEW_FPR
