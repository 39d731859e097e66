"""The access policy on the production stack: a dev process aimed at prod's servers writes nothing.

Real servers on free 127.0.0.1 ports, each stopped with its process group: PostgreSQL (prod's
Dagster instance and the MLflow server's store), `mlflow server` and Redis. Prod writes first
(a champion in the registry, its online store, a run on its instance, each stamped prod);
then a separate Python process configured as dev, but with prod's tracking server, Dagster
PostgreSQL and Redis in its variables, tries every write: each raises `AccessDeniedError`
naming dev, prod, the resource and the rule, and a snapshot of prod's databases and keys
taken before equals the one after. Reads go one way: dev reads prod's registry and online
store; prod reads nothing of dev's.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import dagster as dg
import polars as pl
import psycopg2
import pytest
import redis

from mlops_assets.access import AccessDeniedError, Resource
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.defs.runner import instance_environment, prepare_dagster_home, run_once
from mlops_assets.features.online_store import open_online_store
from mlops_assets.features.redis_store import RedisOnlineStore
from mlops_assets.models.deploy import lifecycle
from mlops_assets.models.guard import registry_client, registry_reader, store_environment
from mlops_assets.models.lifecycle import CHAMPION, model_name
from mlops_assets.settings import load_settings, project_root
from mlops_assets.stack.mlflow_server import mlflow_process
from mlops_assets.stack.postgres import Postgres, libpq_url
from mlops_assets.stack.process import StackError, free_port
from mlops_assets.stack.redis_server import redis_binary, redis_process
from mlops_assets.stack.redis_server import url as redis_url

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROD_PREFIX = "mlops:prod:online"
CARDS = pl.DataFrame(
    {
        "card_id": ["c1", "c2"],
        "feature_time": [datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)] * 2,
        "spend": [10.0, 20.0],
    }
)

# The dev process: each write in turn, each outcome as one JSON line.
DEV_SCRIPT = textwrap.dedent(
    """
    import datetime, importlib, json
    import dagster as dg
    import polars as pl
    from mlops_assets.access import AccessDeniedError
    from mlops_assets.defs.resources import LakehouseResource
    from mlops_assets.defs.runner import prepare_dagster_home, run_once
    from mlops_assets.features.online_store import open_online_store
    from mlops_assets.features.redis_store import RedisOnlineStore
    from mlops_assets.models.deploy import lifecycle, mlflow_client
    from mlops_assets.models.guard import check_registry_write, registry_reader
    from mlops_assets.models.lifecycle import CHAMPION, Lifecycle, model_name
    from mlops_assets.settings import load_settings

    settings = load_settings()
    client = mlflow_client(settings)
    prod_model = model_name("prod")
    frame = pl.DataFrame({"card_id": ["c1"], "spend": [1e6],
                          "feature_time": [datetime.datetime(2026, 2, 1, tzinfo=datetime.UTC)]})

    def publish(store):
        return store.publish("card_features", frame, key="card_id", feature_time="feature_time",
                             features=["spend"], defaults={"spend": 0.0})

    @dg.op
    def touch():
        return 1

    @dg.job
    def once():
        touch()

    defs = dg.Definitions(jobs=[once], resources={"lakehouse": LakehouseResource(
        env=settings.env, data_root=str(settings.data_root))})

    def run_on_prods_instance():
        with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
            return run_once(defs, "once", instance)

    writes = {
        "registry: register a model": lambda: client.create_registered_model(model_name("dev")),
        "registry: create a version": lambda: client.create_model_version(prod_model, "x"),
        "registry: set an alias": lambda: client.set_registered_model_alias(
            prod_model, CHAMPION, "1"),
        "registry: delete an alias": lambda: client.delete_registered_model_alias(
            prod_model, CHAMPION),
        "registry: set a version tag": lambda: client.set_model_version_tag(
            prod_model, "1", "mlops.stage", "Archived"),
        "registry: delete a version": lambda: client.delete_model_version(prod_model, "1"),
        "registry: create a webhook": lambda: client.create_webhook(
            name="dev-cd", url="http://127.0.0.1:9/mlflow-webhook",
            events=["model_version.created"]),
        "registry: promote": lambda: Lifecycle(client, prod_model).promote("2", "dev", "x"),
        "registry: log and register": lambda: check_registry_write(settings, model_name("dev")),
        "registry: through the read-only reader": lambda: registry_reader(
            settings, "prod").set_registered_model_alias(prod_model, "challenger", "1"),
        "online store: publish into prod's": lambda: publish(RedisOnlineStore(
            settings.online_store_url, prefix="mlops:prod:online", env=settings.env)),
        "instance: prepare the Dagster home": lambda: prepare_dagster_home(settings),
        "instance: launch a run": run_on_prods_instance,
        # DAGSTER_HOME is dev's home, set by prepare_dagster_home, on prod's PostgreSQL.
        "instance: load the code location": lambda: importlib.import_module(
            "mlops_assets.definitions"),
    }
    for what, write in writes.items():
        try:
            write()
        except AccessDeniedError as error:
            print(json.dumps({"what": what, "refused": True, "active": error.active,
                              "owner": error.owner, "resource": str(error.resource),
                              "rule": error.rule, "message": str(error)}), flush=True)
        else:
            print(json.dumps({"what": what, "refused": False}), flush=True)

    # Reads dev may do.
    reader = registry_reader(settings, "prod")
    champion = reader.get_model_version_by_alias(prod_model, CHAMPION).version
    prods = RedisOnlineStore(settings.online_store_url, prefix="mlops:prod:online",
                             env=settings.env)
    spend = prods.lookup("card_features", "c2").values["spend"]
    # Dev's own online store (its own prefix) is dev's to write.
    own = open_online_store(settings)
    publish(own)
    print(json.dumps({"read": {"champion": str(champion), "spend": spend,
                               "own_prefix": own.prefix}}), flush=True)
    """
)


@pytest.fixture(scope="module")
def servers():
    """PostgreSQL, `mlflow server` (on PostgreSQL) and Redis, each on a free port."""
    try:
        redis_binary()
    except StackError as error:
        pytest.skip(str(error))
    # Not under pytest's temporary root: PostgreSQL runs as the `postgres` user when we are
    # root, and a pytest session starting meanwhile makes that root private again.
    folder = Path(tempfile.mkdtemp(prefix="mlops-access-"))
    os.chmod(folder, 0o755)
    state = folder / "state"
    postgres = Postgres(folder / "postgres", state, free_port())
    started = []
    try:
        postgres.start()
        started.append(postgres.server)
        mlflow_port = free_port()
        mlflow = mlflow_process(postgres.url("mlflow"), folder / "artifacts", state, mlflow_port)
        mlflow.start()
        started.append(mlflow)
        redis_port = free_port()
        cache = redis_process(folder / "redis", state, redis_port)
        cache.start()
        started.append(cache)
        yield {
            "root": folder / "data",
            "dagster": postgres.url("dagster"),
            "mlflow": f"http://127.0.0.1:{mlflow_port}",
            "mlflow_db": postgres.url("mlflow"),
            "redis": redis_url(redis_port),
        }
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def prod_variables(servers) -> dict[str, str]:
    return {
        "MLOPS_DATA_ROOT": str(servers["root"]),
        "MLOPS_DAGSTER_POSTGRES_URL": servers["dagster"],
        "MLOPS_ONLINE_STORE": servers["redis"],
    }


def pg_snapshot(url: str) -> dict[str, list[str]]:
    """Every row of every table of a PostgreSQL database, sorted."""
    connection = psycopg2.connect(libpq_url(url), connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
            )
            tables = sorted(row[0] for row in cursor.fetchall())
            snapshot = {}
            for table in tables:
                cursor.execute(f'SELECT * FROM "{table}"')
                snapshot[table] = sorted(
                    repr(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row))
                    for row in cursor.fetchall()
                )
    finally:
        connection.close()
    return snapshot


def redis_snapshot(url: str, prefix: str) -> dict[bytes, bytes]:
    """Every key under a prefix with its serialized value."""
    client = redis.Redis.from_url(url)
    try:
        return {key: client.dump(key) for key in sorted(client.scan_iter(f"{prefix}*"))}
    finally:
        client.close()


@dg.op
def _touch() -> int:
    return 1


@dg.job
def _once():
    _touch()


@pytest.fixture(scope="module")
def prod(servers):
    """Prod's state on the servers: a champion, an online store, a run; each stamped prod."""
    names = ("MLFLOW_TRACKING_URI", "DAGSTER_HOME", *prod_variables(servers))
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({**prod_variables(servers), "MLFLOW_TRACKING_URI": servers["mlflow"]})
    try:
        settings = load_settings({**os.environ, "MLOPS_ENV": "prod"})
        client = registry_client(settings)
        name = model_name("prod")
        client.create_registered_model(name)
        experiment = client.create_experiment("access")
        folder = Path(tempfile.mkdtemp(prefix="mlops-access-model-"))
        cycle = lifecycle(settings)
        # Version 1 the champion, version 2 validated: a promotion only the policy stops.
        for number in range(2):
            run = client.create_run(experiment)
            (folder / "model.txt").write_text(run.info.run_id)
            client.log_artifact(run.info.run_id, str(folder / "model.txt"), "model")
            client.set_terminated(run.info.run_id)
            version = str(
                client.create_model_version(
                    name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id
                ).version
            )
            cycle.record_validation(version, True, {"pr_auc": 0.9})
            if number == 0:
                cycle.promote(version, "ci", "first champion")
        shutil.rmtree(folder)
        assert store_environment(client) == "prod"
        with open_online_store(settings) as store:
            assert store.prefix == PROD_PREFIX
            store.publish(
                "card_features",
                CARDS,
                key="card_id",
                feature_time="feature_time",
                features=["spend"],
                defaults={"spend": 0.0},
            )
            assert store.environment() == "prod"
        prepare_dagster_home(settings)
        with dg.DagsterInstance.get() as instance:
            assert instance_environment(instance) == "prod"
            lakehouse = LakehouseResource(env="prod", data_root=str(servers["root"]))
            defs = dg.Definitions(jobs=[_once], resources={"lakehouse": lakehouse})
            assert run_once(defs, "_once", instance).success
        yield settings
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_a_dev_process_aimed_at_prods_servers_writes_nothing(servers, prod):
    before = {
        "dagster": pg_snapshot(servers["dagster"]),
        "mlflow": pg_snapshot(servers["mlflow_db"]),
        "redis": redis_snapshot(servers["redis"], PROD_PREFIX),
    }
    assert before["dagster"]["runs"] and before["mlflow"]["registered_models"]
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        **prod_variables(servers),
        "MLOPS_ENV": "dev",
        "MLFLOW_TRACKING_URI": servers["mlflow"],
        "MLOPS_TRACKING_URI_PROD": servers["mlflow"],
    }
    done = subprocess.run(
        [sys.executable, "-c", DEV_SCRIPT],
        env=environ,
        cwd=project_root(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    outcomes = [line for line in lines if "what" in line]
    assert len(outcomes) == 14
    for outcome in outcomes:
        assert outcome["refused"], outcome["what"]
        assert (outcome["active"], outcome["owner"], outcome["rule"]) == ("dev", "prod", "write")
        assert f"environment 'dev' may not write {outcome['resource']}" in outcome["message"]
    resources = {outcome["what"].split(":")[0]: outcome["resource"] for outcome in outcomes}
    assert resources == {
        "registry": str(Resource.REGISTRY),
        "online store": str(Resource.ONLINE_STORE),
        "instance": str(Resource.INSTANCE),
    }
    [reads] = [line["read"] for line in lines if "read" in line]
    assert reads == {"champion": "1", "spend": 20.0, "own_prefix": "mlops:dev:online"}
    after = {
        "dagster": pg_snapshot(servers["dagster"]),
        "mlflow": pg_snapshot(servers["mlflow_db"]),
        "redis": redis_snapshot(servers["redis"], PROD_PREFIX),
    }
    changed = {
        store: sorted(t for t in after[store] if after[store][t] != before[store].get(t))
        for store in ("dagster", "mlflow")
    }
    assert changed == {"dagster": [], "mlflow": []}, {
        store: {t: (before[store].get(t), after[store][t]) for t in tables}
        for store, tables in changed.items()
    }
    assert after == before


def test_prod_reads_nothing_of_devs(servers, prod):
    with pytest.raises(AccessDeniedError) as error:
        registry_reader(prod, "dev")
    assert (error.value.active, error.value.owner, error.value.rule) == ("prod", "dev", "read")
    # Dev's online store on the shared server (stamped dev by its own first publish).
    dev_store = RedisOnlineStore(servers["redis"], prefix="mlops:dev:online", env="dev")
    dev_store.publish(
        "card_features",
        CARDS,
        key="card_id",
        feature_time="feature_time",
        features=["spend"],
        defaults={"spend": 0.0},
    )
    reader = RedisOnlineStore(servers["redis"], prefix="mlops:dev:online", env="prod")
    with pytest.raises(AccessDeniedError) as error:
        reader.lookup("card_features", "c1")
    assert (error.value.active, error.value.owner, error.value.resource, error.value.rule) == (
        "prod",
        "dev",
        Resource.ONLINE_STORE,
        "read",
    )
    # Prod's own reads are its own.
    assert (
        str(registry_client(prod).get_model_version_by_alias(model_name("prod"), CHAMPION).version)
        == "1"
    )
