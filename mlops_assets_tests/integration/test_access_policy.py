"""The access policy on the embedded default: every forbidden path refused, nothing changed.

Each environment has its own folder under one data root (local Delta lake, SQLite online
store, SQLite MLflow store, SQLite Dagster instance). Prod writes first; then a process of
another environment tries each write into prod's resources (through a lake, an online store
folder or a Dagster home that leads into prod's, or through prod's tracking store named
directly) and each attempt raises `AccessDeniedError` naming the environment, the object and
the rule. A snapshot of the resource taken before the attempt equals the one after.
"""

from __future__ import annotations

import datetime
import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import polars as pl
import pytest

from mlops_assets.access import (
    ENVIRONMENT_STAMP,
    ENVIRONMENT_TAG,
    AccessDeniedError,
    Resource,
)
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.defs.runner import (
    check_dagster_home,
    claim_instance,
    instance_environment,
    prepare_dagster_home,
    run_days,
    run_once,
)
from mlops_assets.features.online_store import OnlineStore, open_online_store
from mlops_assets.lakehouse.catalog import Catalog, TableRef
from mlops_assets.lakehouse.store import DeltaRsStore
from mlops_assets.models.audit import AUDIT, AuditEvent, record
from mlops_assets.models.deploy import lifecycle, mlflow_client
from mlops_assets.models.guard import (
    check_registry_write,
    registry_client,
    registry_reader,
    store_environment,
)
from mlops_assets.models.lifecycle import CHAMPION, Lifecycle, model_name
from mlops_assets.monitoring.alerts import ALERTS
from mlops_assets.serving.inference_log import INFERENCE_LOG
from mlops_assets.serving.streaming import STREAM_CHECKPOINT
from mlops_assets.settings import load_settings, project_root

SILVER = TableRef("silver", "transactions")
QUARANTINE = TableRef("quarantine", "transactions")
FEATURES = TableRef("features", "card_features")
TABLES = [SILVER, QUARANTINE, FEATURES, AUDIT, INFERENCE_LOG, STREAM_CHECKPOINT, ALERTS]


@pytest.fixture(autouse=True)
def _own_stores(monkeypatch):
    # Settings take the process's MLflow store and Dagster home when set: each test names its own.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


def settings_of(root: Path, env: str, **more: str):
    return load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": env, **more})


def denied(error: pytest.ExceptionInfo, active: str, owner: str, resource: Resource, rule: str):
    """The error names the active environment, the owner, the object and the rule."""
    raised = error.value
    assert isinstance(raised, AccessDeniedError)
    assert (raised.active, raised.owner, raised.resource, raised.rule) == (
        active,
        owner,
        resource,
        rule,
    )
    message = str(raised)
    assert f"environment {active!r} may not {rule} {resource}" in message
    assert raised.obj in message and f"of {owner!r}" in message and f"rule {rule}" in message


def tree(folder: Path) -> dict[str, str]:
    """Every file below a folder with a digest of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def dump(path: Path) -> list[str]:
    """A SQLite file's whole content, statement by statement (read-only)."""
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


# Tables ----------------------------------------------------------------------------------


def _frame(env: str) -> pl.DataFrame:
    return pl.DataFrame({"day": [datetime.date(2026, 1, 1)] * 2, "value": [1, 2], "env": env})


def _prod_lake(root: Path) -> Path:
    prod = DeltaRsStore(Catalog(settings_of(root, "prod")))
    for table in TABLES:
        prod.append(table, prod.from_polars(_frame("prod")))
    return root / "prod" / "lake"


def test_tables_reached_through_a_linked_lake_are_refused_unchanged(tmp_path):
    lake = _prod_lake(tmp_path)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "lake").symlink_to(lake, target_is_directory=True)
    dev = settings_of(tmp_path, "dev")
    store = DeltaRsStore(Catalog(dev))
    before = tree(lake)
    for table in TABLES:
        with pytest.raises(AccessDeniedError) as error:
            store.append(table, store.from_polars(_frame("dev")))
        denied(error, "dev", "prod", Resource.TABLE, "write")
        assert str(table) in str(error.value) and "inside the root of prod" in str(error.value)
    # A domain writer handed a location goes through the catalog too (the audit trail).
    with pytest.raises(AccessDeniedError):
        record(
            Catalog(dev).uri_for_write(AUDIT),
            AuditEvent(model="dev.fraud_detector", version="1", action="promoted", who="t",
                       why="t", env="dev"),
        )  # fmt: skip
    assert tree(lake) == before


