"""The Dagster definitions of the active environment (MLOPS_ENV)."""

from __future__ import annotations

import json

import dagster as dg

from mlops_assets.defs.automation import (
    medallion_schedule,
    refresh_schedule,
    run_watchdog,
    sensor_status,
    serve_and_monitor_job,
    serve_schedule,
)
from mlops_assets.defs.bronze import bronze_assets
from mlops_assets.defs.catalog import catalogued_definitions
from mlops_assets.defs.dashboard import dashboard_assets
from mlops_assets.defs.deploy import model_version_sensors
from mlops_assets.defs.features import feature_assets
from mlops_assets.defs.gold import gold_assets
from mlops_assets.defs.jobs import (
    features_job,
    medallion_job,
    ml_jobs,
    online_job,
    refresh_job,
    weekly_retrain_schedule,
)
from mlops_assets.defs.ml import ml_assets, model_audit_spec
from mlops_assets.defs.model_monitoring import other_models_monitoring_assets
from mlops_assets.defs.monitoring import (
    MonitoringResource,
    alert_on_run_failure,
    drift_monitor_sensor,
    monitoring_assets,
    monitoring_specs,
)
from mlops_assets.defs.online import online_assets
from mlops_assets.defs.prediction_summary import prediction_summary_assets
from mlops_assets.defs.resources import LakehouseResource, SparkResource
from mlops_assets.defs.serving import (
    serving_assets,
    serving_jobs,
    serving_sensors,
    serving_specs,
)
from mlops_assets.defs.silver import silver_assets
from mlops_assets.defs.sources import landing_sources
from mlops_assets.models.declaration import MODELS
from mlops_assets.settings import Settings, SettingsError, load_settings


def build_definitions(
    settings: Settings | None = None, monitoring: MonitoringResource | None = None
) -> dg.Definitions:
    """Assemble assets, checks, jobs, schedules and resources for an environment.

    Args:
        settings: The environment (default: from the process environment).
        monitoring: Drift, performance and retraining thresholds (default: the resource's
            defaults with the settings' `monitoring` overrides, alerts posted to
            the settings' `alert_webhook_url` when set).
    """
    settings = settings or load_settings()
    unknown = sorted(set(settings.monitoring) - set(MonitoringResource.model_fields))
    if unknown:
        raise SettingsError(
            f"MLOPS_MONITORING names unknown thresholds {', '.join(unknown)}; known are "
            f"{', '.join(sorted(MonitoringResource.model_fields))}"
        )
    if monitoring is None:
        import pydantic

        try:
            monitoring = MonitoringResource(
                **{
                    "alert_webhook_url": settings.alert_webhook_url,
                    **settings.monitoring,
                }
            )
        except pydantic.ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
            )
            raise SettingsError(
                f"MLOPS_MONITORING={json.dumps(settings.monitoring)} has bad thresholds: {problems}"
            ) from None
    definitions = dg.Definitions(
        assets=[
            *landing_sources(settings),
            *bronze_assets(settings),
            *silver_assets(settings),
            *gold_assets(settings),
            *prediction_summary_assets(settings),
            *feature_assets(settings),
            *online_assets,
            *ml_assets,
            model_audit_spec,
            *serving_assets(settings),
            *serving_specs,
            *monitoring_assets(settings),
            *other_models_monitoring_assets(settings),
            *monitoring_specs,
            *dashboard_assets,
        ],
        jobs=[
            medallion_job,
            features_job,
            refresh_job,
            online_job,
            *ml_jobs,
            serve_and_monitor_job,
            *serving_jobs,
        ],
        schedules=[
            medallion_schedule(settings),
            refresh_schedule(settings),
            serve_schedule(settings, monitoring.label_maturity_days),
            *(weekly_retrain_schedule(settings, model) for model in MODELS.values()),
        ],
        sensors=[
            *(tuned(sensor, settings) for sensor in (*model_version_sensors, *serving_sensors)),
            drift_monitor_sensor(settings),
            alert_on_run_failure,
            run_watchdog(settings),
        ],
        # One process per run: steps run in the run's process, which saves a Python start
        # and a definitions import per step (about 5-10 s here) for the small daily runs.
        executor=dg.in_process_executor,
        resources={
            "lakehouse": LakehouseResource.from_settings(settings),
            "monitoring": monitoring,
            "spark": SparkResource.from_settings(settings),
        },
    )
    # Column schemas, code references and freshness policies (defs/catalog.py).
    return catalogued_definitions(definitions)


def tuned(sensor: dg.SensorDefinition, settings: Settings) -> dg.SensorDefinition:
    """A polling sensor with the environment's default status and interval (settings).

    Where the stream worker scores landed files, the `landed_transactions` sensor stays off:
    one scorer per environment.
    """
    return dg.sensor(
        name=sensor.name,
        job=sensor.job,
        minimum_interval_seconds=(
            settings.sensor_interval_seconds or sensor.minimum_interval_seconds
        ),
        default_status=(
            dg.DefaultSensorStatus.STOPPED
            if sensor.name == "landed_transactions" and settings.stream_worker
            else sensor_status(settings)
        ),
        description=sensor.description,
    )(sensor._raw_fn)  # the decorated function, with its resource parameters


def _location_definitions() -> dg.Definitions:
    """The code location's definitions, refused on another environment's instance.

    The webserver and the daemon of one environment never run the code configured for
    another: with `DAGSTER_HOME` set, the instance's environment stamp must be this one's.
    """
    from mlops_assets.defs.runner import check_dagster_home

    settings = load_settings()
    check_dagster_home(settings.env)
    return build_definitions(settings)


defs = _location_definitions()
