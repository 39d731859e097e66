"""Code and models reach prod on their own lifecycles, and neither disturbs the other.

A small prod lake with a champion, on a Dagster instance in prod's home. Its code is deployed
once (`mlops release deploy`). Then a model is promoted without a code change, and a code
change is deployed without retraining.
"""

import http.client
import json
import subprocess
import time

import dagster as dg
import mlflow
import polars as pl
import pytest

from mlops_assets.cli import main
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.runner import prepare_dagster_home
from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.lakehouse.catalog import Catalog
from mlops_assets.lakehouse.delta_io import scan_table, table_version
from mlops_assets.models.declaration import MODELS
from mlops_assets.models.deploy import lifecycle, validate_version
from mlops_assets.models.lifecycle import model_name
from mlops_assets.models.registry import log_and_register
from mlops_assets.models.training import train
from mlops_assets.models.validation import ValidationPolicy
from mlops_assets.release.deploy import (
    DEPLOYMENTS,
    AssetChange,
    DeployError,
    deploy,
    deployments,
    stale_by_code,
    status,
)
from mlops_assets.serving.app import ScoringServer, build_service
from mlops_assets.settings import load_settings, project_root
from mlops_assets.simulate import simulate
from mlops_assets.stack.process import free_port
from mlops_assets_tests.integration.conftest import (
    DAYS,
    THRESHOLDS,
    build_lake,
    retrain,
    twelve_days,
)
from mlops_assets_tests.serving_env import ServingEnv

CHANGED = dg.AssetKey(["ml", "training_set"])


def prod_environ(root) -> dict[str, str]:
    # A free port where no webserver listens: the deployment finds none to reload.
    return {
        "MLOPS_DATA_ROOT": str(root),
        "MLOPS_ENV": "prod",
        "MLOPS_STACK_WEBSERVER_PORT": str(free_port()),
    }


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    """A prod lake with a champion, its code deployed once through `mlops release deploy`."""
    root = tmp_path_factory.mktemp("prod")
    environ = prod_environ(root)
    settings = load_settings(environ)
    scenario = twelve_days()
    simulate(scenario, settings.landing_root)
    defs = build_definitions(settings)
    home = prepare_dagster_home(settings, set_env=False)
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        build_lake(defs, instance, DAYS)
        assert retrain(defs, instance).success
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environ.items():
                patch.setenv(name, value)
            assert main(["release", "deploy", "--who", "release test"]) == 0
        yield settings, defs, instance
    finally:
        instance.dispose()


