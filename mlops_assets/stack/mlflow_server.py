"""MLflow of the stack: tracking and registry on PostgreSQL, artifacts served from the env."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from mlops_assets.stack.process import ServerProcess


def answers_http(url: str, timeout: float = 2.0) -> bool:
    """Whether a GET of `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def mlflow_process(
    backend_store_uri: str,
    artifacts_dir: Path,
    state_dir: Path,
    port: int,
    workers: int = 1,
    jobs: bool = False,
) -> ServerProcess:
    """`mlflow server` on 127.0.0.1: runs and registry in `backend_store_uri`, artifacts proxied.

    Clients log and load artifacts through the server (`mlflow-artifacts:/`), which keeps them
    in `artifacts_dir`. MLflow's default host check admits localhost and 127.0.0.1 on any port,
    so no security flag is needed on 127.0.0.1.

    Args:
        backend_store_uri: SQLAlchemy URL of the tracking and registry store.
        artifacts_dir: Where the served artifacts are kept.
        state_dir: Folder of the stack's pid and log files.
        port: TCP port on 127.0.0.1.
        workers: uvicorn worker processes.
        jobs: Run MLflow's server-side job consumers (seven processes of GenAI scorers and
            trace jobs, which this project does not use; `MLFLOW_SERVER_ENABLE_JOB_EXECUTION`).
            Any process MLflow starts is in the server's process group; `stop` ends them all.
    """
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    return ServerProcess(
        name="mlflow",
        command=[
            os.path.join(os.path.dirname(sys.executable), "mlflow"),
            "server",
            "--backend-store-uri",
            backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            str(artifacts_dir.resolve()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        state_dir=state_dir,
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if jobs else "false"},
        port=port,
        ready=lambda: answers_http(f"http://127.0.0.1:{port}/health"),
    )
