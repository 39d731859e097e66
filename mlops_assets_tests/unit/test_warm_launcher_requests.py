import json
import socket
import subprocess

import pytest

from mlops_assets.stack import warm_launcher
from mlops_assets.stack.warm_launcher import (
    ForkServerUnavailable,
    LaunchOutcomeUnknown,
    WarmRunLauncher,
)

PAYLOAD = {"op": "launch", "run_id": "run-1"}


def launcher_with(monkeypatch, outcomes):
    """A launcher whose requests give `outcomes` in turn (an exception is raised)."""
    sent, started = [], []

    def fake_request(path, payload, timeout=None):
        sent.append(payload)
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(warm_launcher, "request", fake_request)
    launcher = WarmRunLauncher(socket_path="/nonexistent/warm.sock")
    monkeypatch.setattr(launcher, "_ensure_server", lambda path: started.append(path))
    return launcher, sent, started


def test_a_launch_is_resent_to_a_new_server_only_when_none_listened(monkeypatch):
    for refused in (FileNotFoundError(2, "no socket"), ConnectionRefusedError(111, "refused")):
        launcher, sent, started = launcher_with(monkeypatch, [refused, {"pid": 7}])
        assert launcher._request(PAYLOAD, start=True) == {"pid": 7}
        assert len(sent) == 2 and started == ["/nonexistent/warm.sock"]


def test_a_lost_answer_is_asked_again_of_the_same_server_never_of_a_new_one(monkeypatch):
    launcher, sent, started = launcher_with(monkeypatch, [TimeoutError("timed out"), {"pid": 7}])
    assert launcher._request(PAYLOAD, start=True) == {"pid": 7}
    assert len(sent) == 2 and not started

    launcher, sent, started = launcher_with(
        monkeypatch, [TimeoutError("timed out"), ConnectionRefusedError(111, "refused")]
    )
    with pytest.raises(LaunchOutcomeUnknown):
        launcher._request(PAYLOAD, start=True)
    assert len(sent) == 2 and not started


def test_an_error_answer_is_not_sent_again(monkeypatch):
    launcher, sent, started = launcher_with(monkeypatch, [RuntimeError("bad request")])
    with pytest.raises(ForkServerUnavailable):
        launcher._request(PAYLOAD, start=True)
    assert len(sent) == 1 and not started


def test_the_fork_server_answers_a_run_it_forked_already_with_its_worker(monkeypatch):
    def no_fork():
        raise AssertionError("forked again")

    monkeypatch.setattr(warm_launcher.os, "fork", no_fork)
    worker = subprocess.Popen(["sleep", "30"])
    try:
        children = {worker.pid: "run-1"}
        ours, theirs = socket.socketpair()
        with ours, theirs:
            ours.sendall(json.dumps(PAYLOAD).encode() + b"\n")
            warm_launcher._handle(theirs, theirs, children)
            answer = json.loads(warm_launcher._read_line(ours))
        assert answer == {"pid": worker.pid, "start": warm_launcher.process_start_ticks(worker.pid)}
        assert children == {worker.pid: "run-1"}
    finally:
        worker.kill()
        worker.wait()
