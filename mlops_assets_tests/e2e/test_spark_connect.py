"""The medallion, the features and a training set built through a Spark Connect server.

A real Spark Connect server from the pyspark distribution (`stack.spark_connect`) on a free
127.0.0.1 port, with the Delta jars; a client process with `MLOPS_SPARK_REMOTE` set runs the
daily jobs on the spark engine through it, then joins a training set on it. The tables equal
a polars build of the same landing days, and the training set equals the polars join. The
client runs in its own process: a Connect session switches pyspark into Connect mode for the
whole process, which the suite's classic sessions must not see. The server's process group is
stopped at the end.
"""

import datetime
import json
import os
import shutil
import subprocess
import sys

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.runner import run_days
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.settings import load_settings, project_root
from mlops_assets.simulate import Scenario, simulate
from mlops_assets.stack.process import group_alive
from mlops_assets.stack.spark_connect import scratch_connect_server

# A Connect server and two lakes built on a busy machine: beyond the suite's 600 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]

START = datetime.date(2026, 1, 1)
DAYS = [START + datetime.timedelta(days=i) for i in range(2)]
RUN_TIME_COLUMNS = ("_ingested_at", "quarantined_at")
TABLE_KEYS = {
    "silver/transactions": ["transaction_id"],
    "silver/labels": ["transaction_id"],
    "quarantine/silver_transactions": ["_source_file", "_line_number"],
    "gold/merchant_category_daily": ["event_date", "merchant_category"],
    "features/card_behaviour": ["card_id", "transaction_id"],
    "features/merchant_risk": ["merchant_id", "day"],
}

# The client: the daily jobs through the Connect server, then a training set joined on it.
CLIENT = """
import datetime, json, sys
import dagster as dg
import polars as pl
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.runner import run_days
from mlops_assets.defs.resources import SparkResource
from mlops_assets.features import spark_point_in_time as spark_pit
from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.lakehouse import spark_io
from mlops_assets.settings import load_settings

days = [datetime.date.fromisoformat(d) for d in sys.argv[1:]]
settings = load_settings()
defs = build_definitions(settings)
with dg.DagsterInstance.ephemeral() as instance:
    medallion = run_days(defs, days, instance, log_level="ERROR")
    features = run_days(defs, days, instance, job_name="features_daily", log_level="ERROR")
spark = SparkResource.from_settings(settings).session
lake = settings.lake_root
events = spark_io.read_table(spark, str(lake / "silver" / "transactions")).select(
    *FRAUD_SPEC.request_fields
)
tables = {
    name: spark_io.read_table(spark, str(lake / "features" / name))
    for name in ("card_behaviour", "merchant_risk")
}
rows = spark_pit.training_set(events, tables, FRAUD_SPEC)
pl.from_arrow(rows.toArrow()).write_parquet(sys.argv[0] + ".parquet")
print(json.dumps({
    "session": type(spark).__module__,
    "medallion": [r.success for r in medallion],
    "features": [r.success for r in features],
}))
"""


def build_polars_lake(root) -> None:
    settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev"})
    defs = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        assert all(r.success for r in run_days(defs, DAYS, instance, log_level="ERROR"))
        runs = run_days(defs, DAYS, instance, job_name="features_daily", log_level="ERROR")
        assert all(r.success for r in runs)


def read(lake, name: str) -> pl.DataFrame:
    frame = scan_table(lake / name).collect()
    return frame.drop([c for c in RUN_TIME_COLUMNS if c in frame.columns])


def test_medallion_and_training_set_through_spark_connect(tmp_path):
    polars_root, connect_root = tmp_path / "polars", tmp_path / "connect"
    scenario = Scenario.demo(
        days=len(DAYS), transactions_per_day=400, n_cards=80, seed=5, start_date=START
    )
    simulate(scenario, polars_root / "dev" / "landing")
    shutil.copytree(polars_root / "dev" / "landing", connect_root / "dev" / "landing")
    build_polars_lake(polars_root)

    jars = load_settings().spark_jars_dir
    with scratch_connect_server(tmp_path / "server", jars) as url:
        assert url.startswith("sc://127.0.0.1:")
        pid = int((tmp_path / "server" / "spark-connect.pid").read_text().split()[0])
        script = tmp_path / "client.py"
        script.write_text(CLIENT)
        env = {
            **os.environ,
            "MLOPS_DATA_ROOT": str(connect_root),
            "MLOPS_ENV": "dev",
            "MLOPS_ENGINE": "spark",
            "MLOPS_SPARK_REMOTE": url,
        }
        done = subprocess.run(
            [sys.executable, str(script), *[d.isoformat() for d in DAYS]],
            env=env,
            cwd=project_root(),
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, done.stderr[-4000:]
    assert not group_alive(pid)  # the server's whole process group is gone

    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["session"].startswith("pyspark.sql.connect")
    assert report["medallion"] == [True] * len(DAYS)
    assert report["features"] == [True] * len(DAYS)
    polars_lake, connect_lake = polars_root / "dev" / "lake", connect_root / "dev" / "lake"
    for name, keys in TABLE_KEYS.items():
        expected, actual = read(polars_lake, name), read(connect_lake, name)
        assert actual.schema == expected.schema, name
        assert_frame_equal(
            actual.sort(keys), expected.sort(keys), check_exact=False, rel_tol=1e-9, abs_tol=1e-9
        )

    # The training set joined through Connect equals the polars join of the same tables.
    from mlops_assets.features.spec import FRAUD_SPEC

    events = read(polars_lake, "silver/transactions").select(FRAUD_SPEC.request_fields)
    tables = {n: read(polars_lake, f"features/{n}") for n in ("card_behaviour", "merchant_risk")}
    expected = FRAUD_SPEC.training_set(events, tables)
    actual = pl.read_parquet(f"{script}.parquet")
    assert expected.height == events.height > 500
    assert_frame_equal(actual.sort("transaction_id"), expected.sort("transaction_id"))
