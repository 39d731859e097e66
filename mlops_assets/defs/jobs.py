"""Jobs of the daily loop and the model lifecycle, and the weekly retraining schedule."""

from __future__ import annotations

import dagster as dg

from mlops_assets.settings import Settings

MEDALLION = dg.AssetSelection.groups("bronze", "silver", "gold", "quarantine")

# The daily loop's runs are re-executed (from the failure) by the daemon when the run itself
# died, e.g. its process was killed; a failed step or a failing blocking check is not retried
# (it fails the same way again) but alerted.
RETRY_IF_THE_RUN_DIED = {
    "dagster/max_retries": "2",
    "dagster/retry_on_asset_or_op_failure": "false",
}

medallion_job = dg.define_asset_job(
    name="medallion_daily",
    selection=MEDALLION,
    description="Ingest a landing day into bronze, validate it into silver, refresh gold.",
    tags=RETRY_IF_THE_RUN_DIED,
)

FEATURES = dg.AssetSelection.groups("features")

features_job = dg.define_asset_job(
    name="features_daily",
    selection=FEATURES,
    description="Refresh the day's feature rows (card behaviour, merchant daily and risk).",
)

# Runs that share this tag run one at a time, in the order they were requested (dagster.yaml).
LANE_TAG = "mlops/lane"

refresh_job = dg.define_asset_job(
    name="refresh_event_days",
    selection=dg.AssetSelection.groups("gold", "features"),
    description=(
        "Refresh an event day's gold and feature rows, with the late events and chargebacks "
        "landed since it was last built."
    ),
    tags={LANE_TAG: "event_days", **RETRY_IF_THE_RUN_DIED},
)


training_set_job = dg.define_asset_job(
    name="training_set",
    selection=dg.AssetSelection.assets(["ml", "training_set"]),
    description="Build the point-in-time training set of the fraud detector.",
)

online_job = dg.define_asset_job(
    name="online_publish",
    selection=dg.AssetSelection.groups("online"),
    description="Publish the latest feature rows per key to the online store.",
)

TRAIN = dg.AssetSelection.assets(["ml", "training_set"], ["ml", "fraud_model"])
DEPLOY = dg.AssetSelection.assets(["ml", "model_validation"], ["ml", "champion"])

train_job = dg.define_asset_job(
    name="train_model",
    selection=TRAIN,
    description="Build the training set, train the fraud detector and register a new version.",
)

deploy_job = dg.define_asset_job(
    name="deploy_model",
    selection=DEPLOY,
    description="Validate a registered version against the champion and promote it if it passes.",
)

retrain_job = dg.define_asset_job(
    name="retrain_and_deploy",
    selection=TRAIN | DEPLOY,
    description="Train, register, validate and promote in one run (schedules and sensors).",
)


def weekly_retrain_schedule(settings: Settings) -> dg.ScheduleDefinition:
    """Retrain, validate and promote weekly (Monday 03:00 UTC); running by default in prod.

    Drift triggers retraining between these runs; the schedule retrains regardless, so a
    model never ages past a week in production.
    """
    return dg.ScheduleDefinition(
        name="weekly_retrain",
        job=retrain_job,
        cron_schedule=settings.cron("weekly_retrain"),
        execution_timezone="UTC",
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if settings.automation_on
            else dg.DefaultScheduleStatus.STOPPED
        ),
        tags={"mlops/trigger": "weekly"},
        description="Weekly retraining regardless of drift (on by default in prod).",
    )
