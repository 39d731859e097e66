"""Jobs of the daily loop and the model lifecycle, and the weekly retraining schedule."""

from __future__ import annotations

import dagster as dg

from mlops_assets.models.declaration import MODELS, ModelDeclaration, primary
from mlops_assets.settings import Settings

# The prediction summary (gold) reads the day's predictions: the serve run builds it, after
# scoring, and the refresh runs rebuild it with late chargebacks; ingestion does not.
PREDICTION_SUMMARY = dg.AssetKey(["gold", "prediction_summary"])
MEDALLION = dg.AssetSelection.groups(
    "bronze", "silver", "gold", "quarantine"
) - dg.AssetSelection.assets(PREDICTION_SUMMARY)

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


def model_jobs(model: ModelDeclaration) -> dict[str, dg.UnresolvedAssetJobDefinition]:
    """A declared model's jobs, by role: `training_set`, `train`, `deploy`, `retrain`.

    The fraud detector's are `training_set`, `train_model`, `deploy_model` and
    `retrain_and_deploy`; another model's carry its name (`train_model_<name>`, ...).
    """
    from mlops_assets.defs.ml import keys

    k = keys(model)
    train = dg.AssetSelection.assets(k.training_set, k.trained)
    deploy = dg.AssetSelection.assets(k.validation, k.champion)
    return {
        "training_set": dg.define_asset_job(
            name=k.job("training_set"),
            selection=dg.AssetSelection.assets(k.training_set),
            description=f"Build the point-in-time training set of {model.name}.",
        ),
        "train": dg.define_asset_job(
            name=k.job("train_model"),
            selection=train,
            description=(f"Build the training set, train {model.name} and register a new version."),
        ),
        "deploy": dg.define_asset_job(
            name=k.job("deploy_model"),
            selection=deploy,
            description=(
                f"Validate a registered version of {model.name} against its champion and "
                "promote it if it passes."
            ),
        ),
        "retrain": dg.define_asset_job(
            name=k.job("retrain_and_deploy"),
            selection=train | deploy,
            description=(
                f"Train, register, validate and promote {model.name} in one run (schedules "
                "and sensors)."
            ),
        ),
    }


online_job = dg.define_asset_job(
    name="online_publish",
    selection=dg.AssetSelection.groups("online"),
    description="Publish the latest feature rows per key to the online store.",
)

MODEL_JOBS = {name: model_jobs(model) for name, model in MODELS.items()}
_PRIMARY = MODEL_JOBS[primary().name]
training_set_job = _PRIMARY["training_set"]
train_job = _PRIMARY["train"]
deploy_job = _PRIMARY["deploy"]
retrain_job = _PRIMARY["retrain"]
# Every model's jobs, for the definitions.
ml_jobs = [job for jobs in MODEL_JOBS.values() for job in jobs.values()]


def weekly_retrain_schedule(
    settings: Settings, model: ModelDeclaration | None = None
) -> dg.ScheduleDefinition:
    """Retrain, validate and promote a model weekly (Monday 03:00 UTC); on by default in prod.

    Drift triggers retraining between these runs; the schedule retrains regardless, so a
    model never ages past a week in production. One schedule per declared model:
    `weekly_retrain` for the fraud detector, `weekly_retrain_<name>` for the others.
    """
    model = model or primary()
    from mlops_assets.defs.ml import keys

    return dg.ScheduleDefinition(
        name=keys(model).job("weekly_retrain"),
        job=MODEL_JOBS[model.name]["retrain"],
        cron_schedule=settings.cron("weekly_retrain"),
        execution_timezone="UTC",
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if settings.automation_on
            else dg.DefaultScheduleStatus.STOPPED
        ),
        tags={"mlops/trigger": "weekly", "mlops/model": model.name},
        description=(
            f"Weekly retraining of {model.name} regardless of drift (on by default in prod)."
        ),
    )
