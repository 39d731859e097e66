"""The fast scoring path equals the reference path bit for bit: features and model."""

import datetime
import pickle
import random

import numpy as np
import polars as pl
import pytest

from mlops_assets.features.online_store import FeatureVector
from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.models.training import model_inputs, train
from mlops_assets.serving.compiled import CompiledPipeline, UnsupportedModelError
from mlops_assets.serving.model import reference_frame, request_features
from mlops_assets_tests.unit.test_validation import events

COLUMNS = FRAUD_SPEC.feature_columns


@pytest.fixture(scope="module")
def pipeline():
    return train(events(3000, seed=2), FRAUD_SPEC, seed=1, params={"max_iter": 80}).model


def noisy(frame: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Missing numbers, missing and unseen categories, values on split thresholds."""
    rng = random.Random(seed)
    rows = frame.select(COLUMNS).to_dicts()
    for row in rows:
        for name in COLUMNS:
            pick = rng.random()
            if pick < 0.05:
                row[name] = None
            elif pick < 0.08 and isinstance(row[name], str):
                row[name] = "never-seen"
    schema = {c: (pl.String if frame.schema[c] == pl.String else pl.Float64) for c in COLUMNS}
    return pl.DataFrame(
        [{c: (None if r[c] is None else r[c]) for c in COLUMNS} for r in rows],
        schema=schema,
        strict=False,
    )


def test_compiled_pipeline_scores_equal_predict_proba_exactly(pipeline):
    compiled = CompiledPipeline(pipeline, COLUMNS)
    frame = noisy(events(1500, seed=9), seed=3)
    expected = pipeline.predict_proba(model_inputs(frame, FRAUD_SPEC))[:, 1]
    got = np.array([compiled.score(list(row)) for row in frame.iter_rows()])
    assert compiled.trees == 80
    assert np.array_equal(got, expected)
    # Values exactly on split thresholds and a hair either side: `<=` decides as in scikit-learn.
    rng = random.Random(8)
    is_split = compiled._left != np.arange(len(compiled._left))
    splits_of = {
        target: list(compiled._threshold[(compiled._feature == target) & is_split])
        for _, target in compiled._numeric
    }
    edges = frame.head(300).to_dicts()
    for row in edges:
        for source, target in compiled._numeric:
            splits = splits_of[target]
            if splits and rng.random() < 0.5:
                toward = rng.choice([-np.inf, np.inf, None])
                value = float(rng.choice(splits))
                row[COLUMNS[source]] = value if toward is None else np.nextafter(value, toward)
    edge_frame = pl.DataFrame(edges, schema=frame.schema)
    expected = pipeline.predict_proba(model_inputs(edge_frame, FRAUD_SPEC))[:, 1]
    got = np.array([compiled.score(list(row)) for row in edge_frame.iter_rows()])
    assert np.array_equal(got, expected)


def test_vectorised_scores_equal_predict_proba_exactly(pipeline):
    compiled = CompiledPipeline(pipeline, COLUMNS)
    # The events as the join gives them (integer, boolean columns), then noisy floats.
    for frame in (events(2500, seed=11), noisy(events(2500, seed=12), seed=5)):
        expected = pipeline.predict_proba(model_inputs(frame, FRAUD_SPEC))[:, 1]
        for chunk_rows in (frame.height, 999, 1):
            if chunk_rows == 1:
                frame, expected = frame.head(40), expected[:40]
            got = compiled.score_frame(frame.select(COLUMNS), chunk_rows=chunk_rows)
            assert got.dtype == np.float64
            assert np.array_equal(got.view(np.int64), expected.view(np.int64))
    # Probe rows: every split threshold, a hair either side, NaN, missing, unseen categories.
    probe = compiled.probe_frame(3000)
    assert probe.columns == COLUMNS
    assert probe.null_count().sum_horizontal().item() > 0
    assert probe.select(pl.col(pl.Float64).is_nan().any()).sum_horizontal().item() > 0
    expected = pipeline.predict_proba(model_inputs(probe, FRAUD_SPEC))[:, 1]
    got = compiled.score_frame(probe, chunk_rows=700)
    assert np.array_equal(got.view(np.int64), expected.view(np.int64))
    # The encoded matrix is what the pipeline's encoder makes.
    encoded = pipeline[0].transform(model_inputs(probe, FRAUD_SPEC))
    assert np.array_equal(compiled.encode_frame(probe), encoded, equal_nan=True)
    assert compiled.score_frame(probe.head(0)).shape == (0,)
    # Pickled (the serving cache) without scikit-learn objects; it scores the same after.
    copy = pickle.loads(pickle.dumps(compiled))
    assert copy._tree_predictors is None
    assert np.array_equal(copy.score_frame(probe).view(np.int64), got.view(np.int64))


def test_the_vectorised_check_compares_with_the_model_once(pipeline):
    compiled = CompiledPipeline(pipeline, COLUMNS)
    calls = []

    def reference(frame):
        calls.append(frame.height)
        return pipeline.predict_proba(model_inputs(frame, FRAUD_SPEC))[:, 1]

    assert compiled.check_many(reference, count=500) is None
    assert compiled.check_many(reference) is None and calls == [500]

    def off_by_one_ulp(frame):
        scores = pipeline.predict_proba(model_inputs(frame, FRAUD_SPEC))[:, 1]
        scores[7] = np.nextafter(scores[7], 2.0)
        return scores

    other = CompiledPipeline(pipeline, COLUMNS)
    problem = other.check_many(off_by_one_ulp, count=50)
    assert problem is not None and problem.startswith("vectorised score ")
    assert other.check_many(reference) == problem
    with pytest.raises(ValueError, match="lacks feature columns \\['amount'\\]"):
        compiled.encode_frame(probe_without_amount(compiled))


def probe_without_amount(compiled):
    return compiled.probe_frame(10).drop("amount")


def test_unsupported_models_are_refused(pipeline):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    with pytest.raises(UnsupportedModelError):
        CompiledPipeline(Pipeline([("encode", pipeline[0]), ("lr", LogisticRegression())]), COLUMNS)
    with pytest.raises(UnsupportedModelError):
        CompiledPipeline(pipeline[1], COLUMNS)


def vector(table, values, feature_time):
    return FeatureVector(table, "k", values, feature_time is not None, feature_time)


def test_python_features_equal_the_polars_request_frame():
    rng = random.Random(4)
    at = datetime.datetime(2026, 1, 7, 23, 59, 59, 999_999, tzinfo=datetime.UTC)
    for i in range(300):
        request = {
            "transaction_id": f"t{i}",
            "card_id": "c",
            "merchant_id": "m",
            "event_time": at - datetime.timedelta(seconds=rng.randrange(10**6)),
            "amount": rng.choice([0.0, 3.0, rng.uniform(0, 900)]),
            "merchant_category": rng.choice(["grocery", None]),
            "channel": "pos",
            "entry_mode": "chip",
            "device_type": None,
            "country": rng.choice(["PL", "US", None]),
            "card_country": rng.choice(["PL", "US"]),
        }
        card = {
            "txn_count_1h": rng.randrange(3),
            "txn_count_24h": rng.randrange(9),
            "txn_count_7d": rng.randrange(40),
            "amount_sum_24h": rng.uniform(0, 100),
            "amount_max_24h": rng.uniform(0, 100),
            "amount_mean_7d": rng.choice([0.0, None, rng.uniform(1, 90)]),
            "amount_std_7d": rng.choice([0.0, None, rng.uniform(0.5, 40)]),
            "online_share_7d": rng.random(),
            "foreign_share_7d": rng.random(),
            "night_share_7d": rng.random(),
        }
        merchant = {
            "transactions_30d": rng.randrange(100),
            "fraud_reported_30d": rng.randrange(3),
            "chargebacks_30d": rng.randrange(4),
            "fraud_rate_30d": rng.random() / 10,
        }
        age = datetime.timedelta(seconds=rng.choice([0, 0.5, 61.7, 86_400 * 2, 86_400 * 45]))
        looked_up = {
            "card_behaviour": vector(
                "card_behaviour", card, None if i % 9 == 0 else request["event_time"] - age
            ),
            "merchant_risk": vector("merchant_risk", merchant, request["event_time"] - 2 * age),
        }
        overrides = {"amount_mean_7d": 5.0, "txn_count_1h": 7} if i % 4 == 0 else None
        fast = request_features(FRAUD_SPEC, request, looked_up, overrides)
        frame = reference_frame(FRAUD_SPEC, request, looked_up, overrides).row(0, named=True)
        for name in COLUMNS:
            assert fast[name] == frame[name] or (fast[name] is None and frame[name] is None), (
                name,
                fast[name],
                frame[name],
            )
            assert type(fast[name]) is type(frame[name]) or frame[name] is None, name
