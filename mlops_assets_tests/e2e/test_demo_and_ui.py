"""The `mlops` command and the Dagster UI, as a user starts them, on a temporary data root."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[2]
MLOPS = [sys.executable, "-m", "mlops_assets.cli"]

# Two demo runs beside the suite's other workers: longer than the default timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]
PER_DAY = 6_000


def env_for(data_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "DAGSTER_"))}
    return {**env, "MLOPS_DATA_ROOT": str(data_root), "MLOPS_ENV": "dev"}


def mlops(env: dict[str, str], *args: str) -> str:
    """Run the `mlops` command as a user would; its output, or a failure showing why."""
    done = subprocess.run(
        [*MLOPS, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return done.stdout


# The demo's size in these tests: enough mature labels for the champion to pass validation.
DEMO = ("demo", "--days", "7", "--drift-days", "2", "--per-day", str(PER_DAY))


def printed(pattern: str, output: str) -> tuple[str, ...]:
    """The groups of the one line of the demo's output matching `pattern`."""
    found = re.findall(pattern, output)
    assert len(found) == 1, (pattern, found, output[-3000:])
    return found[0] if isinstance(found[0], tuple) else (found[0],)


def check_printed_counts(output: str, lake: Path) -> tuple[int, str]:
    """The counts the demo prints are those of its tables; the retrainings and champions."""
    answered, sent = map(int, printed(r"online: (\d+) of (\d+) REST requests answered in", output))
    assert answered == sent == 200
    log = pl.read_delta(str(lake / "serving" / "inference_log"))
    online = log.filter(pl.col("mode") == "online", pl.col("model_name") == "dev.fraud_detector")
    assert online.height == answered
    (linear,) = printed(r"online: (\d+) of \d+ REST requests answered by fraud_linear", output)
    assert int(linear) == sent
    (streamed,) = printed(r"predictions: ([\d,]+) streamed", output)
    # The streamed file's unreadable lines are rows of the log too, with status "error".
    stream = log.filter(pl.col("mode") == "stream", pl.col("status") == "ok")
    assert int(streamed.replace(",", "")) == stream.height > 0
    injected, quarantined = (
        int(n.replace(",", ""))
        for n in printed(
            r"injected ([\d,]+) bad transaction lines; ([\d,]+) are in quarantine", output
        )
    )
    held = sum(
        pl.read_delta(str(lake / "quarantine" / name)).height
        for name in ("bronze_transactions", "silver_transactions")
    )
    assert quarantined == held >= injected > 0
    retrains, champions = printed(
        r"(\d+) retraining requested.*; champions in turn: ([\d >-]+)\n", output
    )
    return int(retrains), champions


