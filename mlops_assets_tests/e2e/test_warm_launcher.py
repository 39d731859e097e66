"""The stack's warm run launcher: runs forked from the fork server, terminated, killed, timed."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest

from mlops_assets.settings import load_settings
from mlops_assets.simulate import Scenario, simulate
from mlops_assets.stack.dagster_servers import LAUNCH_RUN, graphql
from mlops_assets.stack.process import group_members, process_alive
from mlops_assets.stack.stack import Stack, free_ports
from mlops_assets.stack.warm_launcher import WORKER_TAG, default_socket_path

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

START = datetime.date(2026, 1, 1)
# Two small days (the first run also starts the fork server), then two larger ones whose runs
# last long enough to be terminated and killed while they run.
SMALL, LARGE = 300, 5000
PID_PREFIX = "Started process for run (pid: "
TIMEOUT_S = 120.0

TERMINATE_RUN = """
mutation($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
  }
}
"""
RUN = """
query($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status creationTime startTime endTime tags { key value } }
  }
}
"""
RUN_EVENTS = """
query($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      eventConnection { events { __typename ... on MessageEvent { message timestamp } } }
    }
  }
}
"""


def _day(index: int) -> datetime.date:
    return START + datetime.timedelta(days=index)


@pytest.fixture(scope="module")
def stack():
    ports = free_ports(2)
    # Not under pytest's temporary root: a pytest session starting meanwhile makes that root
    # private again (0700), and PostgreSQL runs as the `postgres` user when we are root.
    folder = Path(tempfile.mkdtemp(prefix="mlops-warm-"))
    stack = Stack(load_settings({"MLOPS_ENV": "dev"}), ports, data_root=folder / "data")
    landing = stack.settings.landing_root
    simulate(Scenario.clean(days=2, transactions_per_day=SMALL, start_date=START), landing)
    simulate(Scenario.clean(days=2, transactions_per_day=LARGE, start_date=_day(2)), landing)
    stack.figures = {}
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        stack.figures["processes_left_after_down"] = len(stack.processes())
        print(f"warm launcher figures: {json.dumps(stack.figures, indent=1)}")
        shutil.rmtree(folder, ignore_errors=True)


def _launch(stack: Stack, day: datetime.date, **tags: str) -> str:
    params = {
        "selector": {
            "repositoryLocationName": "mlops_assets",
            "repositoryName": "__repository__",
            "jobName": "medallion_daily",
        },
        "runConfigData": {},
        "executionMetadata": {
            "tags": [
                {"key": key, "value": value}
                for key, value in {"dagster/partition": day.isoformat(), **tags}.items()
            ]
        },
    }
    answer = graphql(stack.ports.webserver, LAUNCH_RUN, {"params": params})["launchRun"]
    assert answer["__typename"] == "LaunchRunSuccess", answer
    return answer["run"]["runId"]


def _run(stack: Stack, run_id: str) -> dict:
    return graphql(stack.ports.webserver, RUN, {"runId": run_id})["runOrError"]


def _wait(stack: Stack, run_id: str, statuses: set[str], timeout: float = TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    record = _run(stack, run_id)
    while record["status"] not in statuses and time.monotonic() < deadline:
        time.sleep(0.1)
        record = _run(stack, run_id)
    assert record["status"] in statuses, (run_id, record, stack.daemon.tail(40))
    return record


def _events(stack: Stack, run_id: str) -> list[dict]:
    data = graphql(stack.ports.webserver, RUN_EVENTS, {"runId": run_id})["runOrError"]
    return data["eventConnection"]["events"]


def _worker_pid(stack: Stack, run_id: str) -> int | None:
    for event in _events(stack, run_id):
        message = event.get("message") or ""
        if message.startswith(PID_PREFIX):
            return int(message[len(PID_PREFIX) :].split(")")[0])
    return None


def _timings(stack: Stack, run_id: str, record: dict) -> dict:
    """Creation → RUN_START (the launch), in the queue, and the whole run, in seconds."""
    created, started, ended = (record[k] for k in ("creationTime", "startTime", "endTime"))
    starting = next(
        float(event["timestamp"]) / 1000
        for event in _events(stack, run_id)
        if event["__typename"] == "RunStartingEvent"
    )
    return {
        "created_to_run_start_s": round(started - created, 2),
        "in_queue_s": round(starting - created, 2),
        "launcher_to_run_start_s": round(started - starting, 2),
        "running_s": round(ended - started, 2),
        "whole_run_s": round(ended - created, 2),
    }


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _fork_server(stack: Stack) -> list[int]:
    """The fork server processes of the stack's daemon group."""
    found = []
    for pid in group_members(stack.daemon.pid()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mlops_assets.stack.warm_launcher" in command and b"serve" in command:
            found.append(pid)
    return found


def test_runs_start_in_a_forked_worker_and_write_the_day(stack):
    daemon = stack.daemon.pid()
    timings = []
    for index in (0, 1):
        run_id = _launch(stack, _day(index))
        record = _wait(stack, run_id, {"SUCCESS", "FAILURE", "CANCELED"})
        assert record["status"] == "SUCCESS", (record, stack.daemon.tail(60))
        timings.append(_timings(stack, run_id, record))
        pid = _worker_pid(stack, run_id)
        assert pid is not None and pid != daemon
        tags = {tag["key"]: tag["value"] for tag in record["tags"]}
        assert tags[WORKER_TAG].split(":")[0] == str(pid)
    # The first launch started the fork server; the second found it warm.
    stack.figures["first_run_starts_the_fork_server"] = timings[0]
    stack.figures["warm_run"] = timings[1]
    print(f"launch timings: cold server {timings[0]}, warm {timings[1]}")
    assert timings[1]["launcher_to_run_start_s"] < 5.0, timings

    # One fork server, in the daemon's process group, listening under the Dagster home.
    servers = _fork_server(stack)
    assert len(servers) == 1, servers
    assert _ppid(servers[0]) == daemon
    assert Path(default_socket_path(stack.settings.dagster_home)).is_socket()

    lake = stack.settings.lake_root
    bronze = pl.read_delta(str(lake / "bronze" / "transactions"))
    silver = pl.read_delta(str(lake / "silver" / "transactions"))
    assert bronze.height >= 2 * SMALL
    assert silver.height > 0


def test_terminate_through_graphql_cancels_the_running_worker(stack):
    run_id = _launch(stack, _day(2), **{"dagster/max_retries": "0"})
    _wait(stack, run_id, {"STARTED", "SUCCESS", "FAILURE", "CANCELED"})
    pid = _worker_pid(stack, run_id)
    assert pid is not None and process_alive(pid)
    # A child of the fork server, in the daemon's group.
    assert _ppid(pid) in _fork_server(stack)
    assert os.getpgid(pid) == stack.daemon.pid()

    answer = graphql(stack.ports.webserver, TERMINATE_RUN, {"runId": run_id})["terminateRun"]
    assert answer["__typename"] == "TerminateRunSuccess", answer
    record = _wait(stack, run_id, {"CANCELED", "SUCCESS", "FAILURE"}, timeout=60)
    assert record["status"] == "CANCELED", record
    deadline = time.monotonic() + 10
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(pid)


def test_a_killed_worker_is_marked_failed(stack):
    run_id = _launch(stack, _day(3), **{"dagster/max_retries": "0"})
    _wait(stack, run_id, {"STARTED", "SUCCESS", "FAILURE", "CANCELED"})
    pid = _worker_pid(stack, run_id)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    # Run monitoring polls every 5 s and asks the launcher about the worker.
    record = _wait(stack, run_id, {"FAILURE", "SUCCESS", "CANCELED"}, timeout=60)
    assert record["status"] == "FAILURE", record
    stack.figures["killed_worker_marked_failed_after_s"] = round(time.monotonic() - killed, 1)
    messages = [event.get("message") or "" for event in _events(stack, run_id)]
    assert any(f"run worker process {pid}" in message for message in messages), messages[-5:]

    # The fork server lives on and launches the next run.
    assert len(_fork_server(stack)) == 1


def test_down_stops_the_fork_server_with_the_daemon(stack):
    servers = _fork_server(stack)
    assert servers
    stack.down()
    assert not any(process_alive(pid) for pid in servers)
    assert stack.processes() == []
