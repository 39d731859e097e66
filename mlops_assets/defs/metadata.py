"""Asset metadata a scientist wants to see, built from Delta write results."""

from __future__ import annotations

from typing import Any

import dagster as dg

from mlops_assets.lakehouse.delta_io import WriteResult


def table_metadata(result: WriteResult, table_name: str) -> dict[str, Any]:
    """Row count, Delta version, table URI and column schema of a write."""
    return {
        "dagster/row_count": result.rows_written,
        "dagster/table_name": table_name.replace("/", "."),
        "dagster/uri": dg.MetadataValue.path(result.uri),
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name, kind) for name, kind in result.schema.items()]
        ),
        "delta_version": result.version,
        "table_rows": result.table_rows,
        "partition": dg.MetadataValue.json(result.partition),
        **(
            {"added_columns": dg.MetadataValue.json(list(result.added_columns))}
            if result.added_columns
            else {}
        ),
    }


ALERTS_KEY = dg.AssetKey(["monitoring", "alerts"])


def alert_materialization(alert: Any, raised: Any) -> dg.AssetMaterialization:
    """The materialization of `monitoring/alerts` that records one raised alert.

    Args:
        alert: The `monitoring.alerts.Alert` raised.
        raised: What `monitoring.alerts.raise_alert` returned (the append, the webhook status).
    """
    from mlops_assets.monitoring.alerts import ALERTS

    return dg.AssetMaterialization(
        asset_key=ALERTS_KEY,
        metadata={
            **table_metadata(raised.written, str(ALERTS)),
            "kind": alert.kind,
            "severity": alert.severity,
            "subject": alert.subject,
            "post_status": raised.status or "",
        },
    )
