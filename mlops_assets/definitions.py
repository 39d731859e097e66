"""The Dagster definitions of the active environment (MLOPS_ENV)."""

from __future__ import annotations

import dagster as dg

from mlops_assets.defs.bronze import bronze_assets
from mlops_assets.defs.features import feature_assets
from mlops_assets.defs.gold import gold_assets
from mlops_assets.defs.jobs import (
    features_job,
    features_schedule,
    medallion_job,
    medallion_schedule,
    online_job,
    training_set_job,
)
from mlops_assets.defs.ml import ml_assets
from mlops_assets.defs.online import online_assets
from mlops_assets.defs.resources import LakehouseResource, SparkResource
from mlops_assets.defs.silver import silver_assets
from mlops_assets.settings import Settings, load_settings


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Assemble assets, checks, jobs, schedules and resources for an environment."""
    settings = settings or load_settings()
    return dg.Definitions(
        assets=[
            *bronze_assets,
            *silver_assets,
            *gold_assets,
            *feature_assets,
            *online_assets,
            *ml_assets,
        ],
        jobs=[medallion_job, features_job, online_job, training_set_job],
        schedules=[medallion_schedule, features_schedule],
        resources={
            "lakehouse": LakehouseResource.from_settings(settings),
            "spark": SparkResource.from_settings(settings),
        },
    )


defs = build_definitions()
