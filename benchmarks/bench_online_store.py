"""Online store: publish 200,000 keys x 10 features, then time single-key lookups one by one.

The publish input is a feature table's history, two rows per card, so the figure includes
keeping the latest row per key. Lookups run in a fresh process against the published file:
10,000 random existing keys mixed with 5% unknown keys, each timed with `perf_counter_ns`,
with the in-process cache on (first pass mostly misses it, a second pass over the same keys
hits it) and off. Goal: p99 under 1 ms for one key in-process.

The same publish and lookups then run against the Redis store on a local redis-server
(started for the run, persistence off; skipped when redis-server is not installed): every
lookup is a round trip over TCP, so its figures sit beside SQLite's cache-off ones, with their
ratio from the same run. Goal: Redis p99 under 2 ms for one key.
"""

from __future__ import annotations

import datetime
import os
import random
import tempfile
import time
from pathlib import Path

from benchmarks.harness import entry_point, measure, report

KEYS = int(os.environ.get("BENCH_ONLINE_KEYS", "200000"))
LOOKUPS = int(os.environ.get("BENCH_ONLINE_LOOKUPS", "10000"))
MISSING_SHARE = 0.05
# Raised from 1 ms (issue 15, goal 7).
GOAL_P99_US = 50.0
FEATURES = [
    "amount_sum_1h",
    "amount_mean_24h",
    "amount_max_7d",
    "amount_std_30d",
    "tx_count_1h",
    "tx_count_24h",
    "distinct_merchants_7d",
    "is_new_card",
    "last_mcc",
    "last_seen_at",
]
DEFAULTS = {
    "amount_sum_1h": 0.0,
    "amount_mean_24h": 0.0,
    "amount_max_7d": 0.0,
    "amount_std_30d": None,
    "tx_count_1h": 0,
    "tx_count_24h": 0,
    "distinct_merchants_7d": 0,
    "is_new_card": True,
    "last_mcc": "unknown",
    "last_seen_at": None,
}


def _store_path(root: str) -> Path:
    return Path(root) / "online" / "features.sqlite"


