"""Server processes of the stack: started in their own process group, stopped with all of it.

Each server runs detached (its own session, so its process group holds every child it forks:
MLflow's job consumers, Dagster's code servers), writes its output to a log file, and leaves a
pid file so that another command (`mlops stack down`) can stop the whole group later.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Set in the environment of every server of a stack (the stack's folder): a pid whose process
# lacks it is not the server's (a stale pid file whose pid was reused).
STACK_MARKER = "MLOPS_STACK_ROOT"


class StackError(RuntimeError):
    """A server of the stack could not be started, reached or stopped."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def process_alive(pid: int) -> bool:
    """Whether a process runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@dataclass
class ServerProcess:
    """One server of the stack: its command, where it logs, and how to tell it is ready.

    Attributes:
        name: Short name (`postgres`, `redis`, `mlflow`, ...), also the pid and log file name.
        command: The command line.
        state_dir: Folder of the stack's pid and log files.
        env: Variables added to the process environment.
        cwd: Working folder of the process.
        port: TCP port it listens on (readiness is the port accepting connections).
        ready: Further readiness check, called until it returns True.
        stop_signal: The signal that asks the group to stop (SIGTERM; PostgreSQL's fast
            shutdown is SIGINT).
    """

    name: str
    command: Sequence[str]
    state_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    port: int | None = None
    ready: Callable[[], bool] | None = None
    stop_signal: int = signal.SIGTERM

    @property
    def pid_file(self) -> Path:
        """Where the process group's id is kept while it runs."""
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        """The server's standard output and error."""
        return self.state_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The running server's process group id, None when it is not running.

        With the stack's marker in `env`, a live pid counts only when its process carries the
        marker: a pid file left by a crash or a reboot whose pid now names another process is
        removed.
        """
        pid, started = self._read_pid_file()
        if pid is None or not process_alive(pid):
            return None
        if started is not None:
            # The pid and its start time name exactly the process this stack started.
            if start_time(pid) == started:
                return pid
            self.pid_file.unlink(missing_ok=True)
            return None
        ours = self._ours(pid)
        if ours is None:
            return None
        if not ours:
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def _read_pid_file(self) -> tuple[int | None, str | None]:
        """The pid and start time the pid file records (start time None in old files)."""
        try:
            fields = self.pid_file.read_text().split()
            return int(fields[0]), (fields[1] if len(fields) > 1 else None)
        except (FileNotFoundError, ValueError, IndexError):
            return None, None

    def _ours(self, pid: int) -> bool | None:
        """Whether the process carries the stack's marker (True without a marker in `env`).

        None when its environment cannot be read (another user's process, as a non-root user):
        it is then neither stopped nor its pid file removed.
        """
        value = self.env.get(STACK_MARKER)
        if value is None:
            return True
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except FileNotFoundError:
            return False
        except OSError:
            return None
        return f"{STACK_MARKER}={value}".encode() in environ.split(b"\0")

    def start(self, timeout: float = 300.0) -> int:
        """Start the server (unless it runs already) and wait until it is ready.

        The wait ends as soon as the server is ready or exits; `timeout` only bounds a server
        that neither answers nor exits. A busy 2-core machine has taken over 2 minutes to bring
        `mlflow server` up on PostgreSQL (54 s to its tables), hence the default.

        Returns:
            The process group id.

        Raises:
            StackError: The server exited or was not ready within `timeout`; the message
                ends with the last lines of its log.
        """
        running = self.pid()
        if running is not None:
            self.wait_ready(timeout, running)
            return running
        if self.port is not None and port_open(self.port):
            raise StackError(
                f"{self.name}: port 127.0.0.1:{self.port} is already taken by another process; "
                f"stop it or choose another port"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(
                f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command)}\n".encode()
            )
            log.flush()
            process = subprocess.Popen(
                list(self.command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        # The start time beside the pid: a pid reused by another process after a crash or a
        # reboot is not taken for the server (servers such as PostgreSQL overwrite their
        # environment with their process title, so the stack's marker cannot tell).
        self.pid_file.write_text(f"{process.pid} {start_time(process.pid) or ''}".strip())
        self.wait_ready(timeout, process.pid, process)
        return process.pid

    def wait_ready(self, timeout: float, pid: int, process: subprocess.Popen | None = None) -> None:
        """Wait until the port accepts connections and `ready` says yes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = process.poll() if process is not None else (None if process_alive(pid) else -1)
            if exited is not None:
                self.pid_file.unlink(missing_ok=True)
                raise StackError(f"{self.name} exited with code {exited}:\n{self.tail()}")
            if (self.port is None or port_open(self.port)) and (self.ready is None or self.ready()):
                return
            time.sleep(0.2)
        raise StackError(f"{self.name} was not ready after {timeout:.0f} s:\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the whole process group: `stop_signal`, then SIGKILL after `timeout`.

        Returns:
            Whether the server was running.
        """
        pid, started = self._read_pid_file()
        if pid is None:
            return False
        # The leader may be gone while members of its group (workers it forked) live on.
        members = group_members(pid)
        if not members:
            self.pid_file.unlink(missing_ok=True)
            return False
        leader_is_ours = started is not None and start_time(pid) == started
        # A stale pid file whose pid (and group) are another program's now: not signalled.
        ours = [True] if leader_is_ours else [self._ours(member) for member in members]
        if not any(ours):
            if False in ours:
                self.pid_file.unlink(missing_ok=True)
            return False
        stop_group(pid, timeout, self.stop_signal)
        self.pid_file.unlink(missing_ok=True)
        return True

    def tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def start_time(pid: int) -> str | None:
    """When a process started (clock ticks since boot, from /proc), None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19]


def stop_group(pgid: int, timeout: float = 30.0, stop_signal: int = signal.SIGTERM) -> None:
    """Signal a process group (SIGTERM), SIGKILL it if any member is left after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, stop_signal)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and group_alive(pgid):
        time.sleep(0.1)


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields after the command: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in the group."""
    return bool(group_members(pgid))
