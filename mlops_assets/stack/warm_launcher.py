"""A run launcher that forks each run from a warm process: a run starts in well under a second.

Dagster's default run launcher asks the code server for a run, and the code server starts a
fresh Python for it, which imports Dagster and the project's definitions (4 s on a quiet
machine, 9-12 s under load) before the run's first step. `WarmRunLauncher` keeps one "fork
server" instead: a small long-lived process (`python -m mlops_assets.stack.warm_launcher serve
--socket PATH`) that has imported Dagster, the Dagster PostgreSQL storage, polars, deltalake
and `mlops_assets.definitions` (its jobs resolved), starts no threads of its own and listens on
a unix socket under the Dagster home. For each run the launcher sends the run id; the server
forks, and the child runs the run the way `dagster api execute_run` does (the job rebuilt from
the run's origin; an engine event "Started process for run (pid: N)." names its pid, which the
project's `run_worker_watchdog` sensor reads), then exits. The server answers with the child's
pid and reaps its children.

The child opens its own instance (new PostgreSQL connections) after the fork; the server
never opens one. Library threads that exist in the server at the fork (jemalloc's background
threads of polars and pyarrow, polars' spill cleaner) are not copied into the child: polars
builds its thread pool on first use, so the server must not run polars work itself.

Where the server runs: the daemon's launcher starts it on the first launch (and waits for it,
which costs the first run what a cold run process costs), in the daemon's own process group:
`mlops stack down` stops the daemon's whole group and the server and its runs with it; the
server also exits when its parent (the daemon) is gone. One server per Dagster home (a lock
file next to the socket).

Code changes are NOT picked up by a running fork server: it keeps the definitions it imported
at start. A code deployment restarts the stack (`mlops stack down` then `mlops stack up`),
which restarts the daemon and with it the server.

Every process that loads the instance (webservers, daemon) can terminate a run or check its
worker: the launcher records the child's pid and start time in the run's
`mlops/run_worker` tag, and compares the start time before it signals, so a reused pid is never
hit. `terminate` reports the run canceling and sends the child SIGTERM (its interrupt: the
step stops and the run ends CANCELED); `check_run_worker_health` reports a run whose child is
gone as FAILED, and the daemon's run monitoring then marks the run failed.

When the fork server cannot be started or reached, the launcher launches the run through the
code server as Dagster's default launcher does (an engine event on the run names the socket and
the reason), or, with `fallback_to_code_server: false`, fails the launch with that error.
Only a launch that never reached a server (nothing listens on the socket) goes to a new server
or to the code server. A launch whose answer is lost (a timeout after the request was sent) is
sent once more to the same server, which answers a run it forked already (and whose worker
still runs) with that worker instead of forking again; when that fails too the launch fails,
since the worker may be running: one run is never forked twice.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import BoolSource, Field, StringSource
from dagster._config.config_schema import UserConfigSchema
from dagster._core.errors import DagsterLaunchFailedError
from dagster._core.launcher import (
    CheckRunHealthResult,
    DefaultRunLauncher,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value

# The run tag with the run worker's "pid:start" (start: /proc/<pid>/stat start time in ticks).
WORKER_TAG = "mlops/run_worker"
SOCKET_NAME = "warm-launcher.sock"
# Unix socket paths are limited to 108 bytes (with the final NUL).
_MAX_SOCKET_PATH = 100
_REQUEST_TIMEOUT_S = 30.0


class ForkServerUnavailable(RuntimeError):
    """The fork server could not be started or reached on its socket."""

    def __init__(self, socket_path: str, reason: object) -> None:
        super().__init__(f"warm run launcher: fork server on {socket_path} unavailable: {reason}")
        self.socket_path = socket_path


class LaunchOutcomeUnknown(RuntimeError):
    """The launch request reached the fork server but no answer came back.

    The server may have forked the run's worker already, so the launch is neither sent to a new
    server nor to the code server (one run must not run twice).
    """

    def __init__(self, socket_path: str, reason: object) -> None:
        super().__init__(
            f"warm run launcher: the launch was sent to the fork server on {socket_path} but "
            f"no answer came back ({reason}); the run's worker may have started"
        )
        self.socket_path = socket_path


# Errors of `connect` alone: nothing listens on the socket, so the request never reached a
# server and may be sent again (to a server started anew).
_NOT_LISTENING = (FileNotFoundError, ConnectionRefusedError)


def default_socket_path(dagster_home: str | os.PathLike[str]) -> str:
    """The fork server's default socket: `<DAGSTER_HOME>/warm-launcher.sock`.

    A short path in the temporary folder instead when that one is too long for a unix socket.
    """
    path = os.path.join(os.fspath(dagster_home), SOCKET_NAME)
    if len(path) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"mlops-warm-{digest}.sock")


def process_start_ticks(pid: int) -> int | None:
    """A live (non-zombie) process's start time since boot in clock ticks; None when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Fields after the command: state (3), ppid (4), ... starttime (22).
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def request(socket_path: str, payload: Mapping[str, Any], timeout: float = _REQUEST_TIMEOUT_S):
    """Send one JSON request to the fork server and return its JSON answer.

    Raises:
        OSError: The socket cannot be reached or the server did not answer.
        RuntimeError: The server answered with an error.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(socket_path)
        connection.sendall(json.dumps(dict(payload)).encode() + b"\n")
        answer = json.loads(_read_line(connection) or b"null")
    if not isinstance(answer, dict):
        raise OSError(f"no answer from the fork server on {socket_path}")
    if answer.get("error"):
        raise RuntimeError(f"fork server on {socket_path}: {answer['error']}")
    return answer


def _read_line(connection: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.strip()


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in a process forked from a warm fork server (see the module's text).

    Config (all optional):
        socket_path: The fork server's unix socket (default `<DAGSTER_HOME>/warm-launcher.sock`).
        start_timeout_seconds: How long a launch waits for a fork server it started (120).
        fallback_to_code_server: Launch through the code server when the fork server cannot be
            reached (True), or fail the launch (False).
    """

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        socket_path: str | None = None,
        start_timeout_seconds: float = 120.0,
        fallback_to_code_server: bool = True,
    ) -> None:
        self._inst_data = inst_data
        self._socket_path = socket_path
        self._start_timeout = float(start_timeout_seconds)
        self._fallback = fallback_to_code_server
        self._lock = threading.Lock()
        self._server: subprocess.Popen | None = None
        self._code_server = DefaultRunLauncher()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        """The instance file's entry this launcher was built from."""
        return self._inst_data

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        """The `run_launcher: config:` schema."""
        return {
            "socket_path": Field(StringSource, is_required=False),
            "start_timeout_seconds": Field(float, is_required=False, default_value=120.0),
            "fallback_to_code_server": Field(BoolSource, is_required=False, default_value=True),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> WarmRunLauncher:
        """The launcher of an instance file's config."""
        return cls(inst_data=inst_data, **config_value)

    def register_instance(self, instance) -> None:
        """Attach the instance (also to the code-server launcher of the fallback)."""
        super().register_instance(instance)
        self._code_server.register_instance(instance)

    @property
    def socket_path(self) -> str:
        """The fork server's socket."""
        if self._socket_path:
            return self._socket_path
        return default_socket_path(self._instance.root_directory)

    # Launching.

    def launch_run(self, context: LaunchRunContext) -> None:
        """Fork the run's worker from the fork server (started on first use) and tag the run.

        Raises:
            DagsterLaunchFailedError: The fork server cannot be reached and there is no
                fallback; the message names the socket.
        """
        run = context.dagster_run
        payload = {
            "op": "launch",
            "run_id": run.run_id,
            "instance_ref": serialize_value(self._instance.get_ref()),
        }
        try:
            answer = self._request(payload, start=True)
        except LaunchOutcomeUnknown as error:
            raise DagsterLaunchFailedError(str(error)) from error
        except ForkServerUnavailable as error:
            if not self._fallback or context.workspace is None:
                raise DagsterLaunchFailedError(str(error)) from error
            self._instance.report_engine_event(
                f"{error}; launching the run through the code server instead.",
                run,
                cls=self.__class__,
            )
            self._code_server.launch_run(context)
            return
        pid, start = int(answer["pid"]), answer.get("start")
        self._instance.add_run_tags(run.run_id, {WORKER_TAG: f"{pid}:{start}"})

    def _request(self, payload: Mapping[str, Any], start: bool) -> dict:
        """Send a request; start the server and send it again only when none listened.

        Raises:
            ForkServerUnavailable: No server listens (and none could be started), or the
                server answered with an error: the request was not carried out.
            LaunchOutcomeUnknown: The request reached a server but its answer did not come
                back (a timeout, a reset connection): the server may have carried it out.
        """
        path = self.socket_path
        try:
            return self._send(path, payload)
        except _NOT_LISTENING as error:
            if not start:
                raise ForkServerUnavailable(path, error) from error
        self._ensure_server(path)
        try:
            return self._send(path, payload)
        except _NOT_LISTENING as error:
            raise ForkServerUnavailable(path, error) from error

    @staticmethod
    def _send(path: str, payload: Mapping[str, Any]) -> dict:
        """One request, sent once more to the same server after an error past `connect`.

        The server answers a launch of a run it forked already with that run's worker, so the
        second launch forks nothing.
        """
        try:
            return request(path, payload)
        except _NOT_LISTENING:
            raise
        except RuntimeError as error:
            raise ForkServerUnavailable(path, error) from error
        except (OSError, ValueError) as first:
            try:
                return request(path, payload)
            except Exception as error:
                raise LaunchOutcomeUnknown(path, f"{first}; again: {error}") from error

    def _ensure_server(self, path: str) -> None:
        """Start the fork server (unless one answers) and wait until it answers a ping."""
        with self._lock:
            with contextlib.suppress(OSError, RuntimeError):
                request(path, {"op": "ping"}, timeout=5.0)
                return
            if self._server is None or self._server.poll() is not None:
                # In this process's group: stopping the daemon's group stops the server.
                self._server = subprocess.Popen(
                    [sys.executable, "-m", __name__, "serve", "--socket", path],
                    stdin=subprocess.DEVNULL,
                    close_fds=True,
                )
            deadline = time.monotonic() + self._start_timeout
            while time.monotonic() < deadline:
                try:
                    request(path, {"op": "ping"}, timeout=5.0)
                    return
                except (OSError, RuntimeError):
                    pass
                code = self._server.poll()
                if code:
                    raise ForkServerUnavailable(path, f"the server exited with code {code}")
                time.sleep(0.1)
            raise ForkServerUnavailable(path, f"no answer within {self._start_timeout:.0f} s")

    # The run worker of a run, from its tag.

    @staticmethod
    def _worker(run: DagsterRun) -> tuple[int, int | None] | None:
        tag = run.tags.get(WORKER_TAG)
        if not tag:
            return None
        pid, _, start = tag.partition(":")
        try:
            return int(pid), (int(start) if start.isdigit() else None)
        except ValueError:
            return None

    @staticmethod
    def _alive(worker: tuple[int, int | None]) -> bool:
        pid, start = worker
        ticks = process_start_ticks(pid)
        return ticks is not None and (start is None or ticks == start)

    def terminate(self, run_id: str) -> bool:
        """Report the run canceling and send its worker SIGTERM (Dagster's interrupt).

        A run whose worker is gone is marked canceled at once.

        Returns:
            Whether the run is being (or was) canceled by this call.
        """
        if not self.has_instance:
            return False
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        worker = self._worker(run)
        if worker is None and GRPC_INFO_TAG in run.tags:
            # Launched through the code server (the fallback).
            return self._code_server.terminate(run_id)
        self._instance.report_run_canceling(run)
        if worker is None:
            self._instance.report_engine_event(
                message="Unable to find the run worker process to send termination to.",
                dagster_run=run,
                cls=self.__class__,
            )
            return False
        pid = worker[0]
        if not self._alive(worker):
            self._instance.report_run_canceled(
                run, f"Run worker process {pid} is gone; the run is marked canceled."
            )
            return True
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            self._instance.report_run_canceled(
                run, f"Run worker process {pid} is gone; the run is marked canceled."
            )
            return True
        self._instance.report_engine_event(
            message=f"Sent SIGTERM to the run worker process (pid: {pid}).",
            dagster_run=run,
            cls=self.__class__,
        )
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        """Yes: run monitoring asks `check_run_worker_health` about started runs."""
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """RUNNING while the run's forked worker lives, FAILED once it is gone."""
        worker = self._worker(run)
        if worker is None:
            # Launched through the code server (which watches its own run processes), or not
            # tagged yet.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no forked run worker recorded")
        if self._alive(worker):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(worker[0]))
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"run worker process {worker[0]} (forked by the warm run launcher) is gone",
            run_worker_id=str(worker[0]),
        )

    def get_run_worker_debug_info(
        self, run: DagsterRun, include_container_logs: bool | None = True
    ) -> str | None:
        """The worker's pid and whether it lives (in run monitoring's failure messages)."""
        worker = self._worker(run)
        if worker is None:
            return None
        state = "running" if self._alive(worker) else "gone"
        return f"Run worker process {worker[0]} (forked from {self.socket_path}): {state}."

    def dispose(self) -> None:
        """Forget the server process; it lives on until its parent (the daemon) exits."""
        self._server = None


