"""New cards from the simulator reach the training set, and the fraud detector learns from them.

A small lake (clean scenario, chargebacks within three days) goes through the medallion, the
feature tables and the point-in-time training set on an ephemeral Dagster instance; the fraud
detector is then fitted as declared. `measure` is the measurement these tests assert on.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

START = datetime.date(2026, 1, 1)
DAYS = 14
PER_DAY = 3_000
SEED = 21


def build_training_set(root: Path, days: int, per_day: int, seed: int) -> pl.DataFrame:
    """Simulate `days` of `per_day` transactions under `root` and build the training set."""
    import dagster as dg

    from mlops_assets.definitions import build_definitions
    from mlops_assets.settings import load_settings
    from mlops_assets.simulate import Scenario, simulate
    from mlops_assets_tests.serving_env import materialize_training_set, run_daily_jobs

    settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev"})
    scenario = Scenario.clean(
        days=days,
        transactions_per_day=per_day,
        seed=seed,
        start_date=START,
        label_delay_days=(1, 3),
    )
    simulate(scenario, settings.landing_root)
    defs = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        run_daily_jobs(defs, instance, scenario.dates)
        materialize_training_set(defs, instance, scenario.dates)
    return pl.read_delta(str(settings.lake_root / "ml" / "training_set"))


def measure(frame: pl.DataFrame, n_cards: int) -> dict[str, Any]:
    """Share and fraud rate of card_without_history rows, and what the fitted detector makes of it.

    Args:
        frame: The training set.
        n_cards: The scenario's population size (card numbers from it on are new cards).

    Returns:
        Plain figures: row counts, fraud rates with and without card history, the new cards'
        rows, and the detector's mean score on the marked rows with the flag as it is and
        flipped off (all other inputs unchanged), with its hold-out metrics.
    """
    from mlops_assets.features.spec import FRAUD_SPEC
    from mlops_assets.models.declaration import FRAUD_DETECTOR, FRAUD_LINEAR
    from mlops_assets.models.training import model_inputs, train

    marked = frame.filter(pl.col("card_without_history"))
    rest = frame.filter(~pl.col("card_without_history"))
    number = pl.col("card_id").str.slice(5).cast(pl.Int64)
    fresh = marked.filter(number >= n_cards)
    result = train(frame, FRAUD_SPEC, seed=3, params=dict(FRAUD_DETECTOR.params))

    def mean_score(rows: pl.DataFrame) -> float:
        return float(result.model.predict_proba(model_inputs(rows, FRAUD_SPEC))[:, 1].mean())

    unset = marked.with_columns(card_without_history=pl.lit(False))
    linear_spec = FRAUD_LINEAR.spec
    linear = train(
        frame,
        linear_spec,
        seed=3,
        params=dict(FRAUD_LINEAR.params),
        pipeline=FRAUD_LINEAR.pipeline,
    ).model
    names = list(linear.named_steps["encode"].get_feature_names_out())
    coefficient = float(
        linear.named_steps["classify"].coef_[0][names.index("numeric__card_without_history")]
    )

    def linear_score(rows: pl.DataFrame) -> float:
        return float(linear.predict_proba(model_inputs(rows, linear_spec))[:, 1].mean())

    return {
        "rows": frame.height,
        "without_history": marked.height,
        "without_history_share": marked.height / frame.height,
        "fraud_rate_without_history": float(marked["is_fraud"].mean()),
        "fraud_rate_with_history": float(rest["is_fraud"].mean()),
        "new_card_first_rows": fresh.height,
        "fraud_rate_new_card_first_rows": float(fresh["is_fraud"].mean()) if fresh.height else 0.0,
        "mean_score_flag_set": mean_score(marked),
        "mean_score_flag_unset": mean_score(unset),
        "mean_score_with_history": mean_score(rest),
        "holdout": result.metrics,
        "linear_coefficient": coefficient,
        "linear_mean_score_flag_set": linear_score(marked),
        "linear_mean_score_flag_unset": linear_score(unset),
    }


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    from mlops_assets.simulate import Scenario

    frame = build_training_set(tmp_path_factory.mktemp("new_cards"), DAYS, PER_DAY, SEED)
    n_cards = Scenario.clean(transactions_per_day=PER_DAY).n_cards
    return frame, n_cards, measure(frame, n_cards)


def test_the_training_set_holds_first_transactions_of_new_cards(figures):
    frame, n_cards, got = figures
    # Every simulated day brings 15 new cards on ordinary transactions and 4 on fraud bursts.
    assert got["new_card_first_rows"] > 10 * DAYS
    assert got["without_history"] >= got["new_card_first_rows"]
    assert 0 < got["without_history_share"] < 0.2
    # A new card's first transaction is its only one without history.
    number = pl.col("card_id").str.slice(5).cast(pl.Int64)
    fresh = frame.filter(number >= n_cards)
    firsts = fresh.sort("event_time").group_by("card_id").first()
    assert firsts["card_without_history"].all()
    assert fresh.height > firsts.height and not fresh["card_without_history"].all()


def test_fraud_is_more_frequent_without_card_history(figures):
    *_, got = figures
    assert got["fraud_rate_new_card_first_rows"] > 0.1
    assert got["fraud_rate_without_history"] > 2 * got["fraud_rate_with_history"]


def test_the_models_score_a_card_without_history_higher(figures):
    *_, got = figures
    # The trees see the missing history in the card features' defaults as much as in the flag:
    # rows without history score higher, flag or not.
    assert got["mean_score_flag_set"] > 2 * got["mean_score_with_history"]
    assert got["mean_score_flag_set"] >= got["mean_score_flag_unset"]
    # The linear model weighs the flag itself: the same transactions score higher with it set.
    assert got["linear_coefficient"] > 0
    assert got["linear_mean_score_flag_set"] > 2 * got["linear_mean_score_flag_unset"]