def test_a_linked_environment_root_or_table_folder_is_refused(tmp_path):
    lake = _prod_lake(tmp_path)
    before = tree(lake)
    # The whole staging root is prod's.
    (tmp_path / "staging").symlink_to(tmp_path / "prod", target_is_directory=True)
    staging = settings_of(tmp_path, "staging")
    with pytest.raises(AccessDeniedError) as error:
        Catalog(staging).uri_for_write(SILVER)
    denied(error, "staging", "prod", Resource.TABLE, "write")
    # One table folder of dev leads into prod's table.
    folder = tmp_path / "dev" / "lake" / "silver"
    folder.mkdir(parents=True)
    (folder / "transactions").symlink_to(lake / "silver" / "transactions")
    dev = settings_of(tmp_path, "dev")
    with pytest.raises(AccessDeniedError) as error:
        Catalog(dev).uri_for_write(SILVER)
    denied(error, "dev", "prod", Resource.TABLE, "write")
    # A folder leading out of the data root altogether.
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (folder / "labels").symlink_to(outside, target_is_directory=True)
    with pytest.raises(AccessDeniedError) as error:
        Catalog(dev).uri_for_write(TableRef("silver", "labels"))
    denied(error, "dev", "dev", Resource.TABLE, "write")
    assert "outside the environment's root" in str(error.value)
    # Dev's own table, not linked, is written.
    own = DeltaRsStore(Catalog(dev))
    own.append(QUARANTINE, own.from_polars(_frame("dev")))
    assert tree(lake) == before and list(outside.iterdir()) == []


def test_table_reads_follow_the_read_policy(tmp_path):
    _prod_lake(tmp_path)
    for env in ("dev", "staging"):
        store = DeltaRsStore(Catalog(settings_of(tmp_path, env)))
        assert store.scan(SILVER, env="prod").collect().to_native()["env"].to_list() == [
            "prod",
            "prod",
        ]
    dev = DeltaRsStore(Catalog(settings_of(tmp_path, "dev")))
    dev.append(SILVER, dev.from_polars(_frame("dev")))
    for active, owner in (("prod", "dev"), ("staging", "dev"), ("dev", "staging")):
        with pytest.raises(AccessDeniedError) as error:
            Catalog(settings_of(tmp_path, active)).uri_for_read(SILVER, owner)
        denied(error, active, owner, Resource.TABLE, "read")


# Online store ----------------------------------------------------------------------------

CARDS = pl.DataFrame(
    {
        "card_id": ["c1", "c2"],
        "feature_time": [datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)] * 2,
        "spend": [10.0, 20.0],
    }
)


def _publish(store, frame=CARDS):
    return store.publish(
        "card_features",
        frame,
        key="card_id",
        feature_time="feature_time",
        features=["spend"],
        defaults={"spend": 0.0},
    )


def test_online_store_of_another_environment_refuses_writes_and_follows_reads(tmp_path):
    prod = settings_of(tmp_path, "prod")
    _publish(open_online_store(prod))
    path = prod.online_store_path
    assert OnlineStore(path).environment() == "prod"
    # Dev's online folder leads into prod's.
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "online").symlink_to(path.parent, target_is_directory=True)
    dev = settings_of(tmp_path, "dev")
    before = dump(path)
    with open_online_store(dev) as store:
        with pytest.raises(AccessDeniedError) as error:
            _publish(store, CARDS.with_columns(pl.col("spend") * 100))
        denied(error, "dev", "prod", Resource.ONLINE_STORE, "write")
        # Dev may read prod's store.
        assert store.lookup("card_features", "c2").values["spend"] == 20.0
    assert dump(path) == before
    # Prod and staging may not read dev's store.
    dev_path = tmp_path / "dev-store" / "features.sqlite"
    _publish(OnlineStore(dev_path, env="dev"))
    for active in ("prod", "staging"):
        with pytest.raises(AccessDeniedError) as error:
            OnlineStore(dev_path, env=active).lookup("card_features", "c1")
        denied(error, active, "dev", Resource.ONLINE_STORE, "read")
        with pytest.raises(AccessDeniedError):
            OnlineStore(dev_path, env=active).tables()


# Registry --------------------------------------------------------------------------------


def _version(client, name: str, folder: Path) -> str:
    """A registered version of `name` with a one-file artifact (what the lifecycle moves)."""
    experiment = client.get_experiment_by_name("access") or client.get_experiment(
        client.create_experiment("access", artifact_location=(folder / "art").as_uri())
    )
    run = client.create_run(experiment.experiment_id)
    (folder / "model.txt").write_text(run.info.run_id)
    client.log_artifact(run.info.run_id, str(folder / "model.txt"), "model")
    client.set_terminated(run.info.run_id)
    source = f"{run.info.artifact_uri}/model"
    return str(client.create_model_version(name, source, run_id=run.info.run_id).version)


