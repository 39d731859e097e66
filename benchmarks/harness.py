"""Measure a piece of work in a fresh process: wall time and peak resident memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".bench"


@dataclass(frozen=True)
class Measurement:
    """One measured run: what it reported, plus the process's peak memory."""

    name: str
    seconds: float
    peak_mib: float
    extra: dict


def measure(module: str, task: str, *args: str) -> Measurement:
    """Run `python -m <module> <task> <args>` in a fresh process and read its JSON report.

    The task prints one JSON object on its last stdout line with at least `seconds`; peak
    memory is the child's own maximum resident set (`ru_maxrss`), which it also reports.
    """
    env = {**os.environ, "PYTHONHASHSEED": "0"}
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
    return Measurement(task, report.pop("seconds"), report.pop("peak_mib"), report)


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


def save(name: str, payload: dict) -> Path:
    """Write a benchmark's figures to `.bench/<name>.json`."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path
