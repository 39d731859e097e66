"""The model audit table: every validation, promotion, refusal and rollback, as Delta rows.

The registry's tags say where each version stands now; the audit table says how it got there:
who moved which version, when, why, with which verdict and numbers. Rows are only ever
appended, one commit per event, so the table's own history is the trail.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import append_table, scan_table, table_exists

AUDIT = TableRef("ml", "model_audit")
ACTIONS = ("registered", "validated", "refused", "promoted", "rolled_back")

SCHEMA = {
    "at": pl.Datetime("us", "UTC"),
    "env": pl.String,
    "model": pl.String,
    "version": pl.String,
    "action": pl.String,
    "who": pl.String,
    "why": pl.String,
    "passed": pl.Boolean,
    "mode": pl.String,
    "champion_before": pl.String,
    "champion_after": pl.String,
    "metrics": pl.String,
    "details": pl.String,
    "dagster_run_id": pl.String,
}


@dataclass(frozen=True)
class AuditEvent:
    """One lifecycle event of a model version.

    Attributes:
        model: Registered model name.
        version: The version the event is about.
        action: One of `ACTIONS`.
        who: A person (user name) or a Dagster run (`dagster run <id>`).
        why: The reason given.
        passed: The validation verdict (validations and refusals), else None.
        mode: The validation mode in force, when one applies.
        champion_before: The champion version before the event.
        champion_after: The champion version after it.
        metrics: Figures behind the event (hold-out metrics, champion's metrics).
        details: Anything else worth keeping (failed checks, ...).
        dagster_run_id: The Dagster run that did it, if any.
    """

    model: str
    version: str
    action: str
    who: str
    why: str
    env: str
    passed: bool | None = None
    mode: str | None = None
    champion_before: str | None = None
    champion_after: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    dagster_run_id: str | None = None
    at: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"audit action {self.action!r} is not one of {', '.join(ACTIONS)}")


def record(uri: str | Path, event: AuditEvent) -> int:
    """Append one event to the audit table; returns the table version written."""
    row = asdict(event)
    row["metrics"] = json.dumps(event.metrics, default=str, sort_keys=True)
    row["details"] = json.dumps(event.details, default=str, sort_keys=True)
    frame = pl.DataFrame([row], schema=SCHEMA)
    return append_table(uri, frame, table=str(AUDIT), count_rows=False).version


def history(uri: str | Path, model: str | None = None) -> pl.DataFrame:
    """The audit rows, oldest first, of one model or all; empty when nothing was recorded."""
    if not table_exists(uri):
        return pl.DataFrame(schema=SCHEMA)
    rows = scan_table(uri)
    if model is not None:
        rows = rows.filter(pl.col("model") == model)
    return rows.sort("at").collect()
