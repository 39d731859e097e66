"""`mlops serve` as a process: SIGTERM in the middle of a load loses no logged answer."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from mlops_assets_tests.serving_env import build_serving_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_sigterm_mid_load_keeps_exactly_the_answered_requests_in_the_log(tmp_path):
    env = build_serving_env(tmp_path / "data", models=1)
    port = free_port()
    variables = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    variables.update(MLOPS_DATA_ROOT=str(tmp_path / "data"), MLOPS_ENV="dev")
    with open(tmp_path / "serve.log", "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_assets.cli", "serve", "--port", str(port)],
            env=variables,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                try:
                    if get(port, "/readyz") == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the server did not get ready"
                time.sleep(0.2)

            requests = env.requests(300, seed=11)
            stop = threading.Event()
            answered: list[list[str]] = [[] for _ in range(4)]
            other: list[list] = [[] for _ in range(4)]

            def load(ok: list[str], failed: list) -> None:
                connection = None
                i = 0
                while not stop.is_set():
                    try:
                        if connection is None:
                            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                        connection.request(
                            "POST",
                            "/v1/score",
                            json.dumps(requests[i % len(requests)]),
                            {"Content-Type": "application/json"},
                        )
                        response = connection.getresponse()
                        body = json.loads(response.read())
                        i += 1
                        if response.status == 200:
                            ok.append(body["request_id"])
                        else:
                            failed.append(response.status)
                        if response.getheader("Connection", "").lower() == "close":
                            connection.close()
                            connection = None
                    except (OSError, http.client.HTTPException) as error:
                        failed.append(type(error).__name__)
                        connection = None
                        time.sleep(0.01)

            threads = [
                threading.Thread(target=load, args=(ok, failed))
                for ok, failed in zip(answered, other, strict=True)
            ]
            for thread in threads:
                thread.start()
            while sum(len(ok) for ok in answered) < 1500:
                assert process.poll() is None
                time.sleep(0.05)
            # The log's commits are made by a writer process of the server's own.
            health = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            health.request("GET", "/healthz")
            log_state = json.loads(health.getresponse().read())["inference_log"]
            health.close()
            writer = log_state["writer_pid"]
            assert log_state["writer"] == "process" and writer not in (None, process.pid)
            assert log_state["failures"] == 0
            os.kill(writer, 0)  # alive
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()[-3000:]
            # It made the last commit and ended with the server.
            deadline = time.monotonic() + 30
            while Path(f"/proc/{writer}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not Path(f"/proc/{writer}").exists()
            time.sleep(0.3)
            stop.set()
            for thread in threads:
                thread.join()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    ok_ids = [request_id for ok in answered for request_id in ok]
    assert len(ok_ids) >= 1500
    # Requests after the stop were refused (connection closed or refused), never answered.
    assert any(other), "the load should have outlived the server"
    table = pl.read_delta(str(tmp_path / "data" / "dev" / "lake" / "serving" / "inference_log"))
    logged_ok = table.filter(pl.col("status") == "ok")["request_id"].to_list()
    assert len(logged_ok) == len(ok_ids)
    assert set(logged_ok) == set(ok_ids)
    log_text = (tmp_path / "serve.log").read_text()
    assert "0 pending" in log_text
