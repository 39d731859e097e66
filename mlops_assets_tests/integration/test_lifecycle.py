"""The model lifecycle on a real MLflow registry (SQLite) in a temporary folder."""

import json

import mlflow
import pytest

from mlops_assets.models.lifecycle import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    Lifecycle,
    LifecycleError,
    model_name,
)


@pytest.fixture
def lifecycle(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("lifecycle", artifact_location=str(tmp_path / "art"))
    name = model_name("dev")
    client.create_registered_model(name)

    def new_version() -> str:
        run = client.create_run(experiment)
        (tmp_path / "model.txt").write_text(run.info.run_id)
        client.log_artifact(run.info.run_id, str(tmp_path / "model.txt"), "model")
        client.set_terminated(run.info.run_id)
        source = f"{run.info.artifact_uri}/model"
        return str(client.create_model_version(name, source, run_id=run.info.run_id).version)

    return Lifecycle(client, name), new_version


def test_versions_move_from_none_to_staging_to_production_with_history(lifecycle):
    cycle, new_version = lifecycle
    first = new_version()
    assert cycle.status()["versions"][first]["stage"] == "None"
    cycle.make_challenger(first, "ci", "trained on week 1")
    assert cycle.version_of(CHALLENGER) == first
    cycle.record_validation(first, True, {"pr_auc": 0.8})
    move = cycle.promote(first, "ci", "first model passed the thresholds")
    assert move.stage == "Production" and move.replaced is None
    status = cycle.status()
    assert status[CHAMPION] == first and status[CHALLENGER] is None
    assert status["versions"][first]["stage"] == "Production"


def test_unvalidated_or_failed_versions_never_become_champion(lifecycle):
    cycle, new_version = lifecycle
    version = new_version()
    with pytest.raises(LifecycleError, match="has not passed validation \\(no result\\)"):
        cycle.promote(version, "ci", "no validation")
    cycle.record_validation(version, False, {"reason": "pr_auc below threshold"})
    with pytest.raises(LifecycleError, match="\\(failed\\)"):
        cycle.promote(version, "ci", "failed validation")
    assert cycle.version_of(CHAMPION) is None


def test_promotion_keeps_the_old_champion_as_previous_and_rollback_restores_it(lifecycle):
    cycle, new_version = lifecycle
    old, new = new_version(), new_version()
    for version in (old, new):
        cycle.record_validation(version, True, {})
    cycle.promote(old, "ci", "first")
    cycle.promote(new, "ci", "beats the champion")
    assert (cycle.version_of(CHAMPION), cycle.version_of(PREVIOUS)) == (new, old)
    move = cycle.rollback("on-call", "latency regression")
    assert move.version == old and move.replaced == new
    assert cycle.version_of(CHAMPION) == old
    assert cycle.version_of(PREVIOUS) is None
    status = cycle.status()["versions"]
    assert status[new]["stage"] == "Archived" and status[old]["stage"] == "Production"
    with pytest.raises(LifecycleError, match="no previous champion"):
        cycle.rollback("on-call", "again")


def test_the_mlops_command_shows_promotes_and_rolls_back(lifecycle, tmp_path, monkeypatch, capsys):
    from mlops_assets.cli import main

    cycle, new_version = lifecycle
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cycle.client.tracking_uri)
    monkeypatch.setenv("MLOPS_ENV", "dev")
    monkeypatch.setenv("MLOPS_DATA_ROOT", str(tmp_path))
    old, new = new_version(), new_version()
    cycle.record_validation(old, True, {})
    assert main(["model", "promote", old, "--why", "first"]) == 0
    assert main(["model", "promote", new]) == 2
    assert "has not passed validation" in capsys.readouterr().err
    cycle.record_validation(new, True, {})
    assert main(["model", "promote", new]) == 0
    assert main(["model", "rollback", "--why", "bad night"]) == 0
    capsys.readouterr()
    assert main(["model", "status"]) == 0
    assert json.loads(capsys.readouterr().out)["champion"] == old
    assert main(["model", "promote", "99"]) == 2
