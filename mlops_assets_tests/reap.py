"""Stop what a test run left running: every process carrying the run's marker.

A test run (`make test`, or any pytest session through the suite's conftest) sets
`MLOPS_TEST_RUN` in its environment; the xdist workers, the servers the tests start (in
process groups of their own) and their children inherit it. When the run ends, normally or
killed, `reap(run)` stops the process group of every process whose environment carries the
marker (the run's own value, or one nested under it: `run/...`), except the reaper itself
and its ancestors. A server that rewrites its environment (PostgreSQL's workers, with their
process titles) dies with its group leader.

Usage: `python -m mlops_assets_tests.reap RUN` (prints what it stopped).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

MARKER = "MLOPS_TEST_RUN"


def _ancestors() -> set[int]:
    """This process and its ancestors (never signalled)."""
    pids = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def marked(run: str) -> list[int]:
    """The pids whose environment carries `MLOPS_TEST_RUN` equal to `run` or under `run/`."""
    exact = f"{MARKER}={run}".encode()
    nested = f"{MARKER}={run}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        for variable in environ.split(b"\0"):
            if variable == exact or variable.startswith(nested):
                found.append(int(entry.name))
                break
    return found


def reap(run: str, timeout: float = 10.0) -> list[int]:
    """Stop every process of `run` (their process groups when they lead one or own one).

    SIGTERM first, SIGKILL for what is still alive after `timeout` seconds.

    Args:
        run: The run's marker value.
        timeout: Seconds between SIGTERM and SIGKILL.

    Returns:
        The pids signalled.
    """
    if not run:
        raise ValueError("reap: the run's marker value is empty")
    keep = _ancestors()
    own_groups = {os.getpgid(pid) for pid in keep if _exists(pid)}
    targets = [pid for pid in marked(run) if pid not in keep]

    def signal_all(sig: int) -> None:
        for pid in targets:
            try:
                group = os.getpgid(pid)
                if group not in own_groups:
                    os.killpg(group, sig)
                else:
                    os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    if not targets:
        return []
    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_exists(pid) for pid in targets):
        time.sleep(0.2)
    signal_all(signal.SIGKILL)
    return targets


def _exists(pid: int) -> bool:
    """Whether `pid` names a live, not yet reaped, process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def describe(pid: int) -> str:
    """The process's command line, for the report."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "(gone)"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:160]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0]:
        print("usage: python -m mlops_assets_tests.reap RUN", file=sys.stderr)
        return 2
    commands = {pid: describe(pid) for pid in marked(argv[0])}
    stopped = reap(argv[0])
    for pid in stopped:
        print(f"reap: stopped {pid} {commands.get(pid, '')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
