"""The Dagster definitions of the active environment (MLOPS_ENV)."""

from __future__ import annotations

import os

import dagster as dg

from mlops_assets.defs.bronze import bronze_assets
from mlops_assets.defs.deploy import new_model_versions
from mlops_assets.defs.features import feature_assets
from mlops_assets.defs.gold import gold_assets
from mlops_assets.defs.jobs import (
    deploy_job,
    features_job,
    features_schedule,
    medallion_job,
    medallion_schedule,
    online_job,
    refresh_job,
    retrain_job,
    train_job,
    training_set_job,
    weekly_retrain_schedule,
)
from mlops_assets.defs.ml import ml_assets
from mlops_assets.defs.monitoring import (
    MonitoringResource,
    alert_on_run_failure,
    drift_monitor_sensor,
    monitoring_assets,
)
from mlops_assets.defs.online import online_assets
from mlops_assets.defs.resources import LakehouseResource, SparkResource
from mlops_assets.defs.serving import serving_assets, serving_jobs, serving_sensors
from mlops_assets.defs.silver import silver_assets
from mlops_assets.settings import Settings, load_settings


def build_definitions(
    settings: Settings | None = None, monitoring: MonitoringResource | None = None
) -> dg.Definitions:
    """Assemble assets, checks, jobs, schedules and resources for an environment.

    Args:
        settings: The environment (default: from the process environment).
        monitoring: Drift, performance and retraining thresholds (default: the resource's
            defaults, alerts posted to `MLOPS_ALERT_WEBHOOK_URL` when set).
    """
    settings = settings or load_settings()
    monitoring = monitoring or MonitoringResource(
        alert_webhook_url=os.environ.get("MLOPS_ALERT_WEBHOOK_URL", "")
    )
    return dg.Definitions(
        assets=[
            *bronze_assets,
            *silver_assets,
            *gold_assets,
            *feature_assets,
            *online_assets,
            *ml_assets,
            *serving_assets,
            *monitoring_assets,
        ],
        jobs=[
            medallion_job,
            features_job,
            refresh_job,
            online_job,
            training_set_job,
            train_job,
            deploy_job,
            retrain_job,
            *serving_jobs,
        ],
        schedules=[medallion_schedule, features_schedule, weekly_retrain_schedule(settings.env)],
        sensors=[
            new_model_versions,
            *serving_sensors,
            drift_monitor_sensor(settings.env),
            alert_on_run_failure,
        ],
        resources={
            "lakehouse": LakehouseResource.from_settings(settings),
            "monitoring": monitoring,
            "spark": SparkResource.from_settings(settings),
        },
    )


defs = build_definitions()
