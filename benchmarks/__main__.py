"""Run every benchmark and print its figures: `python -m benchmarks [name ...]`."""

from __future__ import annotations

import importlib
import sys
import time

from benchmarks.harness import progress, summary

BENCHMARKS = (
    "bench_medallion",
    "bench_point_in_time",
    "bench_online_store",
    "bench_features",
    "bench_model",
    "bench_drift",
    "bench_serving",
    "bench_batch",
    "bench_spark",
    "bench_spark_ml",
    "bench_daemon",
)


def main(argv: list[str]) -> int:
    """Run the named benchmarks (all by default)."""
    names = argv or list(BENCHMARKS)
    started, clock = time.time(), time.perf_counter()
    for index, name in enumerate(names, start=1):
        progress(f"{index}/{len(names)} {name} ({time.perf_counter() - clock:.0f} s elapsed)")
        module = importlib.import_module(f"benchmarks.{name}")
        module.main()
    summary(len(names), started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