def registry_snapshot(settings) -> dict:
    """Every registered model of prod: its aliases, and each version's tags."""
    client = mlflow.MlflowClient(settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    snapshot = {}
    for name in MODELS:
        registered = model_name(settings.env, name)
        versions = client.search_model_versions(f"name = '{registered}'")
        if not versions:
            continue
        snapshot[registered] = {
            "aliases": dict(client.get_registered_model(registered).aliases),
            "versions": {v.version: dict(v.tags) for v in versions},
        }
    return snapshot


class Serving:
    """The scoring service of prod in-process on 127.0.0.1, following the champion alias."""

    def __init__(self, settings) -> None:
        service = build_service(
            settings, poll_seconds=0.2, flush_interval_ms=100, wait_for_model=120
        )
        assert service.holder.current is not None, "no champion loaded"
        self.server = ScoringServer(("127.0.0.1", 0), service).start()
        self.requests = ServingEnv(settings, pl.DataFrame(), []).requests(3, seed=4)

    def version(self) -> str:
        host, port = self.server.server_address[:2]
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            connection.request(
                "POST",
                "/v1/score",
                json.dumps(self.requests[0]),
                {"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            answer = json.loads(response.read())
        finally:
            connection.close()
        assert response.status == 200, answer
        return answer["model"]["version"]

    def stop(self) -> None:
        self.server.stop()


def deployments_version(settings):
    return table_version(Catalog(settings).uri_for_read(DEPLOYMENTS))


def test_a_model_promoted_in_prod_moves_the_champion_and_leaves_the_code_deployment_alone(
    prod, monkeypatch, capsys
):
    settings, defs, instance = prod
    cycle = lifecycle(settings)
    before = cycle.version_of("champion")
    deployed_before = deployments_version(settings)
    assert deployed_before is not None
    # A new version trained and validated in the registry: no Dagster run, no code change.
    frame = scan_table(settings.lake_root / "ml" / "training_set").collect()
    version = log_and_register(
        settings,
        train(frame, FRAUD_SPEC, seed=8),
        FRAUD_SPEC,
        inputs={},
        example=frame.head(5),
        dagster_run_id="release-lifecycle-test",
    ).version
    verdict = validate_version(
        settings, version, frame, ValidationPolicy(**THRESHOLDS), who="release test"
    )
    assert verdict.passed, verdict.failed
    serving = Serving(settings)
    try:
        assert serving.version() == before
        for name, value in prod_environ(settings.data_root).items():
            monkeypatch.setenv(name, value)
        assert main(["model", "promote", version, "--why", "a better model"]) == 0
        capsys.readouterr()
        assert lifecycle(settings).version_of("champion") == version
        assert lifecycle(settings).version_of("previous") == before
        # Serving follows the alias: it answers with the new version, nothing redeployed.
        deadline = time.monotonic() + 60
        while serving.version() != version:
            assert time.monotonic() < deadline, "serving did not load the promoted version"
            time.sleep(0.1)
    finally:
        serving.stop()
    # No code moved: the deployments table has no new commit, nothing is stale by code.
    assert deployments_version(settings) == deployed_before
    assert stale_by_code(defs, instance) == []


def test_a_code_change_deployed_without_retraining_makes_exactly_its_asset_stale_by_code(
    prod, monkeypatch, capsys
):
    settings, defs, instance = prod
    registry_before = registry_snapshot(settings)
    champion = lifecycle(settings).version_of("champion")
    recorded = deployments(settings)
    graph = defs.resolve_asset_graph()
    old = graph.get(CHANGED).code_version
    new = f"{old}-next"

    # The definitions a new commit would build: one asset's code version moved on.
    def next_commit(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(code_version=new) if spec.key == CHANGED else spec

    changed_defs = dg.Definitions(
        assets=[
            a.map_asset_specs(next_commit) if isinstance(a, dg.AssetsDefinition) else a
            for a in defs.assets
        ],
        resources=defs.resources,
    )
    done = deploy(settings, changed_defs, instance, who="release test", webserver_port=free_port())

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True
    ).stdout.strip()
    assert done.git.commit == head and done.previous_commit == recorded["commit"][-1]
    assert not done.reload.answered
    assert done.changed == [AssetChange("ml/training_set", old, new)]
    # Dagster's own staleness: exactly that asset, with a code cause; nothing else by code.
    assert [(s.asset, s.partitions, s.recorded, s.current) for s in done.stale] == [
        ("ml/training_set", (), (old,), new)
    ]
    assert done.stale[0].reason == "has a new code version"
    rows = deployments(settings)
    assert rows.height == recorded.height + 1
    last = rows.row(rows.height - 1, named=True)
    assert json.loads(last["code_versions"])["ml/training_set"] == new
    assert [c["asset"] for c in json.loads(last["changed_assets"])] == ["ml/training_set"]
    assert last["who"] == "release test" and last["commit"] == head
    # What the checkout would still have to deploy: nothing; stale by code: the one asset.
    report = status(settings, changed_defs, instance)
    assert report["deployed"]["commit"] == head
    assert report["undeployed"]["code_versions"] == []
    assert [s["asset"] for s in report["stale_by_code"]] == ["ml/training_set"]
    # No model moved: versions, aliases and tags as they were; serving answers the same.
    assert registry_snapshot(settings) == registry_before
    serving = Serving(settings)
    try:
        assert serving.version() == champion
    finally:
        serving.stop()
    # The code that is not deployed is named by `mlops release status` in any environment
    # that may read prod: here the unchanged checkout against the changed deployment.
    for name, value in prod_environ(settings.data_root).items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert main(["release", "status"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["deployed"]["commit"] == head
    assert shown["undeployed"]["code_versions"] == [
        {"asset": "ml/training_set", "before": new, "after": old}
    ]
    assert shown["stale_by_code"] == []


def test_deploy_refuses_another_environment_and_writes_nothing(prod, monkeypatch, capsys):
    settings, defs, instance = prod
    before = deployments_version(settings)
    environ = prod_environ(settings.data_root)
    for env in ("dev", "staging"):
        monkeypatch.setenv("MLOPS_DATA_ROOT", environ["MLOPS_DATA_ROOT"])
        monkeypatch.setenv("MLOPS_ENV", env)
        assert main(["release", "deploy"]) == 2
        assert f"MLOPS_ENV is {env!r}" in capsys.readouterr().err
        with pytest.raises(DeployError, match="deploys to prod only"):
            deploy(load_settings({**environ, "MLOPS_ENV": env}), defs, instance, who="x")
    assert deployments_version(settings) == before
    assert not (settings.data_root / "dev" / "lake" / "ml" / "deployments").exists()
