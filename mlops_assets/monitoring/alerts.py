"""Alerts: drift episodes, retraining requests and failed runs, kept in Delta and posted out.

Every alert is appended to the `monitoring/alerts` table. When a webhook URL is configured
(`MLOPS_ALERT_WEBHOOK_URL`), the alert is also POSTed there as JSON; whether that worked is
recorded with the alert, so a failing receiver is visible and no alert is lost.
"""

from __future__ import annotations

import datetime
import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import WriteResult, append_table, scan_table, table_exists

ALERTS = TableRef("monitoring", "alerts")
KINDS = ("drift", "performance", "retrain_requested", "run_failed", "check_failed")
SEVERITIES = ("info", "warning", "error")

SCHEMA = {
    "at": pl.Datetime("us", "UTC"),
    "env": pl.String,
    "kind": pl.String,
    "severity": pl.String,
    "subject": pl.String,
    "window_day": pl.Date,
    "model_version": pl.String,
    "message": pl.String,
    "details": pl.String,
    "posted_to": pl.String,
    "post_status": pl.String,
}


@dataclass(frozen=True)
class Alert:
    """One alert.

    Attributes:
        kind: One of `KINDS`.
        severity: One of `SEVERITIES`.
        subject: What it is about (an asset, a job, a model).
        message: One line for people.
        env: Environment.
        window_day: The monitoring window concerned, if any.
        model_version: The model version concerned, if any.
        details: Numbers and context.
    """

    kind: str
    severity: str
    subject: str
    message: str
    env: str
    window_day: datetime.date | None = None
    model_version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    at: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"alert kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"alert severity {self.severity!r} is not one of {', '.join(SEVERITIES)}"
            )

    def to_json(self) -> dict[str, Any]:
        """The alert as the JSON body posted to the webhook."""
        data = asdict(self)
        data["at"] = self.at.isoformat()
        data["window_day"] = self.window_day.isoformat() if self.window_day else None
        return data


def post(url: str, alert: Alert, timeout: float = 5.0) -> str:
    """POST the alert as JSON; the outcome as text (`200`, `HTTP 500`, `error: ...`)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(alert.to_json(), default=str).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return str(response.status)
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return f"error: {error}"


@dataclass(frozen=True)
class Raised:
    """What raising an alert did.

    Attributes:
        status: The post's outcome, None when no webhook is configured.
        written: The append to the alerts table (its Delta version, one row written).
    """

    status: str | None
    written: WriteResult


def raise_alert(uri: str | Path, alert: Alert, webhook_url: str | None = None) -> Raised:
    """Post the alert (when a URL is given) and append it to the alerts table.

    Returns:
        The post's outcome and the table write.
    """
    status = post(webhook_url, alert) if webhook_url else None
    row = asdict(alert)
    row["details"] = json.dumps(alert.details, default=str, sort_keys=True)
    row["posted_to"] = webhook_url
    row["post_status"] = status
    written = append_table(
        uri, pl.DataFrame([row], schema=SCHEMA), table=str(ALERTS), count_rows=False
    )
    return Raised(status=status, written=written)


def alerts(uri: str | Path) -> pl.DataFrame:
    """Every alert, oldest first; empty when none was raised."""
    if not table_exists(uri):
        return pl.DataFrame(schema=SCHEMA)
    return scan_table(uri).sort("at").collect()
