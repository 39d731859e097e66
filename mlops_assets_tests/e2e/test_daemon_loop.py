"""The daemon closes the loop on the production-shaped stack; nothing is ticked by hand.

The stack (PostgreSQL, Redis, an MLflow server, the Dagster webserver and daemon, a serving
replica and the stream worker) starts on free ports with every schedule on a one-minute cron.
An existing deployment is set up first: normal days ingested, a champion trained, its days
scored. Then drifted days land as a feed writes them (each file under a temporary name, renamed
when whole, the day's manifest last), and from then on the test only watches, through
GraphQL, the registry, the serving replica and the lake:

- the stream worker scores each landed file once;
- the medallion, refresh and serve schedules launch their runs, partitions at once, the
  refreshes one at a time in order, silver keys unique;
- a medallion run whose process is killed mid-step is marked failed (its pool slot freed),
  alerted, and re-executed by the daemon to success;
- the drift sensor requests retraining, the daemon runs it, the new version is promoted, and
  the running serving replica answers with it.
"""

import datetime
import json
import os
import shutil
import signal
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.automation import AFTER_TAG, REFRESH_TAG, SERVE_DAY, SERVED_TAG
from mlops_assets.defs.partitions import event_days_touched
from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.lakehouse.delta_io import scan_table, table_exists
from mlops_assets.settings import load_settings
from mlops_assets.simulate import Drift, Scenario, simulate
from mlops_assets.stack.dagster_servers import graphql
from mlops_assets.stack.stack import Stack, free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

START = datetime.date(2026, 1, 1)
NORMAL, LATER = 8, 4
PER_DAY = 4_000
MONITORING = {"label_maturity_days": 1, "min_labelled_days": 2}
EVERY_MINUTE = {
    f"MLOPS_CRON_{name}": "* * * * *" for name in ("MEDALLION", "REFRESH", "SERVE_AND_MONITOR")
}
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
DEADLINE_SECONDS = 40 * 60

RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter, limit: 500) {
    ... on Runs { results { runId jobName status creationTime startTime endTime
                            tags { key value } } }
  }
}
"""
EVENTS = """
query Events($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    ... on EventConnection {
      events { __typename ... on MessageEvent { message stepKey timestamp } }
    }
  }
}
"""


@contextmanager
def environment(variables):
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def land_day(staged: Path, landing: Path, day: datetime.date) -> list[str]:
    """Land a day as a feed does: each file under a temporary name, renamed when whole."""
    files = []
    for source in ("transactions", "labels"):
        for path in sorted((staged / source / day.isoformat()).iterdir()):
            target = landing / source / day.isoformat() / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")
            shutil.copyfile(path, partial)
            partial.rename(target)
            files.append(f"{source}/{day.isoformat()}/{path.name}")
    manifest = landing / "_manifests" / f"{day.isoformat()}.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(staged / "_manifests" / manifest.name, manifest)
    return files


class Watch:
    """What the test reads: GraphQL on the webserver, the lake, the registry, the replica."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.port = stack.ports.webserver
        self.lake = stack.settings.lake_root

    def runs(self, job: str | None = None) -> list[dict]:
        variables = {"filter": {"pipelineName": job}} if job else {"filter": {}}
        results = graphql(self.port, RUNS, variables)["runsOrError"]["results"]
        for run in results:
            run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
        return sorted(results, key=lambda r: r["creationTime"])

    def events(self, run_id: str) -> list[dict]:
        return graphql(self.port, EVENTS, {"runId": run_id})["logsForRun"]["events"]

    def table(self, layer: str, name: str) -> pl.DataFrame:
        uri = self.lake / layer / name
        return scan_table(uri).collect() if table_exists(uri) else pl.DataFrame()

    def until(self, what: str, check, deadline: float, every: float = 2.0):
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(every)
        raise AssertionError(f"gave up waiting for {what}; runs:\n{self.summary()}")

    def summary(self) -> str:
        """One line per run; a failed run also says why (its failure events' messages)."""
        lines = []
        for run in self.runs():
            lines.append(
                f"{run['jobName']:22s} {run['tags'].get('dagster/partition', '-'):12s} "
                f"{run['status']:10s} {run['runId'][:8]} "
                f"start {run['startTime'] or 0:.1f} end {run['endTime'] or 0:.1f}"
            )
            if run["status"] == "FAILURE":
                lines.extend(f"    {why}" for why in self.failures(run["runId"]))
        return "\n".join(lines[-120:]) + "\ndaemon log:\n" + self.launcher_lines()

    def failures(self, run_id: str) -> list[str]:
        """Why a run failed: its events with their times (the whole timeline when the run
        never started, the failure events otherwise)."""
        events = self.events(run_id)
        started = any(e["__typename"] == "RunStartEvent" for e in events)
        kinds = {"ExecutionStepFailureEvent", "RunFailureEvent"}
        return [
            f"{int(e.get('timestamp') or 0) / 1000:.1f} {e['__typename']} "
            f"{e.get('stepKey') or ''}: {(e.get('message') or '')[:300]}"
            for e in events
            if not started or e["__typename"] in kinds
        ]

    def launcher_lines(self) -> str:
        """The warm launcher's and the run queue's lines of the daemon's log."""
        try:
            text = self.stack.daemon.log_file.read_text(errors="replace")
        except OSError:
            return "(no daemon log)"
        words = ("warm launcher", "QueuedRunCoordinator", "MonitoringDaemon", "Error")
        return "\n".join(
            [line for line in text.splitlines() if any(w in line for w in words)][-150:]
        )


