"""The local stack on free ports: every server up, state kept across a restart, nothing left."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import redis

from mlops_assets.settings import load_settings
from mlops_assets.stack.dagster_servers import graphql
from mlops_assets.stack.postgres import libpq_url
from mlops_assets.stack.process import group_members, port_open
from mlops_assets.stack.stack import Stack, free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPOSITORY = {"repositoryLocationName": "mlops_assets", "repositoryName": "__repository__"}
MODEL = "stack_e2e_model"
REDIS_KEY = "stack-e2e:card_000042"

LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""
LAUNCH_PIPELINE_EXECUTION = LAUNCH_RUN.replace("launchRun(", "launchPipelineExecution(")
START_SENSOR = """
mutation($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""
RESET_SENSOR = START_SENSOR.replace("startSensor(", "resetSensor(")
START_SCHEDULE = """
mutation($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""
RUN = """
query($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { runId jobName status creationTime } }
}
"""
INSTANCE = "{ instance { info daemonHealth { allDaemonStatuses { daemonType healthy } } } }"


@pytest.fixture(scope="module")
def stack():
    ports = free_ports(2)
    # Not under pytest's temporary root: a pytest session starting meanwhile makes that root
    # private again (0700), and PostgreSQL runs as the `postgres` user when we are root.
    folder = Path(tempfile.mkdtemp(prefix="mlops-stack-"))
    data_root = folder / "data"
    stack = Stack(load_settings({"MLOPS_ENV": "dev"}), ports, data_root=data_root)
    started = time.monotonic()
    stack.timings = {}  # printed at the end even when the first `up` fails
    try:
        stack.timings["first up"] = stack.up()
        stack.timings["first up"]["wall"] = time.monotonic() - started
        yield stack
    finally:
        stack.down()
        print(f"stack timings (s): {json.dumps(stack.timings, indent=1, default=round)}")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def state(stack):
    """What the first test writes and the restart test reads back."""
    return {}


def _dagster_db(stack):
    return psycopg2.connect(libpq_url(stack.settings.dagster_postgres_url), connect_timeout=5)


def _stored_run(stack, run_id):
    connection = _dagster_db(stack)
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT pipeline_name, status FROM runs WHERE run_id = %s", (run_id,))
        row = cursor.fetchone()
    connection.close()
    return row


def _mlflow_client(stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.urls["mlflow"], registry_uri=stack.urls["mlflow"])


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_up_starts_every_server_on_postgres_redis_and_mlflow(stack, state):
    rows = stack.status()
    assert [row.name for row in rows] == [
        "postgres",
        "redis",
        "mlflow",
        "dagster-webserver",
        "dagster-webserver-readonly",
        "dagster-daemon",
        "serve-1",
        "serve-2",
        "stream-worker",
    ]
    assert all(row.up and row.pid for row in rows), rows
    env_file = stack.env_file.read_text()
    for name, value in stack.env.items():
        assert f"export {name}=" in env_file and value in env_file
    assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{stack.ports.mlflow}" in env_file
    assert (stack.settings.dagster_home / "dagster.yaml").read_text().count("postgres_url") == 1

    # The tracking store carries the stack's environment from the start, so no other
    # environment's process can be the first to claim it.
    from mlops_assets.defs.runner import instance_environment
    from mlops_assets.models.guard import store_environment

    assert store_environment(_mlflow_client(stack)) == "dev"

    # Up again: every server already runs, nothing is started twice.
    pids = {row.name: row.pid for row in rows}
    stack.up()
    assert {row.name: row.pid for row in stack.status()} == pids

    # The Dagster instance is on PostgreSQL; a run launched through GraphQL is stored there
    # and dequeued by the daemon.
    instance = graphql(stack.ports.webserver, INSTANCE)["instance"]
    assert "run_storage: PostgresRunStorage" in instance["info"]
    assert "event_log_storage: PostgresEventLogStorage" in instance["info"]
    launched = graphql(
        stack.ports.webserver,
        LAUNCH_RUN,
        {"params": {"selector": {**REPOSITORY, "jobName": "online_publish"}, "runConfigData": {}}},
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    assert _stored_run(stack, run_id)[0] == "online_publish"
    waiting = ("QUEUED", "NOT_STARTED")
    deadline = time.monotonic() + 60
    while _stored_run(stack, run_id)[1] in waiting and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _stored_run(stack, run_id)[1] not in waiting, "the daemon never dequeued the run"
    # The run's creation time is now, whatever the zone the suite runs in (`make test` runs it
    # in America/Los_Angeles): the server keeps timestamps in UTC, as Dagster reads them.
    connection = _dagster_db(stack)
    with connection, connection.cursor() as cursor:
        cursor.execute("SHOW timezone")
        assert cursor.fetchone() == ("UTC",)
    connection.close()
    created = graphql(stack.ports.webserver, RUN, {"runId": run_id})["runOrError"]
    assert abs(created["creationTime"] - time.time()) < 120, (created, time.time())
    state["run_id"] = run_id
    # So does the instance: the webserver and the daemon stamped it loading the code.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_DAGSTER_POSTGRES_URL", stack.settings.dagster_postgres_url)
        with dg.DagsterInstance.from_config(str(stack.settings.dagster_home)) as instance:
            assert instance_environment(instance) == "dev"

    # MLflow's tracking server keeps the registry in PostgreSQL and the artifacts it serves
    # under the stack's folder.
    client = _mlflow_client(stack)
    client.create_registered_model(MODEL, tags={"stack": "e2e"})
    experiment = client.create_experiment("stack_e2e")
    run = client.create_run(experiment)
    client.log_text(run.info.run_id, "kept across restarts", "note.txt")
    assert list((stack.root / "mlflow-artifacts").rglob("note.txt"))
    connection = psycopg2.connect(libpq_url(stack.postgres.url("mlflow")))
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT name FROM registered_models")
        assert (MODEL,) in cursor.fetchall()
    connection.close()
    state["mlflow_run_id"] = run.info.run_id

    # Redis takes the online store's writes.
    store = redis.Redis(host="127.0.0.1", port=stack.ports.redis)
    store.set(REDIS_KEY, "features")
    store.close()

    # The serving replicas answer; without a champion they are live, not ready.
    for port in stack.ports.serve:
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 503


def test_read_only_webserver_shows_but_does_not_change(stack, state):
    read_only, full = stack.ports.readonly_webserver, stack.ports.webserver
    run = graphql(read_only, RUN, {"runId": state["run_id"]})["runOrError"]
    assert run["__typename"] == "Run" and run["jobName"] == "online_publish"
    assets = graphql(read_only, "{ assetNodes { assetKey { path } } }")["assetNodes"]
    assert ["online", "card_behaviour"] in [node["assetKey"]["path"] for node in assets]

    launch = {"params": {"selector": {**REPOSITORY, "jobName": "online_publish"}}}
    assert graphql(read_only, LAUNCH_RUN, launch)["launchRun"]["__typename"] == (
        "UnauthorizedError"
    )
    refused = graphql(read_only, LAUNCH_PIPELINE_EXECUTION, launch)["launchPipelineExecution"]
    assert refused["__typename"] == "UnauthorizedError"
    sensor = {"selector": {**REPOSITORY, "sensorName": "new_model_versions"}}
    assert graphql(read_only, START_SENSOR, sensor)["startSensor"]["__typename"] == (
        "UnauthorizedError"
    )
    schedule = {"selector": {**REPOSITORY, "scheduleName": "weekly_retrain"}}
    assert graphql(read_only, START_SCHEDULE, schedule)["startSchedule"]["__typename"] == (
        "UnauthorizedError"
    )

    started = graphql(full, START_SENSOR, sensor)["startSensor"]
    assert started["__typename"] == "Sensor", started
    assert started["sensorState"]["status"] == "RUNNING"
    assert graphql(full, RESET_SENSOR, sensor)["resetSensor"]["__typename"] == "Sensor"


def test_restart_keeps_runs_models_artifacts_and_online_rows(stack, state):
    started = time.monotonic()
    stopped = stack.down()
    stack.timings["down"] = time.monotonic() - started
    assert len(stopped) == len(stack.servers)
    assert not any(row.up for row in stack.status())

    started = time.monotonic()
    stack.timings["second up"] = stack.up()
    stack.timings["second up"]["wall"] = time.monotonic() - started
    assert all(row.up for row in stack.status())

    assert _stored_run(stack, state["run_id"])[0] == "online_publish"
    run = graphql(stack.ports.webserver, RUN, {"runId": state["run_id"]})["runOrError"]
    assert run["__typename"] == "Run"
    client = _mlflow_client(stack)
    assert client.get_registered_model(MODEL).tags == {"stack": "e2e"}
    note = client.download_artifacts(state["mlflow_run_id"], "note.txt", str(stack.root))
    with open(note) as handle:
        assert handle.read() == "kept across restarts"
    store = redis.Redis(host="127.0.0.1", port=stack.ports.redis)
    assert store.get(REDIS_KEY) == b"features"
    store.close()


def test_down_leaves_no_process_alive(stack):
    groups = {row.name: row.pid for row in stack.status()}
    assert all(groups.values())
    assert stack.processes()
    started = time.monotonic()
    stack.down()
    stack.timings["second down"] = time.monotonic() - started
    for name, pgid in groups.items():
        assert group_members(pgid) == [], f"{name} left processes behind"
    assert stack.processes() == []
    ports = [stack.ports.postgres, stack.ports.redis, stack.ports.mlflow, stack.ports.webserver]
    ports += [stack.ports.readonly_webserver, *stack.ports.serve]
    assert not any(port_open(port) for port in ports)
    assert [row for row in stack.status() if row.up or row.pid] == []
