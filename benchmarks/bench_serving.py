"""Online serving: `mlops serve` against `mlflow models serve` for the same registered model.

Builds a small lake, online store and registered champion in a temporary folder, then runs
each server in turn on 127.0.0.1 and times single-row requests from one client over one
keep-alive connection (a fresh process): requests per second, p50 and p99 latency. Our
server looks the card and merchant up in the online store, derives the request-time features
and logs every request to the Delta inference log; MLflow's gets the finished model input
(`dataframe_split`), as it cannot look features up. Both answer the same requests; their
scores are compared. Goal: 10x MLflow's throughput and a p99 under 5 ms.

Our server runs twice in the same run, with the same requests: on the embedded SQLite online
store, then on the Redis store (a local redis-server started for the run, the tables published
to it by the `online_publish` job, `MLOPS_ONLINE_STORE` pointing the server at it), so the
throughput ratio between the two stores comes from one run on one machine. The Redis run is
skipped when redis-server is not installed.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import ROOT, entry_point, measure, report

REQUESTS = int(os.environ.get("BENCH_SERVING_REQUESTS", "5000"))
MLFLOW_REQUESTS = int(os.environ.get("BENCH_SERVING_MLFLOW_REQUESTS", "1000"))
WARMUP = 200


def _variables(root: str) -> dict[str, str]:
    variables = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    variables.update(MLOPS_DATA_ROOT=str(Path(root) / "data"), MLOPS_ENV="dev")
    # `mlflow models serve` starts `uvicorn` by name: the environment's scripts come first.
    variables["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{variables.get('PATH', '')}"
    return variables


def task_build(root: str, redis_url: str = "") -> dict:
    """Build the environment; write each request as both servers take it.

    With `redis_url`, the online tables are also published to that Redis server.
    """
    import polars as pl

    from mlops_assets.features.online_store import OnlineStore
    from mlops_assets.features.spec import FRAUD_SPEC
    from mlops_assets.models.training import model_inputs
    from mlops_assets_tests.serving_env import build_serving_env

    started = time.perf_counter()
    env = build_serving_env(Path(root) / "data", models=1, days=6, per_day=1_500)
    built = time.perf_counter() - started
    requests = env.requests(max(REQUESTS, MLFLOW_REQUESTS) + WARMUP, seed=21)
    store = OnlineStore(env.settings.online_store_path)
    try:
        frames = [
            FRAUD_SPEC.fetch(
                store, {**r, "event_time": datetime.datetime.fromisoformat(r["event_time"])}
            )
            for r in requests
        ]
    finally:
        store.close()
    inputs = model_inputs(pl.concat(frames, how="diagonal_relaxed"), FRAUD_SPEC)
    columns = list(inputs.columns)
    with open(Path(root) / "ours.jsonl", "w") as ours, open(Path(root) / "mlflow.jsonl", "w") as ml:
        for request, values in zip(requests, inputs.itertuples(index=False), strict=True):
            ours.write(json.dumps(request) + "\n")
            body = {"dataframe_split": {"columns": columns, "data": [list(values)]}}
            ml.write(json.dumps(body) + "\n")
    if redis_url:
        _publish_to_redis(env.settings, redis_url)
    return {"seconds": built, "requests": len(requests)}


def _publish_to_redis(settings, url: str) -> None:
    """Run `online_publish` with the online store on Redis, as the code server would."""
    import dataclasses

    import dagster as dg

    from mlops_assets.definitions import build_definitions

    os.environ["MLOPS_ONLINE_STORE"] = url
    defs = build_definitions(dataclasses.replace(settings, online_store_url=url))
    with dg.DagsterInstance.ephemeral() as instance:
        published = defs.resolve_job_def("online_publish").execute_in_process(
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        )
    if not published.success:
        raise RuntimeError("online publish to Redis failed")


def task_client(port: str, path: str, bodies: str, count: str) -> dict:
    """Send `count` requests one by one over one keep-alive connection; time each."""
    lines = Path(bodies).read_text().splitlines()
    total = int(count)
    connection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
    headers = {"Content-Type": "application/json"}
    scores = []

    def call(body: str) -> dict:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}: {payload[:300]!r}")
        return json.loads(payload)

    for body in lines[:WARMUP]:
        call(body)
    nanos = []
    clock = time.perf_counter_ns
    started = time.perf_counter()
    for body in lines[WARMUP : WARMUP + total]:
        begin = clock()
        answer = call(body)
        nanos.append(clock() - begin)
        scores.append(answer["score"] if "score" in answer else answer["predictions"][0][1])
    seconds = time.perf_counter() - started
    nanos.sort()

    def at(q: float) -> float:
        return round(nanos[min(len(nanos) - 1, int(q * len(nanos)))] / 1e6, 3)

    return {
        "seconds": seconds,
        "requests": len(nanos),
        "rps": round(len(nanos) / seconds),
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": round(nanos[-1] / 1e6, 3),
        "scores": scores[:500],
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(port: int, path: str, process: subprocess.Popen, log: Path, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} not ready: {log.read_text()[-3000:]}")


def _run_server(
    command: list[str], root: str, probe: str, log_name: str, extra: dict | None = None
):
    port = _free_port()
    log = Path(root) / log_name
    with open(log, "w") as output:
        process = subprocess.Popen(
            [*command, str(port)],
            cwd=ROOT,
            env={**_variables(root), **(extra or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait(port, probe, process, log)
    except BaseException:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        raise
    return process, port


def _stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def _measure_ours(root: str, log_name: str, extra: dict | None = None):
    """Serve with `mlops serve` (environment `extra` added), time the client, stop it."""
    process, port = _run_server(
        [sys.executable, "-m", "mlops_assets.cli", "serve", "--port"],
        root,
        "/readyz",
        log_name,
        extra,
    )
    try:
        measured = measure(
            "benchmarks.bench_serving",
            "client",
            str(port),
            "/v1/score",
            str(Path(root) / "ours.jsonl"),
            str(REQUESTS),
        )
    finally:
        stopped = _stop(process)
    return measured, stopped


def main() -> None:
    """Build, serve with each server in turn, measure, compare; print and save the figures."""
    import polars as pl

    from benchmarks.redis_server import redis_server

    binaries = Path(sys.executable).parent
    with (
        tempfile.TemporaryDirectory(prefix="bench-serving-") as root,
        redis_server(root) as redis_url,
    ):
        built = measure("benchmarks.bench_serving", "build", root, redis_url or "")
        ours, stopped = _measure_ours(root, "ours.log", {"MLOPS_ONLINE_STORE": ""})
        print(f"[bench_serving] ours: {ours.extra}"[:400], file=sys.stderr)
        table = pl.read_delta(
            str(Path(root) / "data" / "dev" / "lake" / "serving" / "inference_log")
        )
        logged_ok = table.filter(pl.col("status") == "ok").height
        on_redis = None
        if redis_url:
            on_redis, _ = _measure_ours(root, "ours_redis.log", {"MLOPS_ONLINE_STORE": redis_url})
            print(f"[bench_serving] ours on redis: {on_redis.extra}"[:400], file=sys.stderr)
        uri = f"sqlite:///{Path(root) / 'data' / 'dev' / 'mlflow.db'}"
        process, port = _run_server(
            [
                str(binaries / "mlflow"),
                "models",
                "serve",
                "-m",
                "models:/dev.fraud_detector@champion",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
            ],
            root,
            "/ping",
            "mlflow.log",
            {"MLFLOW_TRACKING_URI": uri},
        )
        try:
            mlflow = measure(
                "benchmarks.bench_serving",
                "client",
                str(port),
                "/invocations",
                str(Path(root) / "mlflow.jsonl"),
                str(MLFLOW_REQUESTS),
            )
        finally:
            _stop(process)
    ours_scores, mlflow_scores = ours.extra.pop("scores"), mlflow.extra.pop("scores")
    same = min(len(ours_scores), len(mlflow_scores))
    redis: dict | str = "skipped: redis-server is not installed"
    if on_redis is not None:
        redis_scores = on_redis.extra.pop("scores")
        redis = {
            "ours_on_redis": dict(on_redis.extra),
            "throughput_vs_sqlite": round(on_redis.extra["rps"] / ours.extra["rps"], 2),
            "p99_vs_sqlite": round(on_redis.extra["p99_ms"] / ours.extra["p99_ms"], 2),
            "scores_equal_to_sqlite": redis_scores == ours_scores,
        }
    figures = {
        "build_s": round(built.seconds, 1),
        "ours": {k: v for k, v in ours.extra.items()},
        "mlflow_models_serve": {k: v for k, v in mlflow.extra.items()},
        "throughput_ratio": round(ours.extra["rps"] / mlflow.extra["rps"], 1),
        "scores_equal": ours_scores[:same] == mlflow_scores[:same],
        "scores_compared": same,
        "inference_log_ok_rows": logged_ok,
        "answered_ok": REQUESTS + WARMUP,
        "our_server_exit_code": stopped,
        "goal": "throughput >= 10x mlflow models serve, p99 < 5 ms; one client, keep-alive",
        "goal_met": ours.extra["rps"] >= 10 * mlflow.extra["rps"] and ours.extra["p99_ms"] < 5,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "online_store_redis": redis,
    }
    report("serving", figures)


if __name__ == "__main__":
    entry_point(main, {"build": task_build, "client": task_client})
