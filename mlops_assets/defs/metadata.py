"""Asset metadata a scientist wants to see, built from Delta write results."""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster._core.definitions.metadata import TableMetadataSet

from mlops_assets.lakehouse.delta_io import WriteResult


def table_metadata(result: WriteResult, table_name: str) -> dict[str, Any]:
    """The table's and the partition's row counts, Delta version, URI and column schema.

    `dagster/row_count` is the whole table's rows after the write and
    `dagster/partition_row_count` the rows of the partition written (partitioned writes
    only); a write that did not count the table's rows reports no `dagster/row_count`.

    Args:
        result: What the write did.
        table_name: The table (`layer/table`).
    """
    counted = result.table_rows >= 0
    return {
        **TableMetadataSet(
            table_name=table_name.replace("/", "."),
            row_count=result.table_rows if counted else None,
            partition_row_count=result.rows_written if result.partition else None,
            column_schema=dg.TableSchema(
                columns=[dg.TableColumn(name, kind) for name, kind in result.schema.items()]
            ),
        ),
        "dagster/uri": dg.MetadataValue.path(result.uri),
        "delta_version": result.version,
        "rows_written": result.rows_written,
        **({"table_rows": result.table_rows} if counted else {}),
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