@pytest.fixture(scope="module")
def deployment():
    """The stack, with an existing deployment: normal days, a champion, its days scored."""
    # Not under pytest's temporary folder: a later pytest session makes it 0700, and the
    # PostgreSQL server (as the `postgres` user when tests run as root) would lose its data.
    root = Path(tempfile.mkdtemp(prefix="mlops-daemon-"))
    scenario = Scenario.clean(
        days=NORMAL + LATER,
        transactions_per_day=PER_DAY,
        seed=21,
        start_date=START,
        label_delay_days=(1, 1),
        drift=Drift(covariate_from_day=NORMAL, concept_from_day=NORMAL),
    )
    staged = root / "feed"
    simulate(scenario, staged)
    ports = free_ports(1)
    extra = {
        "MLOPS_AUTOMATION": "on",
        "MLOPS_SENSOR_INTERVAL_SECONDS": "5",
        "MLOPS_STREAM_WORKER": "on",
        "MLOPS_MONITORING": json.dumps(MONITORING),
        **EVERY_MINUTE,
    }
    stack = Stack(
        load_settings({"MLOPS_ENV": "prod"}), ports=ports, data_root=root / "data", extra_env=extra
    )
    try:
        stack.up()
        # The deployment existed before the daemon started: build it with the daemon down.
        stack.daemon.stop()
        with environment(stack.env):
            settings = load_settings()
            assert settings.online_store_url.startswith("redis://")
            build_existing_deployment(settings, staged, scenario.dates[:NORMAL])
        stack.up()
        yield stack, staged, scenario.dates
    finally:
        stack.down()
    assert not stack.processes(), "a process of the stack outlived `down`"
    shutil.rmtree(root, ignore_errors=True)