def _history(keys: int):
    """Two rows per card (an older and a newer snapshot), rows shuffled."""
    import polars as pl

    n = 2 * keys
    rng = random.Random(7)
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    card = [f"card-{i:07d}" for i in range(keys)] * 2
    frame = pl.DataFrame(
        {
            "card_id": card,
            "feature_time": [start + datetime.timedelta(hours=i // keys) for i in range(n)],
            "amount_sum_1h": [rng.random() * 500 for _ in range(n)],
            "amount_mean_24h": [rng.random() * 80 for _ in range(n)],
            "amount_max_7d": [rng.random() * 2000 for _ in range(n)],
            "amount_std_30d": [rng.random() * 40 for _ in range(n)],
            "tx_count_1h": [rng.randrange(5) for _ in range(n)],
            "tx_count_24h": [rng.randrange(40) for _ in range(n)],
            "distinct_merchants_7d": [rng.randrange(20) for _ in range(n)],
            "is_new_card": [rng.random() < 0.05 for _ in range(n)],
            "last_mcc": [rng.choice(("5411", "5812", "5999", "4111", "7995")) for _ in range(n)],
        }
    ).with_columns(
        (pl.col("feature_time") - pl.duration(minutes=pl.col("tx_count_24h"))).alias("last_seen_at")
    )
    return frame.sample(fraction=1.0, shuffle=True, seed=3)


def _open(root: str, mode: str, url: str):
    """The store a task measures: SQLite (cache on or off) or Redis at `url`."""
    from mlops_assets.features.online_store import OnlineStore
    from mlops_assets.features.redis_store import RedisOnlineStore

    if mode == "redis":
        return RedisOnlineStore(url, prefix="bench:online")
    return OnlineStore(_store_path(root), cache=mode == "cache")


def task_publish(root: str, mode: str = "sqlite", url: str = "") -> dict:
    """Publish the history's latest row per card; time the publish alone."""
    from benchmarks.redis_server import used_memory_mib

    frame = _history(KEYS)
    store = _open(root, mode, url)
    started = time.perf_counter()
    result = store.publish(
        "card_features",
        frame,
        key="card_id",
        feature_time="feature_time",
        features=FEATURES,
        defaults=DEFAULTS,
    )
    seconds = time.perf_counter() - started
    size = used_memory_mib(url) if mode == "redis" else _store_path(root).stat().st_size / 2**20
    return {
        "seconds": seconds,
        "input_rows": frame.height,
        "keys": result.rows,
        "file_mib": round(size, 1),
    }


def _percentiles(nanos: list[int]) -> dict:
    ordered = sorted(nanos)
    total_s = sum(ordered) / 1e9

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000, 1)

    return {
        "p50_us": at(0.50),
        "p99_us": at(0.99),
        "max_us": round(ordered[-1] / 1000, 1),
        "lookups_per_s": round(len(ordered) / total_s),
    }


def _timed(lookup, table: str, keys: list[str]) -> tuple[list[int], int]:
    nanos = []
    found = 0
    clock = time.perf_counter_ns
    for key in keys:
        started = clock()
        vector = lookup(table, key)
        nanos.append(clock() - started)
        found += vector.found
    return nanos, found


def task_lookups(root: str, cache: str, url: str = "") -> dict:
    """Time single-key lookups of random existing keys plus unknown ones, one by one."""
    rng = random.Random(11)
    existing = [f"card-{rng.randrange(KEYS):07d}" for _ in range(LOOKUPS)]
    keys = [
        f"unknown-{i}" if rng.random() < MISSING_SHARE else key for i, key in enumerate(existing)
    ]
    store = _open(root, cache, url)
    started = time.perf_counter_ns()
    store.lookup("card_features", "card-0000000")
    cold_us = (time.perf_counter_ns() - started) / 1000
    # Warm-up on other keys: the figures describe a serving process that is already running.
    for i in range(200):
        store.lookup("card_features", f"card-{(i * 997) % KEYS:07d}")

    started_all = time.perf_counter()
    first, found = _timed(store.lookup, "card_features", keys)
    seconds = time.perf_counter() - started_all
    report = {
        "seconds": seconds,
        "cold_first_lookup_us": round(cold_us, 1),
        "found": found,
        "missing": len(keys) - found,
        "first_pass": _percentiles(first),
    }
    if cache == "cache":
        again, _ = _timed(store.lookup, "card_features", keys)
        report["repeat_pass"] = _percentiles(again)
    batch = keys[:1000]
    started = time.perf_counter_ns()
    store.lookup_many("card_features", batch)
    report["lookup_many_1000_ms"] = round((time.perf_counter_ns() - started) / 1e6, 2)
    report["stats"] = store.stats()["card_features"]
    return report


def _redis_figures(published, looked_up, sqlite) -> dict:
    single = looked_up.extra["first_pass"]
    return {
        "publish_s": round(published.seconds, 2),
        "publish_keys_per_s": round(published.extra["keys"] / published.seconds),
        "publish_peak_mib": round(published.peak_mib),
        "server_used_memory_mib": published.extra["file_mib"],
        "single_key": single,
        "cold_first_lookup_us": looked_up.extra["cold_first_lookup_us"],
        "lookup_many_1000_ms": looked_up.extra["lookup_many_1000_ms"],
        "lookup_stats": looked_up.extra["stats"],
        "p50_vs_sqlite_cache_off": round(single["p50_us"] / sqlite["p50_us"], 1),
        "p99_vs_sqlite_cache_off": round(single["p99_us"] / sqlite["p99_us"], 1),
        "goal": "p99 < 2000 us per single-key lookup over local TCP",
        "goal_met": single["p99_us"] < 2000,
    }


def main() -> None:
    """Publish, then measure lookups with the cache on and off; print and save the figures."""
    from benchmarks.redis_server import redis_server

    with tempfile.TemporaryDirectory(prefix="bench-online-") as root:
        published = measure("benchmarks.bench_online_store", "publish", root)
        cached = measure("benchmarks.bench_online_store", "lookups", root, "cache")
        uncached = measure("benchmarks.bench_online_store", "lookups", root, "nocache")
        with redis_server(root) as url:
            redis = "skipped: redis-server is not installed"
            if url is not None:
                task = "benchmarks.bench_online_store"
                on_redis = measure(task, "publish", root, "redis", url)
                looked_up = measure(task, "lookups", root, "redis", url)
                redis = _redis_figures(on_redis, looked_up, uncached.extra["first_pass"])
    figures = {
        "keys": published.extra["keys"],
        "features": len(FEATURES),
        "publish_input_rows": published.extra["input_rows"],
        "publish_s": round(published.seconds, 2),
        "publish_keys_per_s": round(published.extra["keys"] / published.seconds),
        "publish_peak_mib": round(published.peak_mib),
        "file_mib": published.extra["file_mib"],
        "lookups": LOOKUPS,
        "missing_share": MISSING_SHARE,
        "cache_on": cached.extra["first_pass"],
        "cache_on_repeat": cached.extra["repeat_pass"],
        "cache_off": uncached.extra["first_pass"],
        "cold_first_lookup_us": uncached.extra["cold_first_lookup_us"],
        "lookup_many_1000_ms": uncached.extra["lookup_many_1000_ms"],
        "lookup_stats_cache_on": cached.extra["stats"],
        "goal": f"p99 <= {GOAL_P99_US:g} us per single-key lookup in-process (cache off)",
        "goal_met": uncached.extra["first_pass"]["p99_us"] <= GOAL_P99_US,
        # The machine is shared: a load above its core count widens every tail here.
        "load_average_1m": round(os.getloadavg()[0], 1),
        "redis": redis,
    }
    report("online_store", figures)


if __name__ == "__main__":
    entry_point(main, {"publish": task_publish, "lookups": task_lookups})
