"""Validation gates: good challengers pass, sabotaged ones never do."""

import dataclasses
import datetime
import random

import polars as pl
import pytest

from mlops_assets.features.spec import FRAUD_SPEC, FeatureLookup
from mlops_assets.models.training import train
from mlops_assets.models.validation import ValidationPolicy, spec_signature, validate

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
CATEGORIES = ("grocery", "electronics", "travel", "fuel")


def events(n: int = 6000, seed: int = 1) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ratio = rng.lognormvariate(0, 0.8)
        online = rng.random() < 0.3
        fraud = (ratio > 3 and online and rng.random() < 0.9) or rng.random() < 0.002
        row = {c: rng.random() for c in FRAUD_SPEC.feature_columns}
        row.update(
            transaction_id=f"t{i:06d}",
            event_time=START + datetime.timedelta(minutes=i),
            amount=50 * ratio,
            amount_to_card_mean_7d=ratio,
            merchant_category=rng.choice(CATEGORIES),
            channel="online" if online else "pos",
            entry_mode="ecommerce" if online else "chip",
            device_type="desktop" if online else "terminal",
            is_foreign=rng.random() < 0.1,
            is_fraud=fraud,
        )
        rows.append(row)
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def data():
    frame = events()
    return frame, frame.tail(1500)


POLICY = ValidationPolicy(min_pr_auc=0.3, min_recall_at_1pct_fpr=0.2)
SERVING = {"serving_fields": FRAUD_SPEC.request_fields, "signature": spec_signature(FRAUD_SPEC)}


def test_a_good_first_model_passes(data):
    frame, holdout = data
    model = train(frame.head(4500), FRAUD_SPEC, seed=1).model
    result = validate(model, FRAUD_SPEC, holdout, POLICY, **SERVING)
    assert result.passed, result.to_dict()
    assert result.metrics["pr_auc"] > 0.3


def test_a_model_trained_on_shuffled_labels_is_refused(data):
    frame, holdout = data
    shuffled = frame.head(4500).with_columns(pl.col("is_fraud").shuffle(seed=3))
    model = train(shuffled, FRAUD_SPEC, seed=1).model
    result = validate(model, FRAUD_SPEC, holdout, POLICY, **SERVING)
    assert not result.passed
    assert "min_pr_auc" in result.failed


def test_a_model_missing_a_feature_is_refused(data):
    frame, holdout = data
    card, merchant = FRAUD_SPEC.lookups
    fewer = dataclasses.replace(
        FRAUD_SPEC, lookups=(FeatureLookup(card.table, card.features[1:]), merchant)
    )
    model = train(frame.head(4500), fewer, seed=1).model
    # The model claims the full spec but takes one feature fewer.
    result = validate(model, FRAUD_SPEC, holdout, POLICY, **SERVING)
    assert result.failed == ["inputs_match_spec"]
    assert not result.passed


def test_a_model_with_an_incompatible_signature_is_refused(data):
    frame, holdout = data
    model = train(frame.head(4500), FRAUD_SPEC, seed=1).model
    signature = [(c, "string" if c == "amount" else t) for c, t in spec_signature(FRAUD_SPEC)]
    result = validate(
        model,
        FRAUD_SPEC,
        holdout,
        POLICY,
        serving_fields=FRAUD_SPEC.request_fields,
        signature=signature,
    )
    assert result.failed == ["signature_matches_spec"]
    assert "amount is string, serving sends double" in result.checks[2].detail
    unsigned = validate(
        model, FRAUD_SPEC, holdout, POLICY, serving_fields=FRAUD_SPEC.request_fields
    )
    assert unsigned.failed == ["signature_matches_spec"]


def test_a_spec_serving_cannot_satisfy_is_refused(data):
    frame, holdout = data
    model = train(frame.head(4500), FRAUD_SPEC, seed=1).model
    result = validate(
        model,
        FRAUD_SPEC,
        holdout,
        POLICY,
        serving_fields=tuple(f for f in FRAUD_SPEC.request_fields if f != "merchant_id"),
        signature=spec_signature(FRAUD_SPEC),
    )
    assert result.failed == ["feature_spec_compatible"]
    assert "'merchant_id' is not sent" in result.checks[0].detail


def test_a_challenger_worse_than_the_champion_is_refused_and_modes_apply(data):
    frame, holdout = data
    champion = train(frame.head(4500), FRAUD_SPEC, seed=1).model
    weaker = train(frame.head(4500), FRAUD_SPEC, seed=1, params={"max_iter": 1}).model
    kwargs = {
        **SERVING,
        "champion": champion,
        "champion_spec": FRAUD_SPEC,
    }
    lenient = dataclasses.replace(POLICY, min_pr_auc=0.0, min_recall_at_1pct_fpr=0.0)
    result = validate(weaker, FRAUD_SPEC, holdout, lenient, **kwargs)
    assert result.failed == ["no_regression_vs_champion"]
    dry = validate(
        weaker, FRAUD_SPEC, holdout, dataclasses.replace(lenient, mode="dry_run"), **kwargs
    )
    assert dry.passed and dry.failed == ["no_regression_vs_champion"]
    off = validate(
        weaker, FRAUD_SPEC, holdout, dataclasses.replace(lenient, mode="disabled"), **kwargs
    )
    assert off.passed and off.mode == "disabled"
    with pytest.raises(ValueError, match="validation mode 'sometimes'"):
        ValidationPolicy(mode="sometimes")
