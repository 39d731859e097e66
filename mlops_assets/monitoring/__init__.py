"""Monitoring statistics of the inference log: profiles, drift, performance, Evidently reports.

Pure functions on polars frames, no Dagster: the monitoring assets call them per window and
model version. `report` imports Evidently only when a report is written.
"""

from mlops_assets.monitoring.drift import (
    DEFAULT_DRIFT_SHARE,
    DEFAULT_THRESHOLDS,
    DRIFT_SCHEMA,
    DriftResult,
    DriftSummary,
    compute_drift,
    infer_kind,
    psi_level,
)
from mlops_assets.monitoring.performance import PERFORMANCE_SCHEMA, performance, performance_by
from mlops_assets.monitoring.profile import PROFILE_SCHEMA, profile
from mlops_assets.monitoring.report import drift_report_html, sample_rows

__all__ = [
    "DEFAULT_DRIFT_SHARE",
    "DEFAULT_THRESHOLDS",
    "DRIFT_SCHEMA",
    "PERFORMANCE_SCHEMA",
    "PROFILE_SCHEMA",
    "DriftResult",
    "DriftSummary",
    "compute_drift",
    "drift_report_html",
    "infer_kind",
    "performance",
    "performance_by",
    "profile",
    "psi_level",
    "sample_rows",
]
