"""Redis of the stack: the shared online store, persisted (AOF) under `data/<env>/stack/redis`."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from mlops_assets.stack.process import ServerProcess, StackError, free_port


def redis_binary() -> str:
    """The `redis-server` program.

    Raises:
        StackError: Redis is not installed.
    """
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None
    )
    if not found:
        raise StackError("redis-server is not installed; on Debian: apt-get install redis-server")
    return found


def url(port: int, db: int = 0) -> str:
    """The URL of one of the server's databases."""
    return f"redis://127.0.0.1:{port}/{db}"


def redis_process(data_dir: Path, state_dir: Path, port: int) -> ServerProcess:
    """The Redis server: 127.0.0.1 only, append-only file plus snapshots in `data_dir`.

    Every write goes to the append-only file (fsync each second); SIGTERM (`stop`) flushes it
    and writes a snapshot, so a stop and start loses nothing.
    """
    data_dir.mkdir(parents=True, exist_ok=True)

    def answers_ping() -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).ping())
        except redis.exceptions.RedisError:
            return False

    return ServerProcess(
        name="redis",
        command=[
            redis_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--protected-mode",
            "yes",
            "--dir",
            str(data_dir.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "900 1 300 10 60 10000",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ],
        state_dir=state_dir,
        port=port,
        ready=answers_ping,
    )


@contextlib.contextmanager
def scratch_redis(state_dir: Path) -> Iterator[str]:
    """A throwaway Redis for tests and benchmarks: 127.0.0.1, a free port, no persistence.

    Yields its URL while the block runs, then stops its process group.

    Raises:
        StackError: Redis is not installed, or did not start.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = ServerProcess(
        name="redis",
        command=[
            redis_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(state_dir),
            "--daemonize",
            "no",
        ],
        state_dir=state_dir,
        port=port,
    )
    server.start(timeout=30)
    try:
        yield url(port)
    finally:
        server.stop()
