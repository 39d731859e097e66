"""The demo's steps fail for real and end the story with exit code 1.

A one-day lake without any champion: streaming a landed file, answering REST requests, the
drift report of the day and a training all fail, each with a `FAILED:` line naming the step.
"""

import datetime

import dagster as dg
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.monitoring import MonitoringResource
from mlops_assets.demo import Demo, DemoFailed, exit_code
from mlops_assets.settings import load_settings
from mlops_assets.simulate import Scenario, simulate

START = datetime.date(2026, 1, 1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    """The demo's steps on a one-day lake (bronze to the online store), no model trained."""
    root = tmp_path_factory.mktemp("demo_steps")
    settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev"})
    scenario = Scenario.demo(days=1, transactions_per_day=300, seed=3, start_date=START)
    simulate(scenario, settings.landing_root)
    defs = build_definitions(settings, monitoring=MonitoringResource(label_maturity_days=3))
    demo = Demo(settings, defs, dg.DagsterInstance.ephemeral(), label_days=3)
    assert demo.ingest(START)
    return demo


def test_streaming_a_file_without_a_champion_fails_the_demo(demo, capsys):
    assert exit_code(lambda: demo.stream_one_file(START)) == 1
    out = capsys.readouterr().out
    assert "FAILED: stream: scoring transactions/2026-01-01/" in out
    assert "serving__stream_predictions" in out
    # A day without landed files is refused before any run.
    with pytest.raises(DemoFailed, match="no landed transactions file for 2026-01-05"):
        demo.stream_one_file(START + datetime.timedelta(days=4))


def test_rest_requests_without_a_champion_fail_the_demo(demo, capsys):
    assert exit_code(lambda: demo.online_burst(START, count=5, wait=0)) == 1
    out = capsys.readouterr().out
    assert "online: 0 of 5 REST requests answered" in out
    assert "FAILED: online: 5 REST requests refused: HTTP 503" in out
    with pytest.raises(DemoFailed, match="holds no transaction landed on 2026-01-05"):
        demo.online_burst(START + datetime.timedelta(days=4), count=5, wait=0)


def test_a_drift_report_of_an_unscored_day_fails_the_demo(demo, capsys):
    assert exit_code(lambda: demo.drift_report(START)) == 1
    out = capsys.readouterr().out
    assert "FAILED: the drift report of 2026-01-01 failed" in out
    assert "monitoring__drift_report" in out


def test_a_training_without_mature_labels_fails_the_demo(demo, capsys):
    assert exit_code(lambda: demo.train(START, 1)) == 1
    assert "FAILED: training fraud_detector promoted no champion" in capsys.readouterr().out
