"""The plain-Python walk of the compiled trees gives predict_proba's scores to the last bit."""

import random

import numpy as np
import polars as pl
import pytest

from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.models.training import model_inputs, train
from mlops_assets.serving.compiled import CompiledPipeline
from mlops_assets.serving.row_scorer import RowScorer
from mlops_assets_tests.unit.test_serving_scoring import COLUMNS, noisy
from mlops_assets_tests.unit.test_validation import events


@pytest.fixture(scope="module")
def pipeline():
    return train(events(3000, seed=4), FRAUD_SPEC, seed=3, params={"max_iter": 60}).model


def test_the_walk_equals_predict_proba_and_the_compiled_scorer(pipeline):
    compiled = CompiledPipeline(pipeline, COLUMNS)
    walk = RowScorer(compiled)
    frame = noisy(events(1200, seed=11), seed=5)
    expected = pipeline.predict_proba(model_inputs(frame, FRAUD_SPEC))[:, 1]
    rows = [list(row) for row in frame.iter_rows()]
    got = np.array([walk.score(row) for row in rows])
    assert np.array_equal(got, expected)
    assert [walk.score(r) for r in rows[:200]] == [compiled.score(r) for r in rows[:200]]
    for row in rows[:200]:
        assert np.array_equal(np.array(walk.encode(row)), compiled.encode(row), equal_nan=True)


def test_the_walk_decides_on_split_thresholds_as_scikit_learn(pipeline):
    compiled = CompiledPipeline(pipeline, COLUMNS)
    walk = RowScorer(compiled)
    is_split = compiled._left != np.arange(len(compiled._left))
    splits_of = {
        target: list(compiled._threshold[(compiled._feature == target) & is_split])
        for _, target in compiled._numeric
    }
    rng = random.Random(21)
    frame = noisy(events(400, seed=12), seed=6)
    edges = frame.to_dicts()
    for row in edges:
        for source, target in compiled._numeric:
            if splits_of[target] and rng.random() < 0.6:
                value = float(rng.choice(splits_of[target]))
                toward = rng.choice([-np.inf, np.inf, None])
                row[COLUMNS[source]] = value if toward is None else np.nextafter(value, toward)
    edge_frame = pl.DataFrame(edges, schema=frame.schema)
    expected = pipeline.predict_proba(model_inputs(edge_frame, FRAUD_SPEC))[:, 1]
    got = np.array([walk.score(list(row)) for row in edge_frame.iter_rows()])
    assert np.array_equal(got, expected)


def test_a_compiled_form_without_node_arrays_is_refused():
    class Empty:
        pass

    with pytest.raises(ValueError, match="compiled pipeline has no"):
        RowScorer(Empty())
