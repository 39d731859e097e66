"""The monitoring dashboard asset: `data/<env>/monitoring/dashboard.html`, linked in the UI."""

from typing import Any

import dagster as dg
import polars as pl

from mlops_assets.defs.jobs import PREDICTION_SUMMARY as PREDICTION_SUMMARY_KEY
from mlops_assets.defs.metadata import ALERTS_KEY
from mlops_assets.defs.monitoring import DRIFT, GROUP, PERFORMANCE, MonitoringResource
from mlops_assets.defs.prediction_summary import PREDICTION_SUMMARY
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.store import TableStore
from mlops_assets.models.audit import AUDIT
from mlops_assets.monitoring.alerts import ALERTS

OWNERS = ["team:ml-platform"]
DASHBOARD_KEY = dg.AssetKey(["monitoring", "dashboard"])


def dashboard_path(lakehouse: LakehouseResource):
    """Where the page goes: under the environment's local data root, even with the lake on S3."""
    return lakehouse.settings.env_root / "monitoring" / "dashboard.html"


def _read(
    store: TableStore, table: TableRef, model: str | None = None, column: str = ""
) -> tuple[pl.DataFrame | None, int | None]:
    """A table at its current version (None when it does not exist yet), and that version."""
    version = store.version(table)
    if version is None:
        return None, None
    frame = store.scan(table, version=version)
    rows = store.to_polars(frame)
    if model is not None:
        rows = rows.filter(pl.col(column) == model)
    return rows, version


@dg.asset(
    key=DASHBOARD_KEY,
    deps=[
        dg.AssetKey(["monitoring", "drift_metrics"]),
        dg.AssetKey(["monitoring", "performance"]),
        ALERTS_KEY,
        PREDICTION_SUMMARY_KEY,
        dg.AssetKey(["ml", "model_audit"]),
    ],
    group_name="monitoring",
    owners=OWNERS,
    kinds={"plotly", "html"},
    code_version="dashboard-1",
    description=(
        "One HTML page of the environment's monitoring over days: drifted feature share, "
        "prediction drift, PR-AUC as labels mature, volumes scored, flagged and fraud caught "
        "and missed, alerts, and the champion's history. Written to "
        "`data/<env>/monitoring/dashboard.html` with plotly.js inlined: it opens from disk "
        "with nothing fetched from the network. The materialization links to it."
    ),
)
def monitoring_dashboard(
    context: dg.AssetExecutionContext,
    lakehouse: LakehouseResource,
    monitoring: MonitoringResource,
) -> dg.MaterializeResult:
    """Read the monitoring tables of the primary model and write the dashboard page."""
    from mlops_assets.models.lifecycle import model_name
    from mlops_assets.monitoring.dashboard import DashboardData, write_dashboard

    store = lakehouse.store(GROUP)
    model = model_name(lakehouse.env)
    drift, drift_version = _read(store, DRIFT)
    performance, performance_version = _read(store, PERFORMANCE)
    summary, summary_version = _read(store, PREDICTION_SUMMARY, model, "model_name")
    alerts, alerts_version = _read(store, ALERTS)
    audit, audit_version = _read(store, AUDIT, model, "model")
    data = DashboardData(
        env=lakehouse.env,
        drift=drift,
        performance=performance,
        summary=summary,
        alerts=alerts,
        audit=audit,
        thresholds=monitoring.thresholds(),
        model=model,
        sources={
            str(DRIFT): drift_version,
            str(PERFORMANCE): performance_version,
            str(PREDICTION_SUMMARY): summary_version,
            str(ALERTS): alerts_version,
            str(AUDIT): audit_version,
        },
    )
    page = write_dashboard(dashboard_path(lakehouse), data)
    if page.empty:
        context.log.info(f"plots without data yet: {', '.join(page.empty)}")
    metadata: dict[str, Any] = {
        "dashboard": dg.MetadataValue.url(page.path.as_uri()),
        "path": dg.MetadataValue.path(str(page.path)),
        "dagster/uri": dg.MetadataValue.path(str(page.path)),
        "plots": dg.MetadataValue.json(list(page.titles)),
        "plots_without_data": dg.MetadataValue.json(list(page.empty)),
        "bytes": page.size,
        "model": model,
        "tables_read": dg.MetadataValue.json(
            {name: version for name, version in data.sources.items()}
        ),
    }
    if page.days is not None:
        metadata["first_day"] = page.days[0].isoformat()
        metadata["last_day"] = page.days[1].isoformat()
    return dg.MaterializeResult(metadata=metadata)


dashboard_assets = [monitoring_dashboard]
