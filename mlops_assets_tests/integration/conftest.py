"""Shared fixtures: a small lake with a promoted champion, a Redis server (once per session)."""

import datetime
from collections.abc import Callable

import dagster as dg
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.runner import run_days
from mlops_assets.settings import load_settings
from mlops_assets.simulate import Scenario, simulate

START = datetime.date(2026, 1, 1)
DAYS = [START + datetime.timedelta(days=i) for i in range(12)]
CUTOFF = "2026-01-13T00:00:00+00:00"
# Lenient enough for a small lake, strict enough that a model without signal fails.
THRESHOLDS = {"min_pr_auc": 0.15, "min_recall_at_1pct_fpr": 0.1, "max_pr_auc_drop": 0.05}
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def retrain(defs, instance, seed=7, mode="enabled"):
    """Run `retrain_and_deploy` on the lake: training set, model, validation, promotion."""
    return defs.resolve_job_def("retrain_and_deploy").execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={
            "ops": {
                "ml__training_set": {"config": {"label_cutoff": CUTOFF, "days": 12}},
                "ml__fraud_model": {"config": {"seed": seed}},
                "ml__model_validation": {"config": {"mode": mode, **THRESHOLDS}},
            },
            **QUIET,
        },
    )


def build_lake(defs, instance, days) -> None:
    """The landed days through medallion and features, then the online store published."""
    assert all(r.success for r in run_days(defs, days, instance, log_level="ERROR"))
    runs = run_days(defs, days, instance, job_name="features_daily", log_level="ERROR")
    assert all(r.success for r in runs)
    assert defs.resolve_job_def("online_publish").execute_in_process(instance=instance).success


def twelve_days(kind: Callable[..., Scenario] = Scenario.clean) -> Scenario:
    """The suite's feed over `DAYS` (`Scenario.clean`, or `Scenario.demo` for a dirty one).

    3,000 transactions a day, seed 11, chargebacks within three days: every training event
    has a mature label.
    """
    return kind(
        days=len(DAYS),
        transactions_per_day=3_000,
        seed=11,
        start_date=START,
        label_delay_days=(1, 3),
    )


@pytest.fixture(scope="session")
def cd_lake(tmp_path_factory):
    """Twelve days through medallion and features, on an ephemeral Dagster instance."""
    root = tmp_path_factory.mktemp("cd")
    settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev"})
    simulate(twelve_days(), settings.landing_root)
    defs = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        build_lake(defs, instance, DAYS)
        yield settings, defs, instance


@pytest.fixture(scope="session")
def champion(cd_lake):
    """The first model trained, validated and promoted on the lake (its run's result)."""
    settings, defs, instance = cd_lake
    result = retrain(defs, instance)
    assert result.success
    return result


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free 127.0.0.1 port, persistence off, for the whole session.

    Started in its own process group through the stack's `ServerProcess`; `stop()` ends the
    group. Tests share the server and keep apart by key prefix.
    """
    from mlops_assets.stack.process import StackError
    from mlops_assets.stack.redis_server import redis_binary, scratch_redis

    try:
        redis_binary()
    except StackError as error:
        pytest.skip(str(error))
    with scratch_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url