def build_existing_deployment(settings, staged: Path, days: list[datetime.date]) -> None:
    """Normal days through the loop in-process, with the tags the schedules read."""
    landing = settings.landing_root
    for day in days:
        for source in ("transactions", "labels"):
            shutil.copytree(staged / source / day.isoformat(), landing / source / day.isoformat())
    defs = build_definitions(settings)
    with dg.DagsterInstance.get() as instance:

        def run(job, partition=None, tags=None, selection=None, config=None):
            result = defs.resolve_job_def(job).execute_in_process(
                instance=instance,
                partition_key=partition.isoformat() if partition else None,
                tags=tags or {},
                asset_selection=selection,
                run_config={**(config or {}), **QUIET},
                raise_on_error=False,
            )
            assert result.success, (job, partition)

        for day in days:
            run("medallion_daily", day, {AFTER_TAG: day.isoformat()})
            for event_day in event_days_touched(day, START):
                run("refresh_event_days", event_day, {REFRESH_TAG: day.isoformat()})
        cutoff = datetime.datetime.combine(
            days[-1] + datetime.timedelta(days=1), datetime.time(), datetime.UTC
        )
        training = {"label_cutoff": cutoff.isoformat(), "days": len(days)}
        run(
            "retrain_and_deploy",
            config={
                "ops": {"ml__training_set": {"config": {**training, "label_maturity_days": 1}}}
            },
        )
        # The champion's first days in service (earlier days are its training data).
        for day in days[-2:]:
            run("serve_and_monitor", day, {SERVED_TAG: day.isoformat()}, selection=SERVE_DAY)


