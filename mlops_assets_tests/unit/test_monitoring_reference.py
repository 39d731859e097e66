"""A model version's monitoring reference: its source from run tags, its rows, its table."""

import datetime
import json
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest

from mlops_assets.features.spec import FRAUD_SPEC, FeatureSpec
from mlops_assets.lakehouse.delta_io import scan_table, table_version
from mlops_assets.models.training import categorical_inputs
from mlops_assets.monitoring.reference import (
    ReferenceSourceError,
    build_reference,
    model_reference,
    reference_source,
    whole_day_start,
)

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


class AmountScorer:
    """A deterministic scorer: the probability of fraud grows with the amount."""

    def predict(self, frame) -> np.ndarray:
        amount = frame["amount"].to_numpy()
        fraud = amount / (amount + 100.0)
        return np.column_stack([1.0 - fraud, fraud])


@dataclass
class Version:
    name: str
    version: str
    spec: FeatureSpec
    pyfunc: AmountScorer


def training_set(hours: int = 96) -> pl.DataFrame:
    """`hours` events an hour apart from START, every feature column filled."""
    categorical = set(categorical_inputs(FRAUD_SPEC))
    columns = {
        c: (["a", "b"] * hours)[:hours] if c in categorical else [float(i) for i in range(hours)]
        for c in FRAUD_SPEC.feature_columns
    }
    return pl.DataFrame(
        {
            "transaction_id": [f"t{i:04d}" for i in range(hours)],
            "event_time": [START + datetime.timedelta(hours=i) for i in range(hours)],
            **columns,
        }
    )


def tags(training_set_version=4, split="2026-01-03T13:20:00+00:00") -> dict[str, str]:
    found = {"mlops.inputs": json.dumps({"ml/training_set": training_set_version})}
    if split is not None:
        found["mlops.split_time"] = split
    return found


def test_the_source_is_the_training_set_version_and_the_whole_day_of_the_split():
    source = reference_source("fraud", "3", tags())
    assert source.training_set_version == 4
    assert source.window_start == datetime.datetime(2026, 1, 3, tzinfo=datetime.UTC)
    assert source.split_time == "2026-01-03T00:00:00+00:00"
    assert reference_source("fraud", "3", tags(training_set_version="7")).training_set_version == 7
    assert reference_source("fraud", "3", tags(split=None)).window_start is None
    assert whole_day_start("") is None


@pytest.mark.parametrize(
    ("found", "message"),
    [
        ({}, "records no training set version (tag mlops.inputs)"),
        ({"mlops.inputs": "{not json"}, "tag mlops.inputs is not JSON"),
        ({"mlops.inputs": json.dumps({"silver/x": 1})}, "has no 'ml/training_set'"),
        ({"mlops.inputs": json.dumps({"ml/training_set": "v2"})}, "'v2', not a number"),
        ({"mlops.inputs": json.dumps({"ml/training_set": True})}, "True, not a number"),
        ({"mlops.inputs": json.dumps({"ml/training_set": -1})}, "-1 is negative"),
        ({**tags(), "mlops.split_time": "yesterday"}, "mlops.split_time='yesterday'"),
    ],
)
def test_tags_that_do_not_say_which_data_fail_naming_the_tag(found, message):
    with pytest.raises(ReferenceSourceError, match="fraud version 3") as error:
        reference_source("fraud", "3", found)
    assert message in str(error.value)


def test_the_reference_is_the_holdout_from_midnight_with_the_versions_scores():
    model = Version("fraud", "3", FRAUD_SPEC, AmountScorer())
    rows = build_reference(training_set(), reference_source("fraud", "3", tags()), model)
    # Events from 2026-01-03 00:00 (hour 48) on, not from the split's 13:20.
    assert rows.height == 48
    assert rows.get_column("amount").to_list()[0] == 48.0
    assert rows.columns == [*FRAUD_SPEC.feature_columns, "score", "model_version"]
    amount = rows.get_column("amount").to_numpy()
    np.testing.assert_allclose(rows.get_column("score").to_numpy(), amount / (amount + 100.0))
    assert rows.get_column("model_version").unique().to_list() == ["3"]
    # Without a split time, the last fifth of the events by time.
    last_fifth = build_reference(
        training_set(), reference_source("fraud", "3", tags(split=None)), model
    )
    assert last_fifth.height == 96 - int(96 * 0.8)


def test_a_window_without_events_is_an_error():
    model = Version("fraud", "3", FRAUD_SPEC, AmountScorer())
    source = reference_source("fraud", "3", tags(split="2027-01-01T00:00:00+00:00"))
    with pytest.raises(ValueError, match="holds no events from 2027-01-01"):
        build_reference(training_set(), source, model)


def test_a_reference_is_built_once_per_version_and_read_back_after(tmp_path):
    uri = str(tmp_path / "monitoring" / "reference")
    asked = []

    def loader(version: int) -> pl.DataFrame:
        asked.append(version)
        return training_set()

    first = model_reference(
        uri, Version("fraud", "3", FRAUD_SPEC, AmountScorer()), run_tags=tags, training_set=loader
    )
    assert asked == [4]
    assert first.written is not None and first.written.rows_written == 48
    assert first.written.version == table_version(uri)

    def no_tags() -> dict[str, str]:
        raise AssertionError("a kept reference needs no run tags")

    again = model_reference(
        uri,
        Version("fraud", "3", FRAUD_SPEC, AmountScorer()),
        run_tags=no_tags,
        training_set=loader,
    )
    assert again.written is None and asked == [4]
    assert again.rows.sort("amount").equals(first.rows.select(again.rows.columns).sort("amount"))
    other = model_reference(
        uri,
        Version("fraud", "4", FRAUD_SPEC, AmountScorer()),
        run_tags=lambda: tags(split=None),
        training_set=loader,
    )
    assert other.written is not None and other.written.version == first.written.version + 1
    stored = scan_table(uri).group_by("model_version").len().sort("model_version").collect()
    assert stored.rows() == [("3", 48), ("4", 20)]
