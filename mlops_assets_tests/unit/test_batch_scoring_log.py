"""A day scored chunk by chunk into the inference log: the rows of one big batch, one commit."""

import datetime

import numpy as np
import polars as pl
import pytest

from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.lakehouse.delta_io import SchemaChangeError, scan_table, table_version
from mlops_assets.models.training import model_inputs, train
from mlops_assets.serving.compiled import CompiledPipeline
from mlops_assets.serving.inference_log import InferenceLog, inference_schema
from mlops_assets.serving.scoring import batch_predictions, model_scores, score_into_log
from mlops_assets_tests.unit.test_validation import events

# Columns that differ between two scorings of the same rows: when and how fast.
TIMING = ["logged_at", "latency_ms"]


class SklearnPyfunc:
    """The fitted pipeline answering `predict` with `predict_proba`, as its pyfunc does."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def predict(self, frame):
        return self.pipeline.predict_proba(frame)


class Model:
    """The parts of a loaded `ServingModel` that batch scoring reads."""

    def __init__(self, pipeline, compiled):
        self.name, self.version, self.alias = "dev.fraud_detector", "3", "champion"
        self.spec, self.threshold = FRAUD_SPEC, 0.5
        self.pyfunc = SklearnPyfunc(pipeline)
        self.compiled = compiled


@pytest.fixture(scope="module")
def pipeline():
    return train(events(3000, seed=2), FRAUD_SPEC, seed=1, params={"max_iter": 30}).model


def day(n: int, seed: int) -> pl.DataFrame:
    """Events of several days with every request field and feature column; some missing values."""
    frame = events(n, seed=seed)
    rng = np.random.default_rng(seed)
    return frame.with_columns(
        pl.format("card_{}", pl.int_range(pl.len()) % 17).alias("card_id"),
        pl.format("m_{}", pl.int_range(pl.len()) % 5).alias("merchant_id"),
        pl.lit("PL").alias("country"),
        pl.Series("card_country", rng.choice(["PL", "DE", ""], n)).replace("", None),
        pl.when(pl.Series(rng.random(n) < 0.1)).then(None).otherwise(pl.col("amount_std_7d")),
    ).with_columns(
        # The last rows fall on the next day: a chunk may hold two day partitions.
        pl.col("event_time") + datetime.timedelta(hours=21)
    )


def logged(uri) -> pl.DataFrame:
    return scan_table(uri).collect().drop(TIMING).sort("request_id")


def test_chunks_log_the_rows_of_one_batch_in_one_commit(tmp_path, pipeline):
    model = Model(pipeline, CompiledPipeline(pipeline, FRAUD_SPEC.feature_columns))
    features = day(2000, seed=4)
    schema = inference_schema(FRAUD_SPEC)
    whole = InferenceLog(tmp_path / "whole", schema=schema, start=False)
    whole.append(batch_predictions(model, features, mode="batch", run_id="run-1"))
    chunked = InferenceLog(tmp_path / "chunked", schema=schema, start=False)
    outcome = score_into_log(model, features, chunked, mode="batch", run_id="run-1", chunk_rows=333)
    assert outcome.rows == outcome.written.rows_written == 2000
    assert table_version(tmp_path / "chunked") == outcome.written.version == 1  # create, append
    expected, got = logged(tmp_path / "whole"), logged(tmp_path / "chunked")
    assert got.schema == expected.schema
    assert got.equals(expected)
    assert got.get_column("day").n_unique() > 1
    scores = pipeline.predict_proba(model_inputs(features, FRAUD_SPEC))[:, 1]
    assert outcome.flagged == int((scores >= 0.5).sum())
    assert outcome.mean_score == pytest.approx(float(scores.mean()))
    # The scores are the pipeline's own, bit for bit.
    by_id = got.select("transaction_id", "score").sort("transaction_id")
    want = features.select("transaction_id", pl.Series("score", scores)).sort("transaction_id")
    assert np.array_equal(
        by_id.get_column("score").to_numpy().view(np.int64),
        want.get_column("score").to_numpy().view(np.int64),
    )
    # A second batch appends one more commit; earlier rows stay.
    again = score_into_log(model, features.head(10), chunked, mode="batch", run_id="run-2")
    assert again.written.version == 2
    assert scan_table(tmp_path / "chunked").collect().height == 2010


def test_a_chunk_of_another_type_commits_nothing(tmp_path, pipeline):
    model = Model(pipeline, CompiledPipeline(pipeline, FRAUD_SPEC.feature_columns))
    log = InferenceLog(tmp_path / "log", schema=inference_schema(FRAUD_SPEC), start=False)
    score_into_log(model, day(50, seed=1), log, mode="batch", run_id="first")
    rows = batch_predictions(model, day(20, seed=2), mode="batch", run_id="second")
    changed = rows.with_columns(pl.col("score").cast(pl.String))
    typed = InferenceLog(tmp_path / "log", schema={**log.schema, "score": pl.String}, start=False)
    with pytest.raises(SchemaChangeError, match="score"):
        typed.append_chunks([rows.head(10), changed.tail(10)])
    assert table_version(tmp_path / "log") == 1
    assert scan_table(tmp_path / "log").collect().height == 50


def test_the_pyfunc_scores_when_the_compiled_trees_differ(pipeline):
    compiled = CompiledPipeline(pipeline, FRAUD_SPEC.feature_columns)
    model = Model(pipeline, compiled)
    features = day(300, seed=6)
    expected = pipeline.predict_proba(model_inputs(features, FRAUD_SPEC))[:, 1]
    assert np.array_equal(model_scores(model, features), expected)
    # Trees that no longer match the pipeline (a leaf value changed) are refused by the probe.
    broken = CompiledPipeline(pipeline, FRAUD_SPEC.feature_columns)
    broken._nodes = [nodes.copy() for nodes in broken._nodes]
    broken._nodes[0]["value"] += 1e-3
    assert (
        broken.check_many(
            lambda f: Model(pipeline, None).pyfunc.predict(model_inputs(f, FRAUD_SPEC))[:, 1]
        )
        is not None
    )
    assert np.array_equal(model_scores(Model(pipeline, broken), features), expected)
    assert np.array_equal(model_scores(Model(pipeline, None), features), expected)