# The fork server.

# The server's lock file (one server per socket), closed in its children.
_LOCK: Any = None


def warm_up() -> None:
    """Import what a run imports and resolve the project's jobs (no threads of our own)."""
    import dagster._cli.api  # noqa: F401  (the run body)
    import dagster._core.execution.api  # noqa: F401
    import dagster_postgres  # noqa: F401  (the stack's storage)
    import deltalake  # noqa: F401
    import polars  # noqa: F401

    from mlops_assets.defs import catalog, runner

    # No polars work and no instance in this process: the schemas come from a fresh process,
    # and each forked run checks the instance's environment stamp itself.
    catalog.preload_table_schemas()
    runner.check_instance_per_run()
    import mlops_assets.definitions as definitions

    repository = definitions.defs.get_repository_def()
    repository.get_all_jobs()


def serve(socket_path: str) -> int:
    """Run the fork server on `socket_path` until SIGTERM or until its parent is gone."""
    global _LOCK
    lock = _LOCK = open(socket_path + ".lock", "w")  # noqa: SIM115  (held while serving)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"warm launcher: a fork server already serves {socket_path}", file=sys.stderr)
        return 0
    parent = os.getppid()
    began = time.monotonic()
    warm_up()
    # Objects of the imports stay out of the collector's sight: children share their pages.
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    os.chmod(socket_path, 0o600)
    inode = os.stat(socket_path).st_ino
    listener.listen(32)
    listener.settimeout(1.0)
    children: dict[int, str] = {}
    print(
        f"warm launcher: fork server {os.getpid()} on {socket_path}, "
        f"ready in {time.monotonic() - began:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    try:
        while os.getppid() == parent:
            _reap(children)
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                _handle(connection, listener, children)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if os.stat(socket_path).st_ino == inode:
                os.unlink(socket_path)
        lock.close()
    return 0


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _reap(children: dict[int, str]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        run_id = children.pop(pid, "?")
        code = os.waitstatus_to_exitcode(status)
        print(
            f"warm launcher: run {run_id} worker {pid} exited with code {code}",
            file=sys.stderr,
            flush=True,
        )


def _handle(connection: socket.socket, listener: socket.socket, children: dict[int, str]) -> None:
    connection.settimeout(10.0)
    try:
        message = json.loads(_read_line(connection))
        if message.get("op") == "ping":
            answer: dict[str, Any] = {"pid": os.getpid(), "children": len(children)}
        elif message.get("op") == "launch":
            run_id = str(message["run_id"])
            # A run forked already and still running (the launcher sent the launch again after
            # losing the answer) is answered with its worker: a run is forked once.
            _reap(children)
            pid = next((child for child, forked in children.items() if forked == run_id), 0)
            if not pid:
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    connection.close()
                    _run_child(run_id, message.get("instance_ref"))
                children[pid] = run_id
            answer = {"pid": pid, "start": process_start_ticks(pid)}
        else:
            answer = {"error": f"unknown request {message!r}"[:200]}
    except Exception as error:  # a bad request is answered, the server goes on
        answer = {"error": f"{type(error).__name__}: {error}"}
    with contextlib.suppress(OSError):
        connection.sendall(json.dumps(answer).encode() + b"\n")


def _run_child(run_id: str, instance_ref: str | None) -> None:
    """In the forked child: run the run as `dagster api execute_run` does, then exit."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if _LOCK is not None:
            _LOCK.close()  # the server's lock stays the server's
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)

        from dagster import DagsterInstance
        from dagster._cli.api import _execute_run_command_body
        from dagster._serdes import deserialize_value
        from dagster._utils.interrupts import capture_interrupts

        # SIGTERM and SIGINT become Dagster's interrupt (the run ends canceled).
        with capture_interrupts():
            # New connections: the server never opened an instance.
            if instance_ref:
                instance = DagsterInstance.from_ref(deserialize_value(instance_ref))
            else:
                instance = DagsterInstance.get()
            try:
                from mlops_assets.defs.runner import claim_instance
                from mlops_assets.settings import load_settings

                # The run's environment must be the instance's (the server never opened it).
                claim_instance(instance, load_settings().env)
                code = _execute_run_command_body(
                    run_id, instance, lambda _event: None, set_exit_code_on_failure=True
                )
            except BaseException:
                traceback.print_exc()
                _report_failure(instance, run_id)
                code = 1
            finally:
                with contextlib.suppress(Exception):
                    instance.dispose()
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _report_failure(instance: Any, run_id: str) -> None:
    """Mark the run failed when the child failed before the run could report it itself."""
    with contextlib.suppress(Exception):
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            instance.report_run_failed(
                run, f"run worker {os.getpid()} failed: {traceback.format_exc()[-2000:]}"
            )


def main(argv: list[str] | None = None) -> int:
    """`python -m mlops_assets.stack.warm_launcher serve --socket PATH`."""
    parser = argparse.ArgumentParser(prog="python -m mlops_assets.stack.warm_launcher")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the fork server")
    serve_parser.add_argument("--socket", required=True, help="the unix socket to listen on")
    arguments = parser.parse_args(argv)
    return serve(arguments.socket)


if __name__ == "__main__":
    sys.exit(main())
