"""The whole daily loop with `MLOPS_ENGINE=spark` on a real Spark standalone cluster on 127.0.0.1.

A master and one worker start from the pyspark distribution (`bin/spark-class`); the loop
(medallion and features of each day, then the training set, model, validation and champion,
then the last day's batch scoring and monitoring) runs in a separate process whose Spark
master is that cluster: every asset group with an engine setting runs on it (the process
prints which), the others on polars over the tables the cluster wrote, and the master's own status
page must list the application as finished. The lake is on an S3-compatible store (SeaweedFS
on 127.0.0.1, `make weed`), which the driver and the worker's executors reach through S3A, as
a cluster's nodes reach object storage. Master, worker and store are stopped whatever
happens.
"""

import datetime
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import polars as pl
import pyspark
import pytest

from mlops_assets.lakehouse.catalog import Catalog, TableRef
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.settings import load_settings, project_root

# The whole loop on a two-core cluster: longer than the default timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3000)]

SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"
DAYS = 4
RUN = textwrap.dedent(
    """
    import datetime
    import dagster as dg
    from mlops_assets.definitions import build_definitions
    from mlops_assets.defs.ml import keys
    from mlops_assets.defs.runner import run_days
    from mlops_assets.models.declaration import MODELS
    from mlops_assets.settings import ENGINE_GROUPS, load_settings

    settings = load_settings()
    days = [settings.start_date + datetime.timedelta(days=i) for i in range({days})]
    defs = build_definitions(settings)
    quiet = {{"loggers": {{"console": {{"config": {{"log_level": "ERROR"}}}}}}}}
    with dg.DagsterInstance.ephemeral() as instance:
        for job in ("medallion_daily", "features_daily"):
            runs = run_days(defs, days, instance, job_name=job, log_level="ERROR")
            assert [r.success for r in runs] == [True] * len(days), (job, runs)
        cutoff = datetime.datetime.combine(days[-1], datetime.time(), datetime.UTC)
        # Every declared model gets a champion: the day's scoring runs each one.
        for model in MODELS.values():
            k = keys(model)
            trained = defs.resolve_job_def(k.job("retrain_and_deploy")).execute_in_process(
                instance=instance,
                run_config={{
                    "ops": {{
                        # Chargebacks come within two days: a day-old event's label is known.
                        k.node(k.training_set): {{
                            "config": {{
                                "label_cutoff": cutoff.isoformat(),
                                "days": len(days),
                                "label_maturity_days": 1,
                            }}
                        }},
                        # A tiny lake: the model is promoted whatever its figures.
                        k.node(k.validation): {{"config": {{"mode": "dry_run"}}}},
                    }},
                    **quiet,
                }},
            )
            assert trained.success, model.name
        scored = run_days(
            defs, days[-1:], instance, job_name="serve_and_monitor", log_level="ERROR"
        )
        assert [r.success for r in scored] == [True], scored
    print("engines", {{g: settings.engine_for(g).value for g in ENGINE_GROUPS}})
    print("ran", len(days), "days")
    """
).format(days=DAYS)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, seconds: float, ready) -> dict:
    deadline = time.monotonic() + seconds
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                status = json.loads(response.read())
            if ready(status):
                return status
        except (OSError, ValueError) as error:
            # Not up yet, or a page still starting (an empty answer is not JSON).
            last = error
        time.sleep(1)
    raise AssertionError(f"{url} not ready after {seconds} s (last error: {last})")


@pytest.fixture()
def s3(tmp_path):
    """A SeaweedFS server with a bucket `lake`, its process group stopped afterwards."""
    from mlops_assets.stack.process import StackError
    from mlops_assets.stack.seaweedfs import scratch_s3, weed_binary

    try:
        weed_binary()
    except StackError as error:
        pytest.skip(str(error))
    with scratch_s3(tmp_path / "seaweedfs") as server:
        yield server


