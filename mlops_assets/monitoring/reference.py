"""A model version's monitoring reference: which data it is, how it is built, where it is kept.

The reference of a registered version is what the version was evaluated on: the hold-out of
its training set, at the Delta version of `ml/training_set` it trained on, with the version's
scores of those events. Both facts come from the tags of the version's MLflow run:

- `mlops.inputs`: a JSON object of the inputs' Delta versions; its `ml/training_set` entry is
  the training set version (required: without it the reference cannot be rebuilt);
- `mlops.split_time`: the first event time of the hold-out (optional: without it the hold-out
  is the last fifth of the training set by time, as validation takes it).

The window is widened to whole days: it starts at midnight (UTC) of the hold-out's first day,
because a monitoring window is a whole day and a reference starting mid-day would differ from
every window in its hours alone. A reference is computed once per version and kept in the
`monitoring/reference` table, partitioned by `model_version`.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import WriteResult, read_partition, write_partition

REFERENCE = TableRef("monitoring", "reference")
TRAINING_SET = "ml/training_set"
INPUTS_TAG = "mlops.inputs"
SPLIT_TAG = "mlops.split_time"
PREDICTION = "score"


class ReferenceSourceError(ValueError):
    """A version's run tags do not say which data its reference is."""


@dataclass(frozen=True)
class ReferenceSource:
    """Which data is the reference of a model version.

    Attributes:
        model_name: Registered model name.
        model_version: Registered version.
        training_set_version: Delta version of `ml/training_set` the version trained on.
        window_start: First event time of the reference (midnight UTC of the hold-out's first
            day), None when the run records no split time (the last fifth by time is taken).
    """

    model_name: str
    model_version: str
    training_set_version: int
    window_start: datetime.datetime | None

    @property
    def split_time(self) -> str | None:
        """The window's start as the ISO text `models.deploy.holdout` takes."""
        return self.window_start.isoformat() if self.window_start else None


@dataclass(frozen=True)
class Reference:
    """A version's reference rows and, when they were built now, the write that kept them.

    Attributes:
        rows: The spec's feature columns, `score` and `model_version`.
        written: The `monitoring/reference` write, None when the rows were read from it.
    """

    rows: pl.DataFrame
    written: WriteResult | None


def whole_day_start(split_time: str | None) -> datetime.datetime | None:
    """Midnight UTC of the day a split time falls on (None without a split time).

    Args:
        split_time: An ISO date-time (`2026-01-05T13:20:00+00:00`) or date, or None/empty.

    Raises:
        ReferenceSourceError: The text is not an ISO date or date-time.
    """
    if not split_time:
        return None
    try:
        day = datetime.date.fromisoformat(split_time[:10])
    except ValueError:
        raise ReferenceSourceError(
            f"tag {SPLIT_TAG}={split_time!r} is not an ISO date-time"
        ) from None
    return datetime.datetime.combine(day, datetime.time(), datetime.UTC)


def reference_source(
    model_name: str, model_version: str, tags: Mapping[str, str]
) -> ReferenceSource:
    """Which data is a version's reference, from the tags of the run that trained it.

    Args:
        model_name: Registered model name.
        model_version: Registered version.
        tags: The MLflow run's tags.

    Returns:
        The training set version and the window's start.

    Raises:
        ReferenceSourceError: `mlops.inputs` is missing, not a JSON object, lacks the training
            set, or names a version that is not a whole number; or the split time is not ISO.
    """
    who = f"{model_name} version {model_version}"
    text = tags.get(INPUTS_TAG)
    if text is None:
        raise ReferenceSourceError(
            f"{who} records no training set version (tag {INPUTS_TAG}): "
            "its reference cannot be rebuilt"
        )
    try:
        inputs = json.loads(text)
    except json.JSONDecodeError as error:
        raise ReferenceSourceError(f"{who}: tag {INPUTS_TAG} is not JSON ({error})") from None
    if not isinstance(inputs, dict) or TRAINING_SET not in inputs:
        raise ReferenceSourceError(
            f"{who} records no training set version (tag {INPUTS_TAG} has no {TRAINING_SET!r}):"
            " its reference cannot be rebuilt"
        )
    version = inputs[TRAINING_SET]
    if isinstance(version, bool) or not isinstance(version, int | str):
        raise ReferenceSourceError(
            f"{who}: tag {INPUTS_TAG} names training set version {version!r}, not a number"
        )
    try:
        number = int(version)
    except ValueError:
        raise ReferenceSourceError(
            f"{who}: tag {INPUTS_TAG} names training set version {version!r}, not a number"
        ) from None
    if number < 0:
        raise ReferenceSourceError(f"{who}: training set version {number} is negative")
    return ReferenceSource(
        model_name=model_name,
        model_version=str(model_version),
        training_set_version=number,
        window_start=_window_start(who, tags.get(SPLIT_TAG)),
    )


def _window_start(who: str, split_time: str | None) -> datetime.datetime | None:
    try:
        return whole_day_start(split_time)
    except ReferenceSourceError as error:
        raise ReferenceSourceError(f"{who}: {error}") from None


def build_reference(
    training_set: pl.DataFrame, source: ReferenceSource, model: Any
) -> pl.DataFrame:
    """The reference rows: the window's events of the training set and the version's scores.

    Args:
        training_set: `ml/training_set` at `source.training_set_version`.
        source: Which data is the reference.
        model: The loaded version (`spec` and `pyfunc`, as `serving.model.ServingModel`).

    Returns:
        The spec's feature columns, `score` (probability of fraud) and `model_version`.

    Raises:
        ValueError: The window holds no events of the training set.
    """
    from mlops_assets.models.deploy import holdout
    from mlops_assets.models.training import model_inputs

    rows = holdout(training_set, source.split_time)
    if not rows.height:
        raise ValueError(
            f"{source.model_name} version {source.model_version}: training set version "
            f"{source.training_set_version} holds no events from {source.split_time}"
        )
    scores = model.pyfunc.predict(model_inputs(rows, model.spec))[:, 1]
    return rows.select(model.spec.feature_columns).with_columns(
        pl.Series(PREDICTION, scores, dtype=pl.Float64),
        pl.lit(source.model_version).alias("model_version"),
    )


def model_reference(
    uri: str | Path,
    model: Any,
    *,
    run_tags: Callable[[], Mapping[str, str]],
    training_set: Callable[[int], pl.DataFrame],
) -> Reference:
    """A version's reference, read from the table or built once and written there.

    Args:
        uri: The `monitoring/reference` table.
        model: The loaded version (`name`, `version`, `spec`, `pyfunc`).
        run_tags: Returns the tags of the version's MLflow run (called only when building).
        training_set: Returns `ml/training_set` at a Delta version (called only when building).

    Returns:
        The rows and, when built now, the write (its Delta version and rows written).

    Raises:
        ReferenceSourceError: The run's tags do not say which data the reference is.
    """
    cached = read_partition(uri, {"model_version": model.version})
    if cached.height:
        return Reference(rows=cached, written=None)
    source = reference_source(model.name, model.version, run_tags())
    rows = build_reference(training_set(source.training_set_version), source, model)
    written = write_partition(uri, rows, {"model_version": model.version}, table=str(REFERENCE))
    return Reference(rows=rows, written=written)
