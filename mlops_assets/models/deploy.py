"""Continuous deployment of model versions: validate a challenger, promote it, roll back.

Each step reads and writes the registry through `Lifecycle` and appends what happened to the
audit table, so assets, sensors and the `mlops model` command leave the same trail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from mlops_assets.features.spec import FRAUD_SPEC, FeatureSpec
from mlops_assets.lakehouse.catalog import Catalog
from mlops_assets.models.audit import AUDIT, AuditEvent, record
from mlops_assets.models.lifecycle import (
    CHAMPION,
    VALIDATION_TAG,
    Lifecycle,
    LifecycleError,
    Move,
    model_name,
)
from mlops_assets.models.validation import (
    Check,
    ValidationPolicy,
    ValidationResult,
    validate,
)
from mlops_assets.settings import Settings, use_mlflow_store

# Tag on a version whose own Dagster run validates it: the CD sensor leaves it alone.
VALIDATED_IN_RUN_TAG = "mlops.validated_in_run"
# The request fields the online server and the scoring jobs send for the fraud detector.
SERVING_FIELDS = FRAUD_SPEC.request_fields
# The model a lifecycle step is about when none is named.
DEFAULT_MODEL = "fraud_detector"


def serving_fields(model: str) -> tuple[str, ...]:
    """The request fields serving sends for a declared model (its declared spec's)."""
    from mlops_assets.models.declaration import declared

    return declared(model).spec.request_fields


def mlflow_client(settings: Settings) -> Any:
    """An MLflow client bound to the environment's tracking and registry store.

    Its writes are checked against the access policy (`models.guard.registry_client`).
    """
    from mlops_assets.models.guard import registry_client

    return registry_client(settings)


def lifecycle(settings: Settings, model: str = DEFAULT_MODEL) -> Lifecycle:
    """The lifecycle of a declared model in the environment (the fraud detector by default)."""
    return Lifecycle(mlflow_client(settings), model_name(settings.env, model))


def version_validated_in_run(cycle: Lifecycle, run_id: str) -> str | None:
    """The version a Dagster run validated (newest if several), or None."""
    found = [
        int(v.version)
        for v in cycle.client.search_model_versions(f"name = '{cycle.name}'")
        if json.loads(v.tags.get(VALIDATION_TAG, "{}")).get("dagster_run_id") == run_id
    ]
    return str(max(found)) if found else None


def version_trained_in_run(cycle: Lifecycle, run_id: str) -> str | None:
    """The version a Dagster run trained to validate itself, or None."""
    found = [
        int(v.version)
        for v in cycle.client.search_model_versions(f"name = '{cycle.name}'")
        if v.tags.get(VALIDATED_IN_RUN_TAG) == run_id
    ]
    return str(max(found)) if found else None


def newest_version(cycle: Lifecycle) -> str | None:
    """The highest registered version number, or None when nothing is registered."""
    versions = cycle.client.search_model_versions(f"name = '{cycle.name}'")
    return str(max(int(v.version) for v in versions)) if versions else None


@dataclass(frozen=True)
class Candidate:
    """A registered version loaded for validation."""

    version: str
    model: Any
    spec: FeatureSpec
    signature: list[tuple[str, str]] | None
    split_time: str | None


def load_candidate(cycle: Lifecycle, version: str, tracking_uri: str) -> Candidate:
    """Load a version's scikit-learn model, feature spec, signature and hold-out start.

    Raises:
        ValueError: The version has no feature spec or cannot be loaded as a scikit-learn model.
    """
    import mlflow

    use_mlflow_store(tracking_uri)
    uri = f"models:/{cycle.name}/{version}"
    info = mlflow.models.get_model_info(uri)
    metadata = info.metadata or {}
    if "feature_spec" not in metadata:
        raise ValueError(f"{cycle.name} version {version} carries no feature spec")
    spec = FeatureSpec.from_dict(metadata["feature_spec"])
    signature = (
        [(c.name, c.type.name) for c in info.signature.inputs.inputs] if info.signature else None
    )
    model = mlflow.sklearn.load_model(uri)
    run_id = cycle.client.get_model_version(cycle.name, version).run_id
    split_time = cycle.client.get_run(run_id).data.tags.get("mlops.split_time") if run_id else None
    return Candidate(version, model, spec, signature, split_time)


def holdout(
    training_set: pl.DataFrame, split_time: str | None, fraction: float = 0.2
) -> pl.DataFrame:
    """The most recent labelled events of a training set.

    Those from the challenger's split time on (what it was evaluated on), else the last
    `fraction` of the events by time.
    """
    ordered = training_set.sort("event_time", "transaction_id")
    if split_time:
        start = pl.Series([split_time]).str.to_datetime(time_zone="UTC").item()
        return ordered.filter(pl.col("event_time") >= start)
    return ordered.slice(int(ordered.height * (1 - fraction)))


def validate_version(
    settings: Settings,
    version: str,
    training_set: pl.DataFrame,
    policy: ValidationPolicy,
    *,
    who: str,
    dagster_run_id: str | None = None,
    model: str = DEFAULT_MODEL,
) -> ValidationResult:
    """Make a version the challenger, validate it against the champion, record the result.

    The verdict goes to the version's tags (what promotion reads) and to the audit table. A
    version that cannot be loaded, or whose hold-out cannot be built, fails validation with
    the reason instead of raising. `model` is the declared model's name.
    """
    cycle = lifecycle(settings, model)
    champion_version = cycle.version_of(CHAMPION)
    cycle.make_challenger(version, who, "validation against the champion")
    split_time = None
    try:
        challenger = load_candidate(cycle, version, settings.mlflow_uri)
        split_time = challenger.split_time
        rows = holdout(training_set, split_time)
        champion = (
            load_candidate(cycle, champion_version, settings.mlflow_uri)
            if champion_version and champion_version != version
            else None
        )
        result = validate(
            challenger.model,
            challenger.spec,
            rows,
            policy,
            serving_fields=serving_fields(model),
            signature=challenger.signature,
            champion=champion.model if champion else None,
            champion_spec=champion.spec if champion else None,
        )
    except Exception as error:  # noqa: BLE001 - any failure to load or score fails validation
        failed = Check("loads_and_scores", False, f"{type(error).__name__}: {error}")
        result = ValidationResult(policy.mode, (failed,))
    details = result.to_dict()
    details["holdout_from"] = split_time
    # Promotion checks that the champion is still the one this verdict compared against.
    details["champion_version"] = champion_version
    details["dagster_run_id"] = dagster_run_id
    cycle.record_validation(version, result.passed, details)
    record(
        Catalog(settings).uri_for_write(AUDIT),
        AuditEvent(
            model=cycle.name,
            version=version,
            action="validated",
            who=who,
            why=(
                "passed: " + ", ".join(c.name for c in result.checks)
                if not result.failed
                else "failed: " + ", ".join(result.failed)
            ),
            env=settings.env,
            passed=result.passed,
            mode=result.mode,
            champion_before=champion_version,
            champion_after=champion_version,
            metrics={"challenger": result.metrics, "champion": result.champion_metrics},
            details={"checks": details["checks"]},
            dagster_run_id=dagster_run_id,
        ),
    )
    return result


def promote_version(
    settings: Settings,
    version: str,
    *,
    who: str,
    why: str,
    dagster_run_id: str | None = None,
    model: str = DEFAULT_MODEL,
) -> Move:
    """Make a validated version the champion; a refusal is audited, then raised.

    The first model ever (no champion yet) is promoted once it passed validation, which then
    held it to the absolute thresholds only. `model` is the declared model's name.

    Raises:
        LifecycleError: The version did not pass validation (or is already champion).
    """
    cycle = lifecycle(settings, model)
    before = cycle.version_of(CHAMPION)
    validation = cycle.validation(version) or {}
    uri = Catalog(settings).uri_for_write(AUDIT)
    try:
        if "champion_version" in validation and validation["champion_version"] != before:
            raise LifecycleError(
                f"{cycle.name} version {version} was validated against champion "
                f"{validation['champion_version'] or 'none'}, but the champion is now "
                f"{before or 'none'}: validate it again"
            )
        move = cycle.promote(version, who, why)
    except LifecycleError as error:
        record(
            uri,
            AuditEvent(
                model=cycle.name,
                version=version,
                action="refused",
                who=who,
                why=str(error),
                env=settings.env,
                passed=bool(validation.get("passed")),
                mode=validation.get("mode"),
                champion_before=before,
                champion_after=before,
                metrics={"challenger": validation.get("metrics")},
                details={"failed": validation.get("failed")},
                dagster_run_id=dagster_run_id,
            ),
        )
        raise
    record(
        uri,
        AuditEvent(
            model=cycle.name,
            version=version,
            action="promoted",
            who=who,
            why=why if before else f"{why} (first champion: absolute thresholds only)",
            env=settings.env,
            passed=True,
            mode=validation.get("mode"),
            champion_before=before,
            champion_after=version,
            metrics={
                "challenger": validation.get("metrics"),
                "champion": validation.get("champion_metrics"),
            },
            dagster_run_id=dagster_run_id,
        ),
    )
    return move


def rollback(
    settings: Settings,
    *,
    who: str,
    why: str,
    dagster_run_id: str | None = None,
    model: str = DEFAULT_MODEL,
) -> Move:
    """Restore the previous champion of a declared model and audit it.

    Raises:
        LifecycleError: There is no previous champion.
    """
    cycle = lifecycle(settings, model)
    before = cycle.version_of(CHAMPION)
    move = cycle.rollback(who, why)
    record(
        Catalog(settings).uri_for_write(AUDIT),
        AuditEvent(
            model=cycle.name,
            version=move.version,
            action="rolled_back",
            who=who,
            why=why,
            env=settings.env,
            champion_before=before,
            champion_after=move.version,
            dagster_run_id=dagster_run_id,
        ),
    )
    return move