@pytest.fixture()
def cluster(tmp_path):
    env = {
        **os.environ,
        "SPARK_HOME": str(SPARK_CLASS.parent.parent),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(tmp_path / "logs"),
        "SPARK_WORKER_DIR": str(tmp_path / "work"),
        "PYSPARK_PYTHON": sys.executable,
    }
    port, ui, worker_ui = free_port(), free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    status_url = f"http://127.0.0.1:{ui}/json/"
    logs = [open(tmp_path / name, "w") for name in ("master.log", "worker.log")]  # noqa: SIM115
    processes = []
    try:
        processes.append(
            subprocess.Popen(
                [str(SPARK_CLASS), "org.apache.spark.deploy.master.Master"]
                + ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)],
                env=env,
                stdout=logs[0],
                stderr=subprocess.STDOUT,
            )
        )
        wait_for(status_url, 300, lambda s: s.get("status") == "ALIVE")
        processes.append(
            subprocess.Popen(
                [str(SPARK_CLASS), "org.apache.spark.deploy.worker.Worker", master_url]
                + ["--host", "127.0.0.1", "--cores", "2", "--memory", "1536m"]
                + ["--webui-port", str(worker_ui)],
                env=env,
                stdout=logs[1],
                stderr=subprocess.STDOUT,
            )
        )
        wait_for(status_url, 300, lambda s: s.get("aliveworkers", 0) >= 1)
        yield master_url, status_url, env
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


def test_the_daily_loop_runs_on_a_standalone_cluster(cluster, s3, tmp_path):
    from mlops_assets.simulate import Scenario, simulate

    master_url, status_url, spark_env = cluster
    data = tmp_path / "data"
    scenario = Scenario.demo(
        days=DAYS, transactions_per_day=400, n_cards=80, seed=9, label_delay_days=(1, 2)
    )
    manifests = simulate(scenario, data / "dev" / "landing")
    env = {k: v for k, v in spark_env.items() if not k.startswith(("MLOPS_", "DAGSTER_"))}
    env |= {
        "MLOPS_DATA_ROOT": str(data),
        "MLOPS_ENV": "dev",
        "MLOPS_ENGINE": "spark",
        "MLOPS_START_DATE": scenario.start_date.isoformat(),
        "MLOPS_SPARK_MASTER": master_url,
        # The lake on the object store: `s3a://` for the driver and the executors.
        **s3.environ(prefix="cluster"),
        # A two-core cluster and a tiny day: few shuffle and Delta snapshot tasks.
        "MLOPS_SPARK_CONF": json.dumps(
            {
                "spark.executor.memory": "1g",
                "spark.cores.max": "2",
                "spark.app.name": "parity",
                "spark.sql.shuffle.partitions": "4",
                "spark.databricks.delta.snapshotPartitions": "2",
            }
        ),
    }
    done = subprocess.run(
        [sys.executable, "-c", RUN],
        env=env,
        cwd=project_root(),
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # The cluster ran the work: the master lists the application, finished.
    status = wait_for(status_url, 60, lambda s: s.get("completedapps"))
    assert [app["name"] for app in status["completedapps"]] == ["parity"]
    assert status["completedapps"][0]["state"] == "FINISHED"
    settings = load_settings({"MLOPS_DATA_ROOT": str(data), **s3.environ(prefix="cluster")})
    catalog, options = Catalog(settings), settings.storage_options
    # Every table is on the store, none on the local disk.
    assert not (data / "dev" / "lake").exists()

    def table(layer: str, name: str) -> pl.DataFrame:
        uri = catalog.uri_for_read(TableRef(layer, name))
        assert uri.startswith(f"s3://{s3.bucket}/cluster/dev/")
        return scan_table(uri, storage_options=options).collect()

    silver = table("silver", "transactions")
    assert silver.height == sum(m.valid_transactions for m in manifests)
    assert silver["transaction_id"].is_duplicated().sum() == 0
    features = table("features", "card_behaviour")
    end = scenario.start_date + datetime.timedelta(days=DAYS)
    built_days = silver.filter(pl.col("event_date").is_between(scenario.start_date, end, "left"))
    assert features.height == built_days.height > 0
    assert table("gold", "merchant_category_daily").height > 0
    assert table("features", "merchant_risk").height > 0
    # The loop's last day: scored, its drift and profile computed by the cluster.
    assert '"monitoring": "spark"' in done.stdout.replace("'", '"')
    last = scenario.start_date + datetime.timedelta(days=DAYS - 1)
    log = table("serving", "inference_log").filter(pl.col("day") == last)
    assert log.height > 0
    drift = table("monitoring", "drift_metrics").filter(pl.col("day") == last)
    assert set(drift.get_column("baseline")) >= {"training"}
    assert drift.filter(pl.col("column") == "score").height >= 1
    profiles = table("monitoring", "profiles").filter(pl.col("day") == last)
    assert profiles.filter(pl.col("statistic") == "count").height > 0