@pytest.fixture
def prod_registry(tmp_path):
    """Prod's SQLite registry: prod.fraud_detector 2 champion, 1 previous, 3 validated."""
    prod = settings_of(tmp_path, "prod")
    prod.env_root.mkdir(parents=True)
    client = registry_client(prod)
    name = model_name("prod")
    client.create_registered_model(name)
    cycle = lifecycle(prod)
    for number in range(3):
        version = _version(client, name, tmp_path)
        cycle.record_validation(version, True, {"pr_auc": 0.9})
        if number < 2:
            cycle.promote(version, "ci", "better")
    assert (cycle.version_of(CHAMPION), cycle.version_of("previous")) == ("2", "1")
    assert store_environment(client) == "prod"
    return prod, Path(prod.mlflow_uri.removeprefix("sqlite:///"))


def test_registry_writes_into_prods_store_are_refused_unchanged(
    tmp_path, monkeypatch, prod_registry
):
    prod, db = prod_registry
    before = dump(db)
    # A dev process configured with prod's tracking store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", prod.mlflow_uri)
    dev = settings_of(tmp_path, "dev")
    client = mlflow_client(dev)
    prod_model, dev_model = model_name("prod"), model_name("dev")
    attempts = {
        "register a model": lambda: client.create_registered_model(dev_model),
        "create a version": lambda: client.create_model_version(prod_model, "file:///x"),
        "set an alias": lambda: client.set_registered_model_alias(prod_model, CHAMPION, "1"),
        "delete an alias": lambda: client.delete_registered_model_alias(prod_model, CHAMPION),
        "set a tag": lambda: client.set_model_version_tag(prod_model, "1", "k", "v"),
        "set a model tag": lambda: client.set_registered_model_tag(prod_model, "k", "v"),
        "delete a version": lambda: client.delete_model_version(prod_model, "1"),
        "delete the model": lambda: client.delete_registered_model(prod_model),
        "create a webhook": lambda: client.create_webhook(
            name="dev-cd", url="http://127.0.0.1:9/hook", events=["model_version.created"]
        ),
        "log a run": lambda: client.create_run("0"),
        "promote": lambda: Lifecycle(client, prod_model).promote("3", "dev", "why not"),
        "roll back": lambda: Lifecycle(client, prod_model).rollback("dev", "why not"),
        "log and register": lambda: check_registry_write(dev, dev_model),
    }
    for what, attempt in attempts.items():
        with pytest.raises(AccessDeniedError) as error:
            attempt()
        raised = error.value
        assert (raised.active, raised.resource, raised.rule) == ("dev", Resource.REGISTRY, "write")
        assert raised.owner == "prod", what
        assert "may not write registry" in str(raised), what
    assert dump(db) == before
    # Dev may read it (it reads prod).
    assert str(client.get_model_version_by_alias(prod_model, CHAMPION).version) == "2"


def test_a_model_of_another_environment_is_refused_in_ones_own_store(tmp_path, prod_registry):
    staging = settings_of(tmp_path, "staging")
    staging.env_root.mkdir(parents=True)
    client = registry_client(staging)
    client.create_registered_model(model_name("staging"))  # stamps staging's store
    db = Path(staging.mlflow_uri.removeprefix("sqlite:///"))
    before = dump(db)
    for attempt in (
        lambda: client.create_registered_model(model_name("prod")),
        lambda: client.rename_registered_model(model_name("staging"), model_name("prod")),
        lambda: Lifecycle(
            mlflow.MlflowClient(staging.mlflow_uri), model_name("prod"), "staging"
        ).client.set_registered_model_alias(model_name("prod"), CHAMPION, "1"),
    ):
        with pytest.raises(AccessDeniedError) as error:
            attempt()
        denied(error, "staging", "prod", Resource.REGISTRY, "write")
        assert "model prod.fraud_detector" in str(error.value)
    assert dump(db) == before


