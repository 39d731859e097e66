"""Online serving: `mlops serve` against `mlflow models serve` for the same registered model.

Builds a small lake, online store and registered champion in a temporary folder, then runs
each server in turn on 127.0.0.1 and times single-row requests over keep-alive connections
(clients in fresh processes): one client sending requests one by one, and 8 concurrent
clients (one process driving 8 connections, each sending its next request once answered):
requests per second, p50 and p99 latency, and the server's CPU milliseconds per request (its
own `/proc` counters: a figure the other work on the machine disturbs less than latency).
Our server looks the card and merchant up in the online store, derives the request-time
features and logs every request to the Delta inference log, with the champion alias polled;
MLflow's gets the finished model input (`dataframe_split`), as it cannot look features up.
Both answer the same requests; their scores are compared. Goals: 30x MLflow's throughput and
a p99 under 5 ms with 8 clients.

Our server runs with each concurrency model (`--http threads`, a thread per connection;
`--http loop`, one event loop), then the chosen one with the inference log's flushes made by a
thread of the server (`--log-writer thread`) instead of its writer process (the default), and
again with flushes and alias polls off during the measurement (the p99 with and without them).
The server's CPU figure counts its writer process too (the process group). It also runs on the Redis
online store (a local redis-server started for the run, the tables published to it by the
`online_publish` job); skipped when redis-server is not installed.

Cold start: `mlops serve` spawned, timed to its first 200 answer to a scoring request, first
with no compiled cache (the version loads through MLflow and writes the cache), then again
with it (loaded without importing MLflow); the server's `/readyz` gives the split (`serve_s`:
interpreter and imports, `listening_s`: service built, `model_load_s`, `load_path`). Goal: at
most 3 s.
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
CLIENTS = 8
# The concurrency models of `mlops serve --http` measured against each other.
HTTP_MODELS = ("threads", "loop")


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


def task_load(port: str, path: str, bodies: str, count: str, clients: str) -> dict:
    """`clients` keep-alive connections, each sending its next request once answered.

    One process drives every connection with non-blocking sockets (`selectors`), the requests
    already encoded, so that the client costs little of the machine the server runs on. Each
    request is timed from its first byte sent to its answer's last byte read.
    """
    import selectors

    lines = Path(bodies).read_text().splitlines()
    total, width = int(count), int(clients)

    def encoded(body: str) -> bytes:
        data = body.encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        return head.encode() + data

    warm = [encoded(b) for b in lines[:WARMUP]]
    timed = [encoded(b) for b in lines[WARMUP : WARMUP + total]]
    selector = selectors.DefaultSelector()
    nanos: list[int] = []
    scores: dict[int, float] = {}
    clock = time.perf_counter_ns

    class Connection:
        def __init__(self) -> None:
            self.sock = socket.create_connection(("127.0.0.1", int(port)))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setblocking(False)
            self.buffer = b""
            self.index = -1
            self.begin = 0

    def send(conn: Connection, queue: list) -> bool:
        if not queue:
            return False
        conn.index, request = queue.pop()
        conn.buffer = b""
        conn.begin = clock()
        conn.sock.sendall(request)
        return True

    def answer(conn: Connection) -> bytes | None:
        head_end = conn.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = conn.buffer[:head_end].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(conn.buffer) < head_end + 4 + length:
            return None
        body = conn.buffer[head_end + 4 : head_end + 4 + length]
        if status != 200:
            raise RuntimeError(f"{path} answered {status}: {body[:300]!r}")
        return body

    def run(requests: list[bytes], timing: bool) -> float:
        queue = list(reversed(list(enumerate(requests))))
        connections = [Connection() for _ in range(width)]
        started = time.perf_counter()
        busy = 0
        for conn in connections:
            selector.register(conn.sock, selectors.EVENT_READ, conn)
            busy += send(conn, queue)
        while busy:
            for key, _ in selector.select(timeout=60):
                conn = key.data
                chunk = conn.sock.recv(65536)
                if not chunk:
                    raise RuntimeError(f"{path}: the server closed a keep-alive connection")
                conn.buffer += chunk
                body = answer(conn)
                if body is None:
                    continue
                if timing:
                    nanos.append(clock() - conn.begin)
                    if conn.index < 500:
                        payload = json.loads(body)
                        scores[conn.index] = (
                            payload["score"] if "score" in payload else payload["predictions"][0][1]
                        )
                if not send(conn, queue):
                    busy -= 1
        seconds = time.perf_counter() - started
        for conn in connections:
            selector.unregister(conn.sock)
            conn.sock.close()
        return seconds

    run(warm, False)
    seconds = run(timed, True)
    nanos.sort()

    def at(q: float) -> float:
        return round(nanos[min(len(nanos) - 1, int(q * len(nanos)))] / 1e6, 3)

    return {
        "seconds": seconds,
        "clients": width,
        "requests": len(nanos),
        "rps": round(len(nanos) / seconds),
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": round(nanos[-1] / 1e6, 3),
        "scores": [scores[i] for i in sorted(scores)],
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


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds so far of the process group `pid` leads (Linux `/proc`).

    The group: `mlflow models serve` answers from worker processes it starts.
    """
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[2]) == pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _load(port: int, path: str, bodies: Path, count: int, clients: int, pid: int) -> dict:
    """One measured run against a server: 1 client (`client`) or several (`load`)."""
    before = _cpu_seconds(pid)
    if clients == 1:
        measured = measure(
            "benchmarks.bench_serving", "client", str(port), path, str(bodies), str(count)
        )
    else:
        measured = measure(
            "benchmarks.bench_serving",
            "load",
            str(port),
            path,
            str(bodies),
            str(count),
            str(clients),
        )
    used = _cpu_seconds(pid) - before
    figures = dict(measured.extra)
    # Warm-up requests included: the server's CPU over every request of the run.
    figures["server_cpu_ms_per_request"] = round(used * 1000 / (count + WARMUP), 3)
    return figures


