"""A throwaway redis-server for benchmarks: 127.0.0.1, a free port, no persistence."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def redis_server(root: str | Path) -> Iterator[str | None]:
    """Run redis-server under `root` for the block; yield its URL, None when not installed."""
    from mlops_assets.stack.process import ServerProcess, free_port

    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        yield None
        return
    state = Path(root) / "redis"
    port = free_port()
    server = ServerProcess(
        name="redis",
        command=[
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(state),
        ],
        state_dir=state,
        port=port,
    )
    server.start(timeout=30)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop()


def used_memory_mib(url: str) -> float:
    """Memory the Redis server uses for its data, in MiB."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return round(client.info("memory")["used_memory"] / 2**20, 1)
    finally:
        client.close()
