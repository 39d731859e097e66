"""The production-shaped stack against in-process execution: streaming latency and a daemon run.

One run starts the stack (`Stack.up()`: PostgreSQL, Redis, the MLflow server, the Dagster
webservers and daemon, the serving replicas and the stream worker) on free ports in a
temporary data root with `MLOPS_ENV=prod`, then, in a fresh process with the stack's variables
(so runs, the registry and the online store are the stack's), builds a small lake and a
champion: simulated days through medallion, features and the online store, then
`retrain_and_deploy`.

1. A landed file until its predictions are in the inference log. Once the stack's stream
   worker (`mlops stream`) has scored the files landed so far, a 20,000-line transactions file
   lands the way a feed delivers it (written as `<name>.csv.part`, renamed into
   `landing/transactions/<day>/`), and the time runs from the rename until all its rows
   (`request_id` starting `stream:<file>:`) are in `serving/inference_log`. Baseline: the same
   bytes under another name (a file is scored once), in a day folder the worker does not
   watch, scored in-process through the `stream_predictions` asset (`stream_score` job,
   `execute_in_process`), from call to return. Goal: at most 10 s through the stack.
2. One small partition launched through the daemon against in-process: `medallion_daily` for
   one landing day launched with GraphQL `launchRun` on the stack's webserver, from the request
   until the run is seen SUCCESS, split by the run's record and events into queued, launching
   (the run process starting and loading the code) and running; baseline: the same job for
   another landing day of the same size with `execute_in_process`, the call alone. Every run
   has its own landing day, so no run replaces another's work. Goal: at most 1.5x.

Each figure is measured `BENCH_DAEMON_REPEATS` times (3) on different files and days; medians
are reported. Skipped, with a message, when redis-server or PostgreSQL's server is missing.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.harness import entry_point, measure, report

START = datetime.date(2026, 1, 1)
# Lake days, transactions per lake day, lines of each streamed file, repeats of each figure.
DAYS = int(os.environ.get("BENCH_DAEMON_DAYS", "10"))
PER_DAY = int(os.environ.get("BENCH_DAEMON_PER_DAY", "2000"))
FILE_LINES = int(os.environ.get("BENCH_DAEMON_FILE_LINES", "20000"))
REPEATS = int(os.environ.get("BENCH_DAEMON_REPEATS", "3"))
SEED = 11
# Day indices: the lake's days, then a landing day per medallion run (daemon, in-process), then
# the days of the streamed files' events.
STREAM_EVENTS = DAYS + 2 * REPEATS
# The streamed files land in the day folder after their events, the in-process baseline's
# copies of them in the folder before: the stream worker watches the newest three day folders
# (`LOOKBACK_DAYS`), and the two (empty) folders between keep the baseline's out of its sight.
# Both folders bound the events' times in the same way, so every line is valid in both.
BASELINE_DAY = START + datetime.timedelta(days=STREAM_EVENTS + REPEATS)
STREAM_DAY = BASELINE_DAY + datetime.timedelta(days=3)
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
STREAM_GOAL_S = 10.0
DAEMON_GOAL_RATIO = 1.5
TIMEOUT_S = 120.0

RUN = """
query($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status creationTime startTime endTime }
  }
}
"""
RUN_EVENTS = """
query($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      eventConnection { events { __typename ... on MessageEvent { timestamp } } }
    }
  }
}
"""


def _scenario(per_day: int):
    """The simulated feed; every size shares one card and merchant population (the seed's)."""
    from mlops_assets.simulate import Scenario

    return Scenario.clean(
        days=STREAM_EVENTS + REPEATS,
        transactions_per_day=per_day,
        n_cards=max(500, PER_DAY // 4),
        n_merchants=max(200, PER_DAY // 25),
        seed=SEED,
        start_date=START,
        label_delay_days=(1, 3),
    )


def _days(first: int, count: int) -> list[datetime.date]:
    return [START + datetime.timedelta(days=first + i) for i in range(count)]


def daemon_days() -> list[datetime.date]:
    """Landing days launched through the daemon."""
    return _days(DAYS, REPEATS)


def inprocess_days() -> list[datetime.date]:
    """Landing days run in-process."""
    return _days(DAYS + REPEATS, REPEATS)


def land(content: bytes, landing_root: Path, name: str, day: datetime.date) -> str:
    """Write a transactions file as a feed does: a temporary name, then a rename into place.

    Returns:
        The file's name relative to the landing root.
    """
    folder = landing_root / "transactions" / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{name}.part"
    partial.write_bytes(content)
    os.rename(partial, folder / name)
    return (folder / name).relative_to(landing_root).as_posix()


def task_build(feed: str) -> dict:
    """Lake, champion and the in-process baselines, on the stack (its variables are set).

    Writes the streamed files' bytes to `feed` for the main process to land.
    """
    import dagster as dg

    from mlops_assets.definitions import build_definitions
    from mlops_assets.defs.runner import prepare_dagster_home, run_days
    from mlops_assets.settings import load_settings
    from mlops_assets.simulate import generate_day, simulate

    settings = load_settings()
    prepare_dagster_home(settings)
    began = time.perf_counter()
    simulate(_scenario(PER_DAY), settings.landing_root, days=range(STREAM_EVENTS))
    big = _scenario(FILE_LINES)
    files = []
    for i in range(REPEATS):
        content = generate_day(big, STREAM_EVENTS + i).transaction_files[0]
        path = Path(feed) / f"stream_{i + 1}.csv"
        path.write_bytes(content)
        files.append(path)
    simulated = time.perf_counter() - began
    defs = build_definitions(settings)
    lake_days = _days(0, DAYS)
    figures: dict = {"simulate_s": round(simulated, 1)}
    with dg.DagsterInstance.get() as instance:
        began = time.perf_counter()
        for job in ("medallion_daily", "features_daily"):
            runs = run_days(defs, lake_days, instance, job_name=job, log_level="ERROR")
            if not all(r.success for r in runs) or len(runs) != DAYS:
                raise RuntimeError(f"{job} failed on the lake days")
        published = defs.resolve_job_def("online_publish").execute_in_process(
            instance=instance, run_config=QUIET, raise_on_error=False
        )
        if not published.success:
            raise RuntimeError("online_publish failed")
        figures["lake_s"] = round(time.perf_counter() - began, 1)
        began = time.perf_counter()
        cutoff = datetime.datetime.combine(
            START + datetime.timedelta(days=DAYS), datetime.time(), datetime.UTC
        )
        trained = defs.resolve_job_def("retrain_and_deploy").execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={
                "ops": {
                    "ml__training_set": {
                        "config": {"label_cutoff": cutoff.isoformat(), "days": DAYS}
                    },
                    "ml__fraud_model": {"config": {"seed": 7}},
                    # A benchmark needs a champion whatever the small lake's metrics.
                    "ml__model_validation": {"config": {"mode": "dry_run"}},
                },
                **QUIET,
            },
        )
        built = trained.asset_materializations_for_node("ml__champion") if trained.success else []
        if not built:
            raise RuntimeError("retrain_and_deploy promoted no champion")
        figures["champion_s"] = round(time.perf_counter() - began, 1)
        figures["champion_version"] = str(built[0].metadata["champion"].value)

        # The stack's stream worker scores the newest landed days once the champion is
        # there: the baselines start when it is idle again.
        began = time.perf_counter()
        wait_drained(settings, began)
        figures["worker_drained_s"] = round(time.perf_counter() - began, 1)
        # From now on the worker watches the folders after the baseline's.
        for later in range(1, 4):
            day = BASELINE_DAY + datetime.timedelta(days=later)
            (settings.landing_root / "transactions" / day.isoformat()).mkdir(parents=True)
        stream = defs.resolve_job_def("stream_score")

        def score(name: str) -> tuple[float, dict]:
            config = {"ops": {"serving__stream_predictions": {"config": {"file": name}}}}
            began = time.perf_counter()
            result = stream.execute_in_process(
                instance=instance, run_config={**config, **QUIET}, raise_on_error=False
            )
            seconds = time.perf_counter() - began
            if not result.success:
                raise RuntimeError(f"stream_score failed for {name}")
            meta = result.asset_materializations_for_node("serving__stream_predictions")[0]
            return seconds, {k: v.value for k, v in meta.metadata.items()}

        # Warm-up (untimed figure): the first call in the process pays the scoring imports.
        warm_file = f"transactions/{lake_days[-1].isoformat()}/"
        warm_file += f"transactions_{lake_days[-1].isoformat()}_000.csv"
        figures["stream_warmup_s"] = round(score(warm_file)[0], 2)
        stream_runs = []
        for i, path in enumerate(files, start=1):
            name = land(
                path.read_bytes(), settings.landing_root, f"inprocess_{i}.csv", BASELINE_DAY
            )
            seconds, meta = score(name)
            stream_runs.append(
                {
                    "file": name,
                    "seconds": round(seconds, 3),
                    "rows": meta["scored"] + meta["errors"],
                    "ok_rows": meta["scored"],
                    "scoring_s": round(meta["seconds"], 3),
                }
            )
        figures["stream_inprocess"] = stream_runs

        medallion = defs.resolve_job_def("medallion_daily")
        medallion_runs = []
        for day in inprocess_days():
            began = time.perf_counter()
            result = medallion.execute_in_process(
                partition_key=day.isoformat(),
                instance=instance,
                run_config=QUIET,
                raise_on_error=False,
            )
            seconds = time.perf_counter() - began
            if not result.success:
                raise RuntimeError(f"medallion_daily failed in-process for {day}")
            medallion_runs.append({"day": day.isoformat(), "seconds": round(seconds, 3)})
        figures["medallion_inprocess"] = medallion_runs
    figures["seconds"] = sum(figures[k] for k in ("simulate_s", "lake_s", "champion_s"))
    return figures


def missing() -> str | None:
    """Why the stack cannot run on this machine, None when it can."""
    from mlops_assets.stack import postgres
    from mlops_assets.stack.process import StackError

    if not Path(shutil.which("redis-server") or "/usr/bin/redis-server").exists():
        return "redis-server is not installed (apt-get install redis-server)"
    try:
        postgres.bin_dir()
    except StackError as error:
        return str(error)
    return None


@contextlib.contextmanager
def stack_variables(env: dict[str, str]) -> Iterator[None]:
    """The stack's variables in `os.environ` for the block (the fresh tasks inherit them)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _rows_logged(uri: str, prefix: str, status: str | None = None) -> int:
    import polars as pl

    rows = pl.scan_delta(uri).filter(pl.col("request_id").str.starts_with(prefix))
    if status is not None:
        rows = rows.filter(pl.col("status") == status)
    return rows.select(pl.len()).collect().item()


def wait_drained(settings, began: float) -> None:
    """Wait until the stream worker has scored every file it watches."""
    from mlops_assets.lakehouse.catalog import Catalog
    from mlops_assets.serving.streaming import STREAM_CHECKPOINT, checkpoints, landed_files

    uri = Catalog(settings).uri_for_write(STREAM_CHECKPOINT)
    while time.perf_counter() - began < TIMEOUT_S:
        done = set(checkpoints(uri).get_column("file").to_list())
        if set(landed_files(settings.landing_root)) <= done:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the stream worker left files unscored after {TIMEOUT_S} s")


def wait_logged(uri: str, file: str, rows: int, began: float) -> float:
    """Seconds from `began` until `rows` rows of `file` are in the inference log.

    The log's version is polled (a cheap read of the Delta log); rows are counted only when
    it has moved.
    """
    from deltalake import DeltaTable

    prefix = f"stream:{file}:"
    table = DeltaTable(uri)
    seen = -1
    while time.perf_counter() - began < TIMEOUT_S:
        table.update_incremental()
        version = table.version()
        if version != seen:
            seen = version
            if _rows_logged(uri, prefix) >= rows:
                return time.perf_counter() - began
        time.sleep(0.05)
    raise RuntimeError(f"{file}: fewer than {rows} rows in the inference log after {TIMEOUT_S} s")


def worker_seconds(log: Path, file: str) -> float | None:
    """The scoring time the stream worker logged for a file."""
    pattern = re.compile(rf"scored {re.escape(file)}: .* in ([0-9.]+) s")
    found = pattern.findall(log.read_text(errors="replace")) if log.exists() else []
    return float(found[-1]) if found else None


def measure_stream(stack, feed: Path) -> dict:
    """Land each file for the stack's stream worker; time it into the inference log."""
    from mlops_assets.lakehouse.catalog import Catalog
    from mlops_assets.serving.inference_log import INFERENCE_LOG

    settings = stack.settings
    log_uri = Catalog(settings).uri_for_write(INFERENCE_LOG)
    worker_log = stack.stream_worker.log_file
    wait_drained(settings, time.perf_counter())
    runs = []
    for i, path in enumerate(sorted(feed.glob("stream_*.csv")), start=1):
        content = path.read_bytes()
        rows = len(content.splitlines()) - 1
        folder = settings.landing_root / "transactions" / STREAM_DAY.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"stack_{i}.csv.part"
        partial.write_bytes(content)
        began = time.perf_counter()
        os.rename(partial, folder / f"stack_{i}.csv")
        file = f"transactions/{STREAM_DAY.isoformat()}/stack_{i}.csv"
        seconds = wait_logged(log_uri, file, rows, began)
        # The worker's log line comes after the checkpoint: give it a moment.
        deadline = time.monotonic() + 10
        scoring = worker_seconds(worker_log, file)
        while scoring is None and time.monotonic() < deadline:
            time.sleep(0.1)
            scoring = worker_seconds(worker_log, file)
        runs.append(
            {
                "file": file,
                "seconds": round(seconds, 3),
                "rows": rows,
                "ok_rows": _rows_logged(log_uri, f"stream:{file}:", "ok"),
                "worker_scoring_s": scoring,
                "outside_scoring_s": round(seconds - scoring, 3) if scoring else None,
            }
        )
        print(f"[bench_daemon] stream through the stack: {runs[-1]}", file=sys.stderr)
    return {"runs": runs}


def _stamp(text: str | float | None) -> float | None:
    """A GraphQL timestamp in seconds (event timestamps are milliseconds, as text)."""
    if text is None:
        return None
    value = float(text)
    return value / 1000 if value > 1e11 else value


def launch_medallion(port: int, day: datetime.date) -> dict:
    """Launch `medallion_daily` for a day through the webserver; time it until SUCCESS."""
    from mlops_assets.stack.dagster_servers import LAUNCH_RUN, graphql

    params = {
        "selector": {
            "repositoryLocationName": "mlops_assets",
            "repositoryName": "__repository__",
            "jobName": "medallion_daily",
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day.isoformat()}]},
    }
    requested = time.time()
    began = time.perf_counter()
    answer = graphql(port, LAUNCH_RUN, {"params": params})["launchRun"]
    if answer["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"launchRun for {day}: {answer}")
    run_id = answer["run"]["runId"]
    launched = time.perf_counter() - began
    record: dict = {}
    while time.perf_counter() - began < TIMEOUT_S:
        record = graphql(port, RUN, {"runId": run_id})["runOrError"]
        if record.get("status") in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(0.1)
    seconds = time.perf_counter() - began
    if record.get("status") != "SUCCESS":
        raise RuntimeError(f"medallion_daily for {day} through the daemon: {record}")
    created, started, ended = (_stamp(record[k]) for k in ("creationTime", "startTime", "endTime"))
    figures = {
        "day": day.isoformat(),
        "run_id": run_id,
        "seconds": round(seconds, 3),
        "launch_request_s": round(launched, 3),
        "request_to_created_s": round(created - requested, 3),
        "queued_s": round(started - created, 3),
        "running_s": round(ended - started, 3),
        "seen_after_end_s": round(requested + seconds - ended, 3),
    }
    # Where the queued time goes: waiting for the daemon's dequeue, then the run process
    # starting and loading the code until the run begins.
    try:
        data = graphql(port, RUN_EVENTS, {"runId": run_id})["runOrError"]
        events: dict[str, float] = {}
        for event in data["eventConnection"]["events"]:
            kind, stamp = event["__typename"], _stamp(event.get("timestamp"))
            if kind.startswith("Run") and stamp is not None:
                events.setdefault(kind, round(stamp - created, 3))
        figures["run_events_after_creation_s"] = events
        # The daemon hands a dequeued run to the launcher (RUN_STARTING); the run begins
        # (RUN_START) once its process has started and loaded the code.
        starting = events.get("RunStartingEvent")
        if starting is not None:
            figures["in_queue_s"] = starting
            figures["run_process_start_s"] = round(started - created - starting, 3)
    except (RuntimeError, KeyError, TypeError) as error:
        figures["events"] = f"not read: {error}"[:200]
    return figures


def _median(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def main() -> None:
    """Start the stack, build, measure both paths of each figure; print and save."""
    from mlops_assets.settings import load_settings
    from mlops_assets.stack.process import StackError
    from mlops_assets.stack.stack import Stack, free_ports

    reason = missing()
    if reason is not None:
        print(f"[bench_daemon] skipped: {reason}")
        return
    # Not under a private temporary folder alone: PostgreSQL runs as `postgres` when we are
    # root, and the stack grants it the search bit it needs on the way.
    folder = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    ports = free_ports(2)
    try:
        stack = Stack(
            load_settings({"MLOPS_ENV": "prod"}),
            ports,
            data_root=folder / "data",
        )
    except StackError as error:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"[bench_daemon] skipped: {error}")
        return
    feed = folder / "feed"
    feed.mkdir()
    began = time.perf_counter()
    try:
        up = stack.up()
        print(f"[bench_daemon] stack up in {up['total']:.1f} s", file=sys.stderr)
        with stack_variables({**stack.env, "PYTHONHASHSEED": "0"}):
            built = measure("benchmarks.bench_daemon", "build", str(feed))
        print(f"[bench_daemon] built: {built.extra}"[:600], file=sys.stderr)
        streamed = measure_stream(stack, feed)
        launched = []
        for day in daemon_days():
            launched.append(launch_medallion(ports.webserver, day))
            print(f"[bench_daemon] through the daemon: {launched[-1]}", file=sys.stderr)
    finally:
        stopped = stack.down()
        left = stack.processes()
        shutil.rmtree(folder, ignore_errors=True)
    stream_inprocess = built.extra["stream_inprocess"]
    medallion_inprocess = built.extra["medallion_inprocess"]
    stack_s = _median(streamed["runs"], "seconds")
    inprocess_s = _median(stream_inprocess, "seconds")
    daemon_s = _median(launched, "seconds")
    local_s = _median(medallion_inprocess, "seconds")
    figures = {
        "stack_up_s": round(up["total"], 1),
        "build": {
            k: built.extra[k]
            for k in ("simulate_s", "lake_s", "champion_s", "champion_version", "stream_warmup_s")
        },
        "build_peak_mib": round(built.peak_mib),
        "lake": f"{DAYS} days of ~{PER_DAY:,} transactions",
        "stream": {
            "file_lines": FILE_LINES,
            "through_stack_s": stack_s,
            "in_process_s": inprocess_s,
            "ratio": round(stack_s / inprocess_s, 2),
            "worker_scoring_s": _median(streamed["runs"], "worker_scoring_s"),
            # The worker's poll (1 s) and settle (0.5 s), its Delta append, this loop's polling.
            "outside_scoring_s": _median(streamed["runs"], "outside_scoring_s"),
            "in_process_scoring_s": _median(stream_inprocess, "scoring_s"),
            "ok_rows_stack": [run["ok_rows"] for run in streamed["runs"]],
            "ok_rows_in_process": [run["ok_rows"] for run in stream_inprocess],
            "worker_backlog_drained_s": built.extra["worker_drained_s"],
            "runs_stack": streamed["runs"],
            "runs_in_process": stream_inprocess,
            "goal": f"landed file in the inference log within {STREAM_GOAL_S:.0f} s",
            "goal_met": stack_s <= STREAM_GOAL_S,
        },
        "daemon_run": {
            "job": "medallion_daily",
            "through_daemon_s": daemon_s,
            "in_process_s": local_s,
            "ratio": round(daemon_s / local_s, 2),
            "queued_s": _median(launched, "queued_s"),
            "running_s": _median(launched, "running_s"),
            "queued_split": {
                "in_queue_s": _median(launched, "in_queue_s"),
                "run_process_start_s": _median(launched, "run_process_start_s"),
            },
            "runs_daemon": launched,
            "runs_in_process": medallion_inprocess,
            "goal": f"a daemon run within {DAEMON_GOAL_RATIO}x the in-process call",
            "goal_met": daemon_s <= DAEMON_GOAL_RATIO * local_s,
        },
        "repeats": REPEATS,
        "wall_s": round(time.perf_counter() - began, 1),
        "servers_stopped": stopped,
        "processes_left": len(left),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    report("daemon", figures)


if __name__ == "__main__":
    entry_point(main, {"build": task_build})
