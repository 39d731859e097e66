"""The CD trigger: a sensor that sends each new registered version to validation and promotion."""

import json

import dagster as dg

from mlops_assets.defs.jobs import deploy_job
from mlops_assets.defs.resources import LakehouseResource


@dg.sensor(
    job=deploy_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Watches the registry for new versions of the fraud detector and requests their "
        "validation and promotion, once per version."
    ),
)
def new_model_versions(context: dg.SensorEvaluationContext, lakehouse: LakehouseResource):
    """Request a `deploy_model` run for every version registered since the last tick.

    The cursor is the highest version seen, and each request's run key is the version, so no
    version is processed twice. Versions validated by the run that trained them, or already
    carrying a validation result, are skipped with a log line.
    """
    from mlops_assets.models.deploy import VALIDATED_IN_RUN_TAG, lifecycle
    from mlops_assets.models.lifecycle import VALIDATION_TAG

    cycle = lifecycle(lakehouse.settings)
    seen = json.loads(context.cursor)["version"] if context.cursor else 0
    versions = sorted(
        cycle.client.search_model_versions(f"name = '{cycle.name}'"), key=lambda v: int(v.version)
    )
    requests = []
    for found in versions:
        number = int(found.version)
        if number <= seen:
            continue
        if VALIDATED_IN_RUN_TAG in found.tags or VALIDATION_TAG in found.tags:
            context.log.info(f"{cycle.name} version {number} is validated elsewhere: skipped")
            continue
        version = str(number)
        requests.append(
            dg.RunRequest(
                run_key=f"{cycle.name}/{version}",
                run_config={
                    "ops": {
                        "ml__model_validation": {"config": {"version": version}},
                        "ml__champion": {"config": {"version": version}},
                    }
                },
                tags={"mlops/model": cycle.name, "mlops/model_version": version},
            )
        )
    newest = max([seen, *(int(v.version) for v in versions)])
    if not requests:
        return dg.SkipReason(f"no new version of {cycle.name} after version {seen}")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps({"version": newest}))
