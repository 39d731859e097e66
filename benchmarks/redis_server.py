"""A throwaway redis-server for benchmarks: 127.0.0.1, a free port, no persistence."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def redis_server(root: str | Path) -> Iterator[str | None]:
    """Run redis-server under `root` for the block; yield its URL, None when not installed."""
    from mlops_assets.stack.process import StackError
    from mlops_assets.stack.redis_server import redis_binary, scratch_redis

    try:
        redis_binary()
    except StackError:
        yield None
        return
    with scratch_redis(Path(root) / "redis") as url:
        yield url


def used_memory_mib(url: str) -> float:
    """Memory the Redis server uses for its data, in MiB."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return round(client.info("memory")["used_memory"] / 2**20, 1)
    finally:
        client.close()
