"""Measure a piece of work in a fresh process: wall time and peak resident memory."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".bench"


@dataclass(frozen=True)
class Measurement:
    """One measured run: what it reported, plus the process's peak memory."""

    name: str
    seconds: float
    peak_mib: float
    extra: dict


def measure(
    module: str, task: str, *args: str, env: Mapping[str, str] | None = None
) -> Measurement:
    """Run `python -m <module> <task> <args>` in a fresh process and read its JSON report.

    The task prints one JSON object on its last stdout line with at least `seconds`; peak
    memory is the child's own maximum resident set (`ru_maxrss`), which it also reports.
    `env` adds variables to the child's environment (e.g. a lake on the object store).
    """
    env = {**os.environ, **(env or {}), "PYTHONHASHSEED": "0"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", module, task, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark task {module} {task} failed:\n{done.stderr[-4000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    measured = Measurement(task, report.pop("seconds"), report.pop("peak_mib"), report)
    progress(
        f"{module.rsplit('.', 1)[-1]} {task} {' '.join(args)}".rstrip()
        + f": {measured.seconds:.1f} s measured, {measured.peak_mib:.0f} MiB peak "
        f"({time.perf_counter() - started:.1f} s with start-up)"
    )
    return measured


def progress(text: str) -> None:
    """One progress line on stderr (stdout carries the figures)."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def peak_mib() -> float:
    """Peak resident memory of this process in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def entry_point(main: Callable[[], None], tasks: Mapping[str, Callable[..., dict]]) -> None:
    """Run `main()` without arguments, or the task named by the first argument.

    A task is what `measure` starts in a fresh process: it returns its report, printed here as
    one JSON line with the process's peak memory added.
    """
    if len(sys.argv) == 1:
        main()
        return
    name = sys.argv[1]
    if name not in tasks:
        raise SystemExit(f"unknown benchmark task {name!r}; tasks: {', '.join(tasks)}")
    report = tasks[name](*sys.argv[2:])
    report["peak_mib"] = peak_mib()
    print(json.dumps(report))


def report(name: str, figures: dict) -> None:
    """Print a benchmark's figures and save them to `.bench/<name>.json`."""
    path = save(name, figures)
    print(json.dumps(figures, indent=2))
    print(f"saved {path}")
    progress(f"{name} done: figures in {path}")


def summary(count: int, started: float) -> None:
    """What a run of `count` benchmarks did since `started` (epoch seconds), and where."""
    saved = sorted(p.name for p in RESULTS.glob("*.json") if p.stat().st_mtime >= started)
    progress(
        f"{count} benchmarks in {time.time() - started:.0f} s; figures printed above and "
        f"saved in {RESULTS}/ ({', '.join(saved) or 'none saved'})"
    )


@contextlib.contextmanager
def object_store(state_dir: Path) -> Iterator[Any]:
    """A SeaweedFS server on 127.0.0.1 for the benchmarks' lakes on `s3://` (`make weed`).

    Yields the started server (`stack.seaweedfs.SeaweedFS`); its process group is stopped
    after the block.
    """
    from mlops_assets.stack.seaweedfs import scratch_s3

    with scratch_s3(state_dir) as server:
        yield server


def use_writer(name: str) -> None:
    """Make this process's delta_io write Parquet files with `name` on every store."""
    from mlops_assets.lakehouse import delta_io

    writer = delta_io.Writer(name)
    for store in delta_io.WRITERS:
        delta_io.WRITERS[store] = writer


def save(name: str, payload: dict) -> Path:
    """Write a benchmark's figures to `.bench/<name>.json`."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def median_run(measurements: Sequence[Measurement]) -> Measurement:
    """The run of median wall time (the upper one of an even count)."""
    return sorted(measurements, key=lambda m: m.seconds)[len(measurements) // 2]


def engines_agree(runs: Mapping[str, Measurement], key: str, what: str) -> None:
    """Raise when the polars and Spark runs report different `key` figures (`what` differs)."""
    if runs["polars"].extra[key] != runs["spark"].extra[key]:
        raise RuntimeError(
            f"{what} differ: polars {runs['polars'].extra[key]}, spark {runs['spark'].extra[key]}"
        )


def spark_session(master: str) -> tuple[Any, float]:
    """The Spark session with the project's settings on `master`, and its start-up seconds.

    A first tiny job runs before it is handed back, so the caller's clock starts after it.
    """
    from mlops_assets.defs.resources import SparkResource
    from mlops_assets.settings import load_settings

    started = time.perf_counter()
    spark = SparkResource.from_settings(load_settings({"MLOPS_SPARK_MASTER": master})).session
    spark.range(1).count()
    return spark, time.perf_counter() - started


def run_partition(job: Any, day: Any, digits: int) -> tuple[Any, float, dict[str, float]]:
    """Run a Dagster job for a day's partition in-process on an ephemeral instance, timed.

    Args:
        job: The resolved job definition.
        day: The partition's day (a date).
        digits: Decimals of the per-step seconds.

    Returns:
        The run's result, its wall seconds and each step's seconds by step key.
    """
    import dagster as dg

    with dg.DagsterInstance.ephemeral() as instance:
        started = time.perf_counter()
        result = job.execute_in_process(
            partition_key=day.isoformat(),
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        )
        seconds = time.perf_counter() - started
        steps = {
            s.step_key: round((s.end_time or 0) - (s.start_time or 0), digits)
            for s in instance.get_run_step_stats(result.run_id)
        }
    return result, seconds, steps