def test_registry_reader_reads_prod_and_refuses_every_write(tmp_path, prod_registry):
    prod, db = prod_registry
    before = dump(db)
    for env in ("staging", "dev"):
        reader = registry_reader(settings_of(tmp_path, env), "prod")
        assert reader.read_only and reader.owner == "prod"
        champion = reader.get_model_version_by_alias(model_name("prod"), CHAMPION)
        assert str(champion.version) == "2"
        for attempt in (
            lambda r=reader: r.set_registered_model_alias(model_name("prod"), "challenger", "1"),
            lambda r=reader: r.set_model_version_tag(model_name("prod"), "1", "copied", "yes"),
            lambda r=reader, e=env: r.create_registered_model(model_name(e)),
        ):
            with pytest.raises(AccessDeniedError) as error:
                attempt()
            denied(error, env, "prod", Resource.REGISTRY, "write")
            assert "read-only" in str(error.value)
    assert dump(db) == before
    # Prod reads nothing of dev's; staging and dev nothing of each other's.
    for active, owner in (("prod", "dev"), ("prod", "staging"), ("staging", "dev")):
        with pytest.raises(AccessDeniedError) as error:
            registry_reader(settings_of(tmp_path, active), owner)
        denied(error, active, owner, Resource.REGISTRY, "read")


def test_prod_reading_a_store_stamped_by_dev_is_refused(tmp_path, monkeypatch):
    dev = settings_of(tmp_path, "dev")
    dev.env_root.mkdir(parents=True)
    registry_client(dev).create_registered_model(model_name("dev"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dev.mlflow_uri)
    client = registry_client(settings_of(tmp_path, "prod"))
    with pytest.raises(AccessDeniedError) as error:
        client.search_registered_models()
    denied(error, "prod", "dev", Resource.REGISTRY, "read")
    experiment = mlflow.MlflowClient(dev.mlflow_uri).get_experiment_by_name(ENVIRONMENT_STAMP)
    assert experiment.tags[ENVIRONMENT_TAG] == "dev"


# Dagster instance ------------------------------------------------------------------------


@dg.op
def _touch() -> int:
    return 1


def _defs(root: Path, env: str) -> dg.Definitions:
    @dg.job(partitions_def=dg.DailyPartitionsDefinition(start_date="2026-01-01"))
    def daily():
        _touch()

    @dg.job
    def once():
        _touch()

    lakehouse = LakehouseResource(env=env, data_root=str(root))
    return dg.Definitions(jobs=[daily, once], resources={"lakehouse": lakehouse})


def _instance_dump(home: Path) -> list[str]:
    return dump(home / "history" / "runs.db")


def test_runs_on_another_environments_instance_are_refused_unchanged(tmp_path, monkeypatch):
    prod = settings_of(tmp_path, "prod")
    home = prepare_dagster_home(prod)  # claims the instance for prod
    with dg.DagsterInstance.get() as instance:
        assert instance_environment(instance) == "prod"
        assert run_once(_defs(tmp_path, "prod"), "once", instance).success
    monkeypatch.delenv("DAGSTER_HOME")
    before = _instance_dump(home)
    # Dev's Dagster home is prod's.
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "dagster").symlink_to(home, target_is_directory=True)
    dev = settings_of(tmp_path, "dev")
    with pytest.raises(AccessDeniedError) as error:
        prepare_dagster_home(dev)
    denied(error, "dev", "prod", Resource.INSTANCE, "write")
    assert str(home) in str(error.value)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        count = instance.get_runs_count()
        with pytest.raises(AccessDeniedError):
            run_once(_defs(tmp_path, "dev"), "once", instance)
        with pytest.raises(AccessDeniedError):
            run_days(
                _defs(tmp_path, "staging"), [datetime.date(2026, 1, 2)], instance, None, "daily"
            )
        with pytest.raises(AccessDeniedError):
            claim_instance(instance, "staging")
        assert instance.get_runs_count() == count == 1
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with pytest.raises(AccessDeniedError) as error:
        check_dagster_home("dev")
    denied(error, "dev", "prod", Resource.INSTANCE, "write")
    assert _instance_dump(home) == before


def test_the_code_location_does_not_load_on_another_environments_instance(tmp_path):
    prod = settings_of(tmp_path, "prod")
    home = prepare_dagster_home(prod, set_env=False)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        claim_instance(instance, "prod")
    before = _instance_dump(home)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MLOPS_DATA_ROOT": str(tmp_path),
        "DAGSTER_HOME": str(home),
    }
    loaded = subprocess.run(
        [sys.executable, "-c", "import mlops_assets.definitions"],
        env={**env, "MLOPS_ENV": "dev"},
        cwd=project_root(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode != 0
    assert "AccessDeniedError: environment 'dev' may not write Dagster instance" in loaded.stderr
    assert _instance_dump(home) == before
    # Prod's own code location loads there.
    loaded = subprocess.run(
        [sys.executable, "-c", "import mlops_assets.definitions"],
        env={**env, "MLOPS_ENV": "prod"},
        cwd=project_root(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