def test_demo_builds_the_lake_and_rerunning_it_changes_no_counts(tmp_path):
    env = env_for(tmp_path)
    lake = tmp_path / "dev" / "lake"
    first = mlops(env, *DEMO)
    assert "promoted dev.fraud_detector version 1 to champion" in first
    assert "promoted dev.fraud_linear version 1 to champion" in first
    assert "every one is a row of serving/inference_log" in first
    # Two drifted days: too few for labelled drift, so nothing retrains yet.
    assert check_printed_counts(first, lake) == (0, "1")
    silver = pl.read_delta(str(lake / "silver" / "transactions"))
    assert silver.get_column("landing_date").n_unique() == 9
    assert silver.get_column("transaction_id").is_duplicated().sum() == 0
    tables = mlops(env, "tables")
    mlops(env, *DEMO)
    again = mlops(env, "tables")

    def rows(listing: str) -> dict[str, str]:
        return {line.split()[0]: line.split()[2] for line in listing.splitlines()}

    # The lake's tables are rebuilt to the same rows; logs (audit, predictions, monitoring of
    # the new champion's predictions, the prediction summary per model version) grow.
    audit, summary = "ml/model_audit", "gold/prediction_summary"

    def lake(listing: dict[str, str]) -> dict[str, str]:
        return {
            k: v
            for k, v in listing.items()
            if k not in (audit, summary) and k.split("/")[0] not in ("serving", "monitoring")
        }

    assert lake(rows(again)) == lake(rows(tables))
    # The rerun's champion (version 2) scored the days again: its rows join version 1's.
    assert int(rows(again)[summary].replace(",", "")) > int(rows(tables)[summary].replace(",", ""))
    versions = (
        pl.read_delta(str(tmp_path / "dev" / "lake" / "gold" / "prediction_summary"))
        .filter(pl.col("model_name") == "dev.fraud_detector")
        .get_column("model_version")
        .unique()
        .sort()
        .to_list()
    )
    assert versions == ["1", "2"]
    # Each run trained, validated and promoted a fraud detector; the audit table keeps every
    # declared model's rows (the first run validated and promoted each model once).
    status = json.loads(mlops(env, "model", "status"))
    assert status["champion"] == "2" and status["previous"] == "1"
    assert [row["action"] for row in status["audit"]] == ["validated", "promoted"] * 2
    linear = json.loads(mlops(env, "model", "status", "--model", "fraud_linear"))
    assert [row["action"] for row in linear["audit"]][:2] == ["validated", "promoted"]
    assert rows(tables)[audit] == "4"
    assert int(rows(again)[audit]) == len(status["audit"]) + len(linear["audit"])
    listing = mlops(env, "features", "list")
    assert "card_behaviour" in listing and "merchant_risk" in listing
    assert "not built" not in listing
    info = json.loads(mlops(env, "features", "describe", "card_behaviour"))
    assert info["lineage"]["sources"]["silver/transactions"] >= 0
    assert (tmp_path / "dev" / "online" / "features.sqlite").exists()
    assert {"serving/inference_log", "monitoring/drift_metrics", "monitoring/performance"} <= set(
        rows(tables)
    )
    # Everything the environment wrote is under data/dev.
    assert {p.name for p in tmp_path.iterdir()} == {"dev"}


def test_a_failing_step_ends_the_demo_with_exit_code_1(tmp_path):
    # One day is too few for a training set with mature labels (chargebacks take up to
    # three days): the champion's training fails, and the demo says so and exits 1.
    done = subprocess.run(
        [*MLOPS, "demo", "--days", "1", "--drift-days", "0", "--per-day", "300"],
        env=env_for(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAILED: training fraud_detector promoted no champion" in done.stdout
    assert "done in" not in done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}
"""


def launch_partition(port: int, day: str) -> str:
    params = {
        "selector": {
            "repositoryLocationName": "mlops_assets",
            "repositoryName": "__repository__",
            "jobName": "medallion_daily",
        },
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day}]},
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": LAUNCH, "variables": {"params": params}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())["data"]["launchRun"]
    assert answer["__typename"] == "LaunchRunSuccess", answer
    return answer["run"]["runId"]


def wait_for_run(port: int, run_id: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = graphql(
            port, f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ status }} }} }}'
        )["data"]["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(2)
    return f"still {status}"


def test_ui_serves_the_asset_graph_and_materializes_partitions(tmp_path):
    mlops(env_for(tmp_path), "simulate", "--days", "2", "--per-day", "2000")
    port = free_port()
    process = subprocess.Popen(
        [*MLOPS, "ui", "--port", str(port)],
        env=env_for(tmp_path),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        nodes = None
        while time.monotonic() < deadline:
            try:
                answer = graphql(port, "{ assetNodes { assetKey { path } groupName } }")
                nodes = answer.get("data", {}).get("assetNodes")
                if nodes:
                    break
            except OSError:
                pass
            assert process.poll() is None, "dagster dev exited early"
            time.sleep(2)
        assert nodes, "the UI did not serve the asset graph in time"
        groups = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in nodes}
        assert groups["bronze/transactions"] == "bronze"
        assert groups["silver/transactions"] == "silver"
        assert groups["gold/merchant_category_daily"] == "gold"
        assert groups["quarantine/bronze_transactions"] == "quarantine"

        # A partition launched from the UI runs, and launching it again changes no counts.
        silver = tmp_path / "dev" / "lake" / "silver" / "transactions"
        assert wait_for_run(port, launch_partition(port, "2026-01-02")) == "SUCCESS"
        first = pl.read_delta(str(silver)).height
        assert first > 1900
        assert wait_for_run(port, launch_partition(port, "2026-01-02")) == "SUCCESS"
        assert pl.read_delta(str(silver)).height == first
    finally:
        # dagster dev does not exit promptly on SIGTERM: stop its whole process group.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
