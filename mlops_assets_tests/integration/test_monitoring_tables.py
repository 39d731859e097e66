"""Tables written by sensors are assets: each alert appended is a materialization."""

import datetime

import dagster as dg
import polars as pl

from mlops_assets.defs.monitoring import (
    ALERTS_KEY,
    MonitoringResource,
    alert_on_run_failure,
    drift_monitor_sensor,
)
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.lakehouse.delta_io import scan_table, table_version, write_partition
from mlops_assets.monitoring.windows import DRIFT_TABLE_SCHEMA
from mlops_assets.settings import load_settings

DAY = datetime.date(2026, 1, 10)


def drift_day(day: datetime.date, drifted: int, columns: int = 4) -> pl.DataFrame:
    """Drift rows of one day: `drifted` of `columns` features drifted, the score did not."""
    names = [f"f{i}" for i in range(columns)] + ["score"]
    flags = [i < drifted for i in range(columns)] + [False]
    n = len(names)
    return pl.DataFrame(
        {
            "day": [day] * n,
            "model_version": ["1"] * n,
            "baseline": ["training"] * n,
            "column": names,
            "kind": ["numeric"] * n,
            "method": ["wasserstein"] * n,
            "score": [0.5 if f else 0.01 for f in flags],
            "threshold": [0.1] * n,
            "drifted": flags,
            "psi": [0.0] * n,
            "psi_level": ["stable"] * n,
            "reference_count": [1000] * n,
            "current_count": [1000] * n,
            "reference_nulls": [0] * n,
            "current_nulls": [0] * n,
        },
        schema=DRIFT_TABLE_SCHEMA,
    )


def test_alerts_of_the_drift_sensor_and_of_failed_runs_are_materializations(tmp_path):
    settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path / "data"), "MLOPS_ENV": "dev"})
    lakehouse = LakehouseResource.from_settings(settings)
    uri = settings.lake_root / "monitoring" / "drift_metrics"
    for offset in range(3):
        day = DAY + datetime.timedelta(days=offset)
        write_partition(uri, drift_day(day, drifted=3), {"day": day})
    resources = {"lakehouse": lakehouse, "monitoring": MonitoringResource()}
    alerts_uri = settings.lake_root / "monitoring" / "alerts"
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        sensor = drift_monitor_sensor(settings)
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = sensor(context)
        assert not result.run_requests  # the episode's labels are not mature yet
        event = instance.get_latest_materialization_event(ALERTS_KEY)
        meta = event.asset_materialization.metadata
        assert event.run_id == ""
        assert meta["kind"].value == "drift" and meta["rows_written"].value == 1
        # An append does not count the table: no `dagster/row_count` rather than a wrong one.
        if "dagster/row_count" in meta:
            assert meta["dagster/row_count"].value == pl.read_delta(str(alerts_uri)).height
        assert meta["delta_version"].value == table_version(alerts_uri)
        assert meta["dagster/uri"].value == str(alerts_uri)

        @dg.op
        def breaks():
            raise ValueError("bad input")

        @dg.job
        def failing():
            breaks()

        run = failing.execute_in_process(instance=instance, raise_on_error=False)
        assert not run.success
        [failure] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        with dg.build_run_status_sensor_context(
            sensor_name="alert_on_run_failure",
            dagster_instance=instance,
            dagster_run=run.dagster_run,
            dagster_event=failure.dagster_event,
            resources=resources,
        ) as status:
            alert_on_run_failure(status.for_run_failure())
        event = instance.get_latest_materialization_event(ALERTS_KEY)
        meta = event.asset_materialization.metadata
        assert meta["kind"].value == "run_failed" and meta["subject"].value == "failing"
        assert meta["delta_version"].value == table_version(alerts_uri)
    kinds = scan_table(alerts_uri).sort("at").collect().get_column("kind").to_list()
    assert kinds == ["drift", "run_failed"]
