"""The monitoring assets on Spark write the polars engine's drift and profile rows.

One small lake with a champion and two scored days (the second scored twice, so the window
keeps the latest batch prediction of each transaction); `monitoring/drift_metrics` and
`monitoring/profiles` of the second day are materialized on polars, kept, then again with
`MLOPS_ENGINE_MONITORING=spark` (local[2]) over the same lake, and the tables compared.
"""

import datetime

import dagster as dg
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.runner import run_days
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.settings import load_settings
from mlops_assets.simulate import Scenario, simulate
from mlops_assets_tests.integration.conftest import QUIET, THRESHOLDS, build_lake

# A lake, a model and two engines on a loaded machine: longer than the default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

START = datetime.date(2026, 2, 1)
DAYS = [START + datetime.timedelta(days=i) for i in range(9)]
INGESTED, SCORED = DAYS[:8], DAYS[6:8]
DRIFT = dg.AssetKey(["monitoring", "drift_metrics"])
PROFILES = dg.AssetKey(["monitoring", "profiles"])


def materialize(defs, instance, keys, day):
    name = "test_" + "_".join("_".join(k.path) for k in keys)
    job = dg.define_asset_job(name, selection=keys)
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    return merged.resolve_job_def(name).execute_in_process(
        instance=instance, partition_key=day.isoformat(), run_config=QUIET
    )


def score(defs, instance, day):
    runs = run_days(
        defs,
        [day],
        instance,
        selection=[dg.AssetKey(["serving", "batch_predictions"])],
        job_name="serve_and_monitor",
        log_level="ERROR",
    )
    assert all(r.success for r in runs)


def sorted_table(root, name: str, keys: list[str]) -> pl.DataFrame:
    return scan_table(root / "monitoring" / name).collect().sort(keys)


def test_drift_and_profiles_on_spark_equal_polars(tmp_path):
    environ = {
        "MLOPS_DATA_ROOT": str(tmp_path),
        "MLOPS_ENV": "dev",
        "MLOPS_SPARK_MASTER": "local[2]",
    }
    settings = load_settings(environ)
    simulate(
        Scenario.clean(
            days=len(DAYS),
            transactions_per_day=3_000,
            seed=23,
            start_date=START,
            label_delay_days=(1, 3),
        ),
        settings.landing_root,
    )
    defs = build_definitions(settings)
    day = SCORED[-1]
    with dg.DagsterInstance.ephemeral() as instance:
        build_lake(defs, instance, INGESTED)
        cutoff = datetime.datetime.combine(DAYS[8], datetime.time(), datetime.UTC)
        trained = defs.resolve_job_def("retrain_and_deploy").execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={
                "ops": {
                    "ml__training_set": {
                        "config": {"label_cutoff": cutoff.isoformat(), "days": len(INGESTED)}
                    },
                    "ml__fraud_model": {"config": {"seed": 7}},
                    "ml__model_validation": {"config": {"mode": "enabled", **THRESHOLDS}},
                },
                **QUIET,
            },
        )
        assert trained.success
        for scored in [*SCORED, day]:
            score(defs, instance, scored)
        assert materialize(defs, instance, [DRIFT, PROFILES], day).success
        drift_keys = ["model_version", "baseline", "column"]
        profile_keys = ["model_version", "column", "statistic", "category"]
        root = settings.lake_root
        polars_drift = sorted_table(root, "drift_metrics", drift_keys)
        polars_profiles = sorted_table(root, "profiles", profile_keys)

        spark_defs = build_definitions(
            load_settings({**environ, "MLOPS_ENGINE_MONITORING": "spark"})
        )
        result = materialize(spark_defs, instance, [DRIFT, PROFILES], day)
        assert result.success
        drift_event = result.asset_materializations_for_node("monitoring__drift_metrics")[0]
        assert drift_event.metadata["engine"].value == "spark"
        spark_drift = sorted_table(root, "drift_metrics", drift_keys)
        spark_profiles = sorted_table(root, "profiles", profile_keys)

    # Both baselines (training and the previous day) were compared, on both engines.
    assert set(polars_drift.get_column("baseline")) == {"training", "previous_day"}
    numbers = ["score", "psi"]
    assert_frame_equal(spark_drift.drop(numbers), polars_drift.drop(numbers))
    for name in numbers:
        np.testing.assert_allclose(
            spark_drift.get_column(name).to_numpy(),
            polars_drift.get_column(name).to_numpy(),
            rtol=1e-9,
            atol=1e-12,
        )
    assert_frame_equal(spark_profiles.drop("value"), polars_profiles.drop("value"))
    np.testing.assert_allclose(
        spark_profiles.get_column("value").to_numpy(),
        polars_profiles.get_column("value").to_numpy(),
        rtol=1e-9,
        atol=1e-12,
    )
