"""Dagster of the stack: the instance on PostgreSQL, two webservers and the daemon."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from mlops_assets.settings import project_root
from mlops_assets.stack.process import ServerProcess

# Launch a job's run through GraphQL (`executionParams`: selector, run config, tags).
LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

WORKSPACE_LOADED_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus } } } }
"""


def graphql(port: int, query: str, variables: Mapping | None = None, timeout: float = 30.0) -> dict:
    """POST a GraphQL query to a Dagster webserver on 127.0.0.1 and return its `data`.

    Raises:
        RuntimeError: The answer carries GraphQL errors.
    """
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": dict(variables or {})}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    if answer.get("errors"):
        raise RuntimeError(f"GraphQL errors: {answer['errors']}")
    return answer["data"]


def workspace_loaded(port: int) -> bool:
    """Whether the webserver answers and has loaded every code location."""
    try:
        data = graphql(port, WORKSPACE_LOADED_QUERY, timeout=5.0)
    except (urllib.error.URLError, OSError, RuntimeError, ValueError):
        return False
    entries = data["workspaceOrError"].get("locationEntries") or []
    return bool(entries) and all(entry["loadStatus"] == "LOADED" for entry in entries)


def initialize_storage(postgres_url: str) -> None:
    """Create the instance's tables in PostgreSQL once, before any Dagster process starts.

    The webservers and the daemon would otherwise all create them at the same moment on a
    new database.
    """
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    for kind in (PostgresRunStorage, PostgresEventLogStorage, PostgresScheduleStorage):
        storage = kind(postgres_url)
        dispose = getattr(storage, "dispose", None)
        if dispose is not None:
            dispose()


def _bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def webserver_process(
    state_dir: Path, port: int, env: Mapping[str, str], read_only: bool = False
) -> ServerProcess:
    """`dagster-webserver` on 127.0.0.1, ready once its code location has loaded."""
    command = [
        _bin("dagster-webserver"),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        str(project_root() / "workspace.yaml"),
    ]
    if read_only:
        command.append("--read-only")
    return ServerProcess(
        name="dagster-webserver-readonly" if read_only else "dagster-webserver",
        command=command,
        state_dir=state_dir,
        env=dict(env),
        cwd=project_root(),
        port=port,
        ready=lambda: workspace_loaded(port),
    )


def daemon_process(state_dir: Path, env: Mapping[str, str], postgres_url: str) -> ServerProcess:
    """`dagster-daemon run`: ready once it has written a heartbeat to the instance."""
    process = ServerProcess(
        name="dagster-daemon",
        command=[_bin("dagster-daemon"), "run", "-w", str(project_root() / "workspace.yaml")],
        state_dir=state_dir,
        env=dict(env),
        cwd=project_root(),
    )

    def heartbeat() -> bool:
        try:
            since = process.pid_file.stat().st_mtime - 1
        except FileNotFoundError:
            return False
        return any(stamp >= since for stamp in daemon_heartbeats(postgres_url).values())

    process.ready = heartbeat
    return process


def daemon_heartbeats(postgres_url: str) -> dict[str, float]:
    """The last heartbeat (epoch seconds) of each daemon of the instance; empty when none."""
    import psycopg2

    from mlops_assets.stack.postgres import libpq_url

    try:
        connection = psycopg2.connect(libpq_url(postgres_url), connect_timeout=2)
    except psycopg2.OperationalError:
        return {}
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT daemon_type, body FROM daemon_heartbeats")
        return {kind: float(json.loads(body)["timestamp"]) for kind, body in cursor.fetchall()}
    except psycopg2.Error:
        return {}
    finally:
        connection.close()
