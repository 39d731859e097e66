"""The `mlops` command and the Dagster UI, as a user starts them, on a temporary data root."""

import json
import os
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

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def env_for(data_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "DAGSTER_"))}
    return {**env, "MLOPS_DATA_ROOT": str(data_root), "MLOPS_ENV": "dev"}


def test_demo_builds_the_lake_and_rerunning_it_changes_no_counts(tmp_path):
    env = env_for(tmp_path)
    first = subprocess.run(
        [*MLOPS, "demo", "--days", "7"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    assert "in quarantine with a reason" in first.stdout
    lake = tmp_path / "dev" / "lake"
    silver = pl.read_delta(str(lake / "silver" / "transactions"))
    assert silver.get_column("landing_date").n_unique() == 7
    assert silver.get_column("transaction_id").is_duplicated().sum() == 0
    tables = subprocess.run(
        [*MLOPS, "tables"], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    second = subprocess.run(
        [*MLOPS, "demo", "--days", "7"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    again = subprocess.run(
        [*MLOPS, "tables"], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout

    def rows(listing: str) -> dict[str, str]:
        return {line.split()[0]: line.split()[2] for line in listing.splitlines()}

    assert rows(again) == rows(tables)
    assert len(rows(tables)) == 9
    # Everything the environment wrote is under data/dev.
    assert {p.name for p in tmp_path.iterdir()} == {"dev"}


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


def test_ui_serves_the_asset_graph_with_medallion_groups(tmp_path):
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
    finally:
        # dagster dev does not exit promptly on SIGTERM: stop its whole process group.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