def _measure_ours(
    root: str, log_name: str, extra: dict | None = None, options: tuple[str, ...] = ()
) -> tuple[dict, dict, int]:
    """Serve with `mlops serve` (environment `extra`, `options`), run 1 then 8 clients."""
    process, port = _run_server(
        [sys.executable, "-m", "mlops_assets.cli", "serve", *options, "--port"],
        root,
        "/readyz",
        log_name,
        extra,
    )
    bodies = Path(root) / "ours.jsonl"
    try:
        one = _load(port, "/v1/score", bodies, REQUESTS, 1, process.pid)
        eight = _load(port, "/v1/score", bodies, REQUESTS, CLIENTS, process.pid)
    finally:
        stopped = _stop(process)
    return one, eight, stopped


def task_coldstart(root: str, port: str) -> dict:
    """Spawn `mlops serve`; time it to its first 200 answer to a scoring request."""
    body = (Path(root) / "ours.jsonl").read_text().splitlines()[0]
    log = Path(root) / f"coldstart-{port}.log"
    started = time.perf_counter()
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_assets.cli", "serve", "--port", port],
            cwd=ROOT,
            env={**_variables(root), "MLOPS_ONLINE_STORE": ""},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
            if time.perf_counter() - started > 300:
                raise RuntimeError(f"no answer in 300 s: {log.read_text()[-3000:]}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
                connection.request("POST", "/v1/score", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    break
                connection.close()
            except OSError:
                pass
            time.sleep(0.005)
        seconds = time.perf_counter() - started
        # The server's own CPU time to its first answer: what the start costs, whatever the
        # other work on the machine (which stretches the wall time).
        cpu = _cpu_seconds(process.pid)
        connection.request("GET", "/readyz")
        ready = json.loads(connection.getresponse().read())
        connection.close()
    finally:
        _stop(process)
    return {
        "seconds": seconds,
        "first_answer_s": round(seconds, 3),
        "server_cpu_s": round(cpu, 2),
        "startup": ready["startup"],
        "load_detail": ready["model"].get("load_detail"),
    }


def _cold_starts(root: str) -> dict:
    """Cold starts without the compiled cache, then with it (the median of three)."""
    import shutil
    import statistics

    shutil.rmtree(Path(root) / "data" / "dev" / "serving_cache", ignore_errors=True)
    first = measure("benchmarks.bench_serving", "coldstart", root, str(_free_port())).extra
    cached = [
        measure("benchmarks.bench_serving", "coldstart", root, str(_free_port())).extra
        for _ in range(3)
    ]
    median = statistics.median(c["first_answer_s"] for c in cached)
    return {
        "without_cache": first,
        "with_cache": [
            {
                "first_answer_s": c["first_answer_s"],
                "server_cpu_s": c["server_cpu_s"],
                **c["startup"],
            }
            for c in cached
        ],
        "with_cache_median_s": median,
        "goal": "first answer at most 3 s after the process starts",
        "goal_met": median <= 3.0,
    }


def main() -> None:
    """Build, cold-start, serve with each server in turn, measure, compare; save the figures."""
    import polars as pl

    from benchmarks.redis_server import redis_server

    binaries = Path(sys.executable).parent
    on = {"MLOPS_ONLINE_STORE": ""}
    quiet = ("--poll-seconds", "86400", "--log-flush-rows", "1000000", "--log-flush-ms", "86400000")
    with (
        tempfile.TemporaryDirectory(prefix="bench-serving-") as root,
        redis_server(root) as redis_url,
    ):
        built = measure("benchmarks.bench_serving", "build", root, redis_url or "")
        cold = _cold_starts(root)
        print(f"[bench_serving] cold start: {cold}"[:600], file=sys.stderr)
        models = {}
        for model in HTTP_MODELS:
            one, eight, stopped = _measure_ours(root, f"ours-{model}.log", on, ("--http", model))
            models[model] = {"one_client": one, f"{CLIENTS}_clients": eight, "exit": stopped}
            print(f"[bench_serving] ours ({model}): {eight}"[:400], file=sys.stderr)
        chosen = min(HTTP_MODELS, key=lambda m: models[m][f"{CLIENTS}_clients"]["p99_ms"])
        thread_one, thread_eight, thread_stopped = _measure_ours(
            root, "ours-thread-writer.log", on, ("--http", chosen, "--log-writer", "thread")
        )
        print(
            f"[bench_serving] ours ({chosen}, thread writer): {thread_eight}"[:400], file=sys.stderr
        )
        _, off, _ = _measure_ours(root, "ours-quiet.log", on, ("--http", chosen, *quiet))
        table = pl.read_delta(
            str(Path(root) / "data" / "dev" / "lake" / "serving" / "inference_log")
        )
        logged_ok = table.filter(pl.col("status") == "ok").height
        on_redis = None
        if redis_url:
            on_redis, _, _ = _measure_ours(
                root, "ours_redis.log", {"MLOPS_ONLINE_STORE": redis_url}, ("--http", chosen)
            )
            print(f"[bench_serving] ours on redis: {on_redis}"[:400], file=sys.stderr)
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
        bodies = Path(root) / "mlflow.jsonl"
        try:
            mlflow_one = _load(port, "/invocations", bodies, MLFLOW_REQUESTS, 1, process.pid)
            mlflow_eight = _load(
                port, "/invocations", bodies, MLFLOW_REQUESTS, CLIENTS, process.pid
            )
        finally:
            _stop(process)
    ours_one = models[chosen]["one_client"]
    ours_eight = models[chosen][f"{CLIENTS}_clients"]
    ours_scores = ours_one.pop("scores")
    for model in HTTP_MODELS:
        for key in ("one_client", f"{CLIENTS}_clients"):
            models[model][key].pop("scores", None)
    off.pop("scores")
    thread_one.pop("scores")
    thread_eight.pop("scores")
    mlflow_scores = mlflow_one.pop("scores")
    mlflow_eight.pop("scores")
    same = min(len(ours_scores), len(mlflow_scores))
    redis: dict | str = "skipped: redis-server is not installed"
    if on_redis is not None:
        redis_scores = on_redis.pop("scores")
        redis = {
            "ours_on_redis_one_client": on_redis,
            "throughput_vs_sqlite": round(on_redis["rps"] / ours_one["rps"], 2),
            "p99_vs_sqlite": round(on_redis["p99_ms"] / ours_one["p99_ms"], 2),
            "scores_equal_to_sqlite": redis_scores == ours_scores,
        }
    # Each concurrency model's two runs, the thread writer's, the quiet runs, and one answer
    # per cold start.
    answered = (len(HTTP_MODELS) + 2) * 2 * (REQUESTS + WARMUP) + 1 + len(cold["with_cache"])
    figures = {
        "build_s": round(built.seconds, 1),
        "cold_start": cold,
        "concurrency_models": models,
        "chosen_concurrency_model": chosen,
        "log_writers": {
            "process": {"one_client": ours_one, f"{CLIENTS}_clients": ours_eight},
            "thread": {
                "one_client": thread_one,
                f"{CLIENTS}_clients": thread_eight,
                "exit": thread_stopped,
            },
            f"p99_thread_to_process_{CLIENTS}_clients": round(
                thread_eight["p99_ms"] / ours_eight["p99_ms"], 2
            ),
        },
        "ours": {"one_client": ours_one, f"{CLIENTS}_clients": ours_eight},
        f"ours_{CLIENTS}_clients_log_flushes_and_alias_polls_off": off,
        "mlflow_models_serve": {"one_client": mlflow_one, f"{CLIENTS}_clients": mlflow_eight},
        "throughput_ratio_one_client": round(ours_one["rps"] / mlflow_one["rps"], 1),
        f"throughput_ratio_{CLIENTS}_clients": round(ours_eight["rps"] / mlflow_eight["rps"], 1),
        "scores_equal": ours_scores[:same] == mlflow_scores[:same],
        "scores_compared": same,
        "inference_log_ok_rows": logged_ok,
        "answered_ok_on_sqlite": answered,
        "every_answer_logged": logged_ok == answered,
        "goal": f"throughput >= 30x mlflow models serve and p99 < 5 ms; {CLIENTS} keep-alive "
        "clients, inference log and alias polling on",
        "goal_met": ours_eight["rps"] >= 30 * mlflow_eight["rps"] and ours_eight["p99_ms"] < 5,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "online_store_redis": redis,
    }
    report("serving", figures)


if __name__ == "__main__":
    entry_point(
        main,
        {
            "build": task_build,
            "client": task_client,
            "load": task_load,
            "coldstart": task_coldstart,
        },
    )
