"""The test run's clean-up stops its marked processes (and their groups), and nothing else."""

import os
import subprocess
import time

import pytest

from mlops_assets_tests.reap import MARKER, marked, reap


def _spawn(marker: str | None) -> subprocess.Popen:
    """A shell in a process group of its own with a child (a server and its worker)."""
    env = {k: v for k, v in os.environ.items() if k != MARKER}
    if marker is not None:
        env[MARKER] = marker
    return subprocess.Popen(["sh", "-c", "sleep 300 & wait"], env=env, start_new_session=True)


def _gone(process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return True
        time.sleep(0.05)
    return False


def test_reap_stops_the_runs_groups_and_spares_the_rest():
    run = f"reap-test-{os.getpid()}-{time.monotonic_ns()}"
    ours, nested, other, unmarked = (
        _spawn(run),
        _spawn(f"{run}/pytest-1"),
        _spawn(f"{run}-other"),
        _spawn(None),
    )
    try:
        time.sleep(0.3)
        children = set(marked(run)) - {ours.pid, nested.pid}
        assert {ours.pid, nested.pid} <= set(marked(run))
        assert children, "the shells' children carry the marker too"
        stopped = reap(run, timeout=5)
        assert {ours.pid, nested.pid} <= set(stopped)
        assert _gone(ours) and _gone(nested)
        assert not marked(run)
        assert other.poll() is None and unmarked.poll() is None
    finally:
        for process in (ours, nested, other, unmarked):
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait()


def test_reap_refuses_an_empty_marker():
    with pytest.raises(ValueError, match="marker value is empty"):
        reap("")
