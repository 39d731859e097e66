"""Logging a trained model to MLflow and registering it as a new version (stage None)."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import polars as pl

from mlops_assets.features.spec import FeatureSpec
from mlops_assets.models.guard import check_registry_write
from mlops_assets.models.lifecycle import STAGE_TAG, model_name
from mlops_assets.models.training import TrainingResult, model_inputs
from mlops_assets.settings import Settings, project_root, use_mlflow_store

# Pinned to the versions installed here, so that inferring them (slow) is never needed and a
# clean process loads the model with the same libraries.
REQUIREMENT_PACKAGES = ("scikit-learn", "pandas", "numpy", "cloudpickle", "scipy")


@dataclass(frozen=True)
class RegisteredModel:
    """Where a trained model went."""

    name: str
    version: str
    run_id: str
    decision_threshold: float = 0.5
    logging_seconds: float = 0.0
    registering_seconds: float = 0.0


def decision_threshold(metrics: dict[str, float], fallback: float = 0.5) -> float:
    """Serving's threshold: the hold-out score at a 1 % false-positive rate, else `fallback`."""
    value = metrics.get("threshold_at_1pct_fpr", float("nan"))
    return float(value) if value == value else fallback


def chosen_threshold(result: TrainingResult, fallback: float = 0.5) -> float:
    """The threshold a training chose (its declared rule), else `decision_threshold`."""
    value = result.decision_threshold
    if value == value:
        return float(value)
    return decision_threshold(result.metrics, fallback)


def requirements() -> list[str]:
    """Exact pip requirements of the logged model."""
    return [f"{package}=={metadata.version(package)}" for package in REQUIREMENT_PACKAGES]


def git_commit() -> str:
    """The code version: the repository's commit, or `unknown` outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_root(),
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_and_register(
    settings: Settings,
    result: TrainingResult,
    spec: FeatureSpec,
    *,
    inputs: dict[str, int],
    example: pl.DataFrame,
    dagster_run_id: str,
    tags: dict[str, str] | None = None,
    model: str = "fraud_detector",
    fixed_threshold: float = 0.5,
    locations: dict[str, str] | None = None,
    training_frame: pl.DataFrame | None = None,
) -> RegisteredModel:
    """Log the run (parameters, metrics, inputs, spec, code version) and register the model.

    The run is always ended, also when logging fails, so no run stays RUNNING. The version
    gets stage None and `tags` (e.g. that its own run validates it).

    Args:
        settings: The environment.
        result: The trained model and its figures.
        spec: Its feature spec (stored with the model).
        inputs: Table name to the Delta version trained on.
        example: A few training rows (the input example and signature).
        dagster_run_id: The run training it.
        tags: Extra tags of the registered version.
        model: The declared model's name; registered as `<env>.<model>`, logged in the
            experiment of the same name.
        fixed_threshold: The decision threshold when the training chose none.
        locations: Table name (of `inputs`) to its Delta location: each is logged as the
            run's training dataset, its source the table at the version trained on.
        training_frame: The rows trained on (the dataset's schema, digest and row count).

    Raises:
        AccessDeniedError: The tracking store is another environment's (nothing is logged).
    """
    import mlflow
    from mlflow.models import infer_signature

    use_mlflow_store(settings.mlflow_uri)
    name = model_name(settings.env, model)
    check_registry_write(settings, name)
    experiment_name = name
    experiment = mlflow.get_experiment_by_name(experiment_name)
    # Artifacts live beside the store, inside the environment's root (MLflow's default would
    # be ./mlruns under whatever folder the process runs in).
    experiment_id = (
        experiment.experiment_id
        if experiment
        else mlflow.create_experiment(
            experiment_name, artifact_location=(settings.env_root / "mlartifacts").as_uri()
        )
    )
    mlflow.set_experiment(experiment_id=experiment_id)
    example_inputs = model_inputs(example, spec)
    probabilities = result.model.predict_proba(example_inputs)[:, 1]
    signature = infer_signature(example_inputs, probabilities)
    threshold = chosen_threshold(result, fixed_threshold)
    started = time.perf_counter()
    with mlflow.start_run(run_name=f"train-{dagster_run_id[:8]}") as run:
        mlflow.log_params(result.params)
        mlflow.log_metrics({k: v for k, v in result.metrics.items() if v == v})  # drop NaN
        mlflow.set_tags(
            {
                "mlops.git_commit": git_commit(),
                "mlops.dagster_run_id": dagster_run_id,
                "mlops.inputs": json.dumps(inputs, sort_keys=True),
                "mlops.split_time": result.split_time,
                "mlops.env": settings.env,
                "mlops.model": model,
            }
        )
        mlflow.log_dict(spec.to_dict(), "feature_spec.json")
        for dataset in training_datasets(inputs, locations or {}, training_frame):
            mlflow.log_input(dataset, context="training")
        logged = mlflow.sklearn.log_model(
            result.model,
            name="model",
            serialization_format="cloudpickle",
            # Serving wants the probability, not a 0/1 decision.
            pyfunc_predict_fn="predict_proba",
            signature=signature,
            input_example=example_inputs.head(3),
            pip_requirements=requirements(),
            metadata={"feature_spec": spec.to_dict(), "decision_threshold": threshold},
        )
        # The hold-out figures on the logged model too, so versions rank by them in the UI.
        mlflow.log_metrics(
            {k: v for k, v in result.metrics.items() if v == v}, model_id=logged.model_id
        )
    logging_seconds = time.perf_counter() - started
    started = time.perf_counter()
    version_tags = {STAGE_TAG: "None", "mlops.run_id": run.info.run_id, **(tags or {})}
    registered = mlflow.register_model(logged.model_uri, name, tags=version_tags)
    registering_seconds = time.perf_counter() - started
    return RegisteredModel(
        name=name,
        version=str(registered.version),
        run_id=run.info.run_id,
        decision_threshold=threshold,
        logging_seconds=logging_seconds,
        registering_seconds=registering_seconds,
    )


def training_datasets(
    inputs: dict[str, int], locations: dict[str, str], frame: pl.DataFrame | None
) -> list[Any]:
    """MLflow datasets of the Delta tables a model was trained on, at their versions.

    Args:
        inputs: Table name to the Delta version trained on.
        locations: Table name to its Delta location; tables without one are left out.
        frame: The rows trained on (schema, digest, row count); empty when omitted.
    """
    import mlflow
    from mlflow.data.delta_dataset_source import DeltaDatasetSource

    datasets = []
    for table, version in sorted(inputs.items()):
        if table not in locations:
            continue
        source = DeltaDatasetSource(path=locations[table], delta_table_version=int(version))
        datasets.append(
            mlflow.data.from_polars(
                frame if frame is not None else pl.DataFrame(),
                source=source,
                name=f"{table}@v{version}",
                targets="is_fraud" if frame is not None and "is_fraud" in frame.columns else None,
            )
        )
    return datasets


def load_feature_spec(model_uri: str) -> FeatureSpec:
    """The feature spec stored with a model, e.g. `models:/dev.fraud_detector@champion`."""
    import mlflow

    info: Any = mlflow.models.get_model_info(model_uri)
    return FeatureSpec.from_dict(info.metadata["feature_spec"])
