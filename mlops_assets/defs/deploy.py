"""The CD trigger: per declared model, a sensor sending each new version to validation.

Each sensor requests the validation and promotion of its model's new versions:
`new_model_versions` for the fraud detector, `new_model_versions_<name>` for the others.
"""

import json

import dagster as dg

from mlops_assets.defs.jobs import MODEL_JOBS
from mlops_assets.defs.ml import keys
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.models.declaration import MODELS, ModelDeclaration, primary


def new_versions_sensor(model: ModelDeclaration) -> dg.SensorDefinition:
    """The CD sensor of a declared model (see `_new_versions`)."""
    k = keys(model)

    @dg.sensor(
        name=k.job("new_model_versions"),
        job=MODEL_JOBS[model.name]["deploy"],
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=(
            f"Watches the registry for new versions of {model.name} and requests their "
            "validation and promotion, once per version."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext, lakehouse: LakehouseResource):
        return _new_versions(context, lakehouse, model)

    return _sensor


def _new_versions(
    context: dg.SensorEvaluationContext, lakehouse: LakehouseResource, model: ModelDeclaration
):
    """Request a `deploy_model` run for every version registered since the last tick.

    Versions come from polling the registry and, when an MLflow server delivers registry
    webhooks to `mlops webhook serve`, from its verified inbox. The cursor holds the highest
    version seen and the last inbox delivery read, and each request's run key is the version,
    so no version is processed twice whichever way it was noticed. Versions validated by the
    run that trained them, or already carrying a validation result, are skipped with a log
    line.
    """
    from mlops_assets.models.deploy import VALIDATED_IN_RUN_TAG, lifecycle
    from mlops_assets.models.lifecycle import VALIDATION_TAG
    from mlops_assets.models.webhooks import Inbox

    settings = lakehouse.settings
    cycle = lifecycle(settings, model.name)
    k = keys(model)
    cursor = json.loads(context.cursor) if context.cursor else {}
    seen, inbox_seq = cursor.get("version"), cursor.get("inbox", 0)
    if seen is None:
        # First tick: versions up to the champion are history, not new work.
        from mlops_assets.models.lifecycle import CHAMPION

        seen = int(cycle.version_of(CHAMPION) or 0)
    pushed: set[int] = set()
    if settings.webhook_inbox_path.exists():
        deliveries = Inbox(settings.webhook_inbox_path).since(inbox_seq)
        for delivery in deliveries:
            inbox_seq = delivery.seq
            if (
                delivery.model == cycle.name
                and delivery.entity == "model_version"
                and delivery.action == "created"
                and delivery.version
            ):
                pushed.add(int(delivery.version))
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
                        k.node(k.validation): {"config": {"version": version}},
                        k.node(k.champion): {"config": {"version": version}},
                    }
                },
                tags={
                    "mlops/model": cycle.name,
                    "mlops/model_version": version,
                    "mlops/trigger": "webhook" if number in pushed else "registry",
                },
            )
        )
    newest = max([seen, *(int(v.version) for v in versions)])
    next_cursor = json.dumps({"version": newest, "inbox": inbox_seq})
    if not requests:
        return dg.SensorResult(
            skip_reason=f"no new version of {cycle.name} after version {seen}", cursor=next_cursor
        )
    return dg.SensorResult(run_requests=requests, cursor=next_cursor)


model_version_sensors = [new_versions_sensor(model) for model in MODELS.values()]
new_model_versions = model_version_sensors[list(MODELS).index(primary().name)]
