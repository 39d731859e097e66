import dataclasses
import os

import yaml

from mlops_assets.defs.runner import prepare_dagster_home
from mlops_assets.settings import load_settings, project_root

STACK_YAML = project_root() / "mlops_assets" / "stack" / "dagster.postgres.yaml"


def test_stack_instance_keeps_the_embedded_instance_policies():
    embedded = yaml.safe_load((project_root() / "dagster.yaml").read_text())
    stack = yaml.safe_load(STACK_YAML.read_text())
    assert stack["concurrency"] == embedded["concurrency"]
    assert stack["run_retries"] == embedded["run_retries"]
    assert stack["storage"] == {"postgres": {"postgres_url": {"env": "MLOPS_DAGSTER_POSTGRES_URL"}}}
    assert stack["run_monitoring"]["enabled"] is True
    assert stack["run_coordinator"]["config"]["dequeue_interval_seconds"] == 1


def test_stack_instance_config_is_valid(tmp_path, monkeypatch):
    from dagster._core.instance.config import dagster_instance_config

    monkeypatch.setenv("MLOPS_DAGSTER_POSTGRES_URL", "postgresql+psycopg2://u@127.0.0.1:1/d")
    (tmp_path / "dagster.yaml").write_text(STACK_YAML.read_text())
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_monitoring"]["poll_interval_seconds"] == 5


def test_dagster_home_gets_the_postgres_variant_only_when_a_url_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path)})
    home = prepare_dagster_home(settings, set_env=False)
    assert (home / "dagster.yaml").read_bytes() == (project_root() / "dagster.yaml").read_bytes()
    stack = dataclasses.replace(
        settings, dagster_postgres_url="postgresql+psycopg2://u@127.0.0.1:1/d"
    )
    assert prepare_dagster_home(stack, set_env=False) == home
    assert (home / "dagster.yaml").read_bytes() == STACK_YAML.read_bytes()
    assert "DAGSTER_HOME" not in os.environ
