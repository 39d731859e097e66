"""Serving replicas of the stack: `mlops serve` processes against the shared registry and store."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from mlops_assets.settings import project_root
from mlops_assets.stack.process import ServerProcess


def serve_process(
    replica: int, state_dir: Path, port: int, env: Mapping[str, str]
) -> ServerProcess:
    """One `mlops serve` replica on 127.0.0.1.

    Ready once its port is open: the server binds at once and loads the champion in the
    background (`/readyz` answers 200 once a model serves), so the stack comes up before any
    champion exists.
    """
    return ServerProcess(
        name=f"serve-{replica}",
        command=[
            os.path.join(os.path.dirname(sys.executable), "mlops"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        state_dir=state_dir,
        env=dict(env),
        cwd=project_root(),
        port=port,
    )


def stream_worker_process(state_dir: Path, env: Mapping[str, str]) -> ServerProcess:
    """The stream worker (`mlops stream`): scores landed transactions files as they land.

    It waits for a champion by itself (files of the newest three landing days that landed
    before one was promoted are scored once it is), so it is ready as soon as it runs.
    """
    return ServerProcess(
        name="stream-worker",
        command=[os.path.join(os.path.dirname(sys.executable), "mlops"), "stream"],
        state_dir=state_dir,
        env=dict(env),
        cwd=project_root(),
    )
