import os
import subprocess
import time
from pathlib import Path

import pytest

from mlops_assets.stack.process import STACK_MARKER, ServerProcess, process_alive


@pytest.fixture
def started():
    """Start `sleep 30` in its own group (as a server is) with extra variables; kill at the end."""
    processes = []

    def start(env):
        process = subprocess.Popen(
            ["sleep", "30"], env={**os.environ, **env}, start_new_session=True
        )
        processes.append(process)
        # Until the child has exec'd `sleep`, /proc shows the environment it forked with
        # (this process's, without the variables): wait for the exec, as a server started
        # long before would have done it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
            if cmdline.split(b"\0")[0] == b"sleep":
                break
            time.sleep(0.005)
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()


def server(tmp_path, marked=True):
    env = {STACK_MARKER: str(tmp_path)} if marked else {}
    return ServerProcess("sleeper", ["sleep", "30"], tmp_path / "state", env=env)


def test_a_process_with_the_stack_marker_is_the_running_server(tmp_path, started):
    sleeper = server(tmp_path)
    process = started({STACK_MARKER: str(tmp_path)})
    sleeper.state_dir.mkdir()
    sleeper.pid_file.write_text(str(process.pid))
    assert sleeper.pid() == process.pid
    assert sleeper.stop(timeout=5) is True
    assert process.wait(timeout=5) is not None
    assert not sleeper.pid_file.exists()


def test_a_stale_pid_file_naming_another_process_is_removed_and_nothing_is_signalled(
    tmp_path, started
):
    sleeper = server(tmp_path)
    sleeper.state_dir.mkdir()
    for env in ({}, {STACK_MARKER: str(tmp_path / "another-stack")}):
        process = started(env)
        sleeper.pid_file.write_text(str(process.pid))
        assert sleeper.pid() is None
        assert not sleeper.pid_file.exists()

        sleeper.pid_file.write_text(str(process.pid))
        assert sleeper.stop(timeout=5) is False
        assert not sleeper.pid_file.exists()
        assert process.poll() is None and process_alive(process.pid)


def test_without_a_marker_in_its_env_a_server_takes_any_live_pid(tmp_path, started):
    sleeper = server(tmp_path, marked=False)
    process = started({})
    sleeper.state_dir.mkdir()
    sleeper.pid_file.write_text(str(process.pid))
    assert sleeper.pid() == process.pid


def test_a_pid_file_records_the_start_time_and_a_reused_pid_is_not_taken(tmp_path):
    import subprocess

    from mlops_assets.stack.process import ServerProcess, start_time

    server = ServerProcess("sleeper", ["sleep", "30"], tmp_path, env={STACK_MARKER: "elsewhere"})
    pid = server.start(timeout=10)
    try:
        assert server.pid_file.read_text().split() == [str(pid), start_time(pid)]
        assert server.pid() == pid
        # The same pid recorded with another start time: another process now.
        server.pid_file.write_text(f"{pid} 1")
        assert server.pid() is None
        assert not server.pid_file.exists()
    finally:
        subprocess.run(["kill", "-9", str(pid)], check=False)