def score_once(url: str, row: dict) -> dict:
    body = {
        key: (value.isoformat() if isinstance(value, datetime.datetime) else value)
        for key, value in row.items()
    }
    request = urllib.request.Request(
        f"{url}/v1/score",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def worker_pid(watch: Watch, run_id: str) -> int | None:
    for event in watch.events(run_id):
        message = event.get("message") or ""
        if message.startswith("Started process for run (pid: "):
            return int(message.split("pid: ")[1].split(")")[0])
    return None


@pytest.mark.timeout(DEADLINE_SECONDS + 900)
def test_the_daemon_closes_the_loop(deployment):
    stack, staged, days = deployment
    watch = Watch(stack)
    deadline = time.monotonic() + DEADLINE_SECONDS
    landing = stack.settings.landing_root
    drifted = days[NORMAL:]
    champion_before = champion_version(stack)
    assert champion_before == "1"

    # The feed lands the drifted days, one after the other; the worker scores each file.
    landed: list[str] = []

    def scored() -> bool:
        checkpoint = watch.table("serving", "stream_checkpoint")
        return bool(checkpoint.height) and set(landed) <= set(checkpoint["file"])

    for day in drifted:
        files = land_day(staged, landing, day)
        landed += [f for f in files if f.startswith("transactions/")]
        watch.until(f"the stream worker to score the files of {day}", scored, deadline, 0.5)
    log = watch.table("serving", "inference_log")
    for name in landed:
        lines = len((landing / name).read_text().splitlines()) - 1
        rows = log.filter(pl.col("request_id").str.starts_with(f"stream:{name}:"))
        assert rows.height == lines, name

    # Kill the second drifted day's medallion run in its silver step (the worker process).
    target = drifted[1].isoformat()

    def medallion_in_silver():
        for run in watch.runs("medallion_daily"):
            if run["tags"].get("dagster/partition") != target or run["status"] != "STARTED":
                continue
            started = {
                e.get("stepKey")
                for e in watch.events(run["runId"])
                if e["__typename"] == "ExecutionStepStartEvent"
            }
            if "silver_transactions" in started:
                return run
        return None

    killed = watch.until(
        f"the medallion run of {target} in silver", medallion_in_silver, deadline, 0.3
    )
    pid = worker_pid(watch, killed["runId"])
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    def retried():
        runs = watch.runs("medallion_daily")
        original = next(r for r in runs if r["runId"] == killed["runId"])
        children = [r for r in runs if r["tags"].get("dagster/parent_run_id") == killed["runId"]]
        done = [r for r in children if r["status"] == "SUCCESS"]
        return (original, done[0]) if original["status"] == "FAILURE" and done else None

    original, retry = watch.until(
        "the killed run to fail and its retry to succeed", retried, deadline
    )
    assert retry["tags"]["dagster/partition"] == target

    # The drift sensor asks for retraining; the daemon runs it; the replica serves the new one.
    def retrained():
        runs = [
            r for r in watch.runs("retrain_and_deploy") if r["tags"].get("mlops/trigger") == "drift"
        ]
        finished = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE")]
        return finished[0] if finished else None

    retrain = watch.until("the drift retraining run", retrained, deadline, every=5.0)
    assert retrain["status"] == "SUCCESS", watch.summary()
    champion_after = champion_version(stack)
    assert int(champion_after) > int(champion_before)
    silver = watch.table("silver", "transactions")
    request = (
        silver.filter(pl.col("landing_date") == drifted[-1])
        .select(*FRAUD_SPEC.request_fields)
        .row(0, named=True)
    )
    url = stack.urls["serve-1"]

    def served_by_new_champion():
        request["transaction_id"] = f"probe-{time.monotonic_ns()}"
        answer = score_once(url, request)
        return answer if str(answer["model"]["version"]) == champion_after else None

    watch.until("the replica to answer with the new champion", served_by_new_champion, deadline)

    # Every drifted day went through the schedules: medallion, refreshes in one lane, serving.
    def all_served():
        runs = watch.runs("serve_and_monitor")
        done = {r["tags"].get(SERVED_TAG) for r in runs if r["status"] == "SUCCESS"}
        return {d.isoformat() for d in drifted} <= done

    watch.until("every drifted day served", all_served, deadline, every=5.0)
    runs = watch.runs()
    by_schedule = [r for r in runs if "dagster/schedule_name" in r["tags"]]
    for day in drifted:
        key = day.isoformat()
        assert any(
            r["jobName"] == "medallion_daily"
            and r["tags"].get("dagster/partition") == key
            and r["status"] == "SUCCESS"
            for r in runs
        ), key
        refreshes = [
            r for r in by_schedule if r["tags"].get(REFRESH_TAG) == key and r["status"] == "SUCCESS"
        ]
        assert len(refreshes) == len(event_days_touched(day, START)), key
        served = [
            r for r in by_schedule if r["tags"].get(SERVED_TAG) == key and r["status"] == "SUCCESS"
        ]
        assert len(served) == 1, key
    # Partitions ran at once: some medallion runs of the drifted days overlapped in time.
    medallions = [
        r
        for r in runs
        if r["jobName"] == "medallion_daily"
        and r["tags"].get("dagster/partition") in {d.isoformat() for d in drifted}
        and r["startTime"]
        and r["endTime"]
    ]
    assert any(
        a["startTime"] < b["endTime"] and b["startTime"] < a["endTime"]
        for a in medallions
        for b in medallions
        if a["runId"] != b["runId"]
    ), "no two medallion runs overlapped"
    # Refreshes that ran (a run the monitor failed before it started ran nothing; its start
    # time is its failure's), one after the other.
    lane = sorted(
        (
            r
            for r in runs
            if r["jobName"] == "refresh_event_days"
            and r["startTime"]
            and r["endTime"]
            and any(e["__typename"] == "RunStartEvent" for e in watch.events(r["runId"]))
        ),
        key=lambda r: r["startTime"],
    )
    for before, after in zip(lane, lane[1:], strict=False):
        assert after["startTime"] >= before["endTime"] - 0.5, (
            f"refresh runs {before['runId'][:8]} and {after['runId'][:8]} overlapped:\n"
            + watch.summary()
        )
    silver = watch.table("silver", "transactions")
    assert silver["transaction_id"].is_unique().all()
    # The killed run's pool slot was freed: no slot is held once the runs are done.
    with environment(stack.env), dg.DagsterInstance.get() as instance:
        info = instance.event_log_storage.get_concurrency_info("silver_transactions")
        assert info.active_slot_count == 0
    alerts = watch.table("monitoring", "alerts")
    failed = alerts.filter(pl.col("kind") == "run_failed")
    assert failed["details"].str.contains(killed["runId"]).any()
    assert alerts.filter(pl.col("kind") == "drift").height >= 1
    assert alerts.filter(pl.col("kind") == "retrain_requested").height == 1


def champion_version(stack: Stack) -> str | None:
    import mlflow

    client = mlflow.MlflowClient(
        tracking_uri=stack.urls["mlflow"], registry_uri=stack.urls["mlflow"]
    )
    try:
        return str(client.get_model_version_by_alias("prod.fraud_detector", "champion").version)
    except mlflow.exceptions.MlflowException:
        return None
