"""Continuous deployment on a temporary lake: train, validate, promote, refuse, roll back."""

import json
import subprocess
import sys

import dagster as dg
import mlflow
import polars as pl
import pytest

from mlops_assets.defs.deploy import new_model_versions
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.features.spec import FRAUD_SPEC, FeatureLookup
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.models.audit import history
from mlops_assets.models.deploy import lifecycle
from mlops_assets.models.registry import log_and_register
from mlops_assets.models.training import model_inputs, train
from mlops_assets.settings import use_mlflow_store
from mlops_assets_tests.integration.conftest import QUIET, THRESHOLDS, retrain


def deploy(defs, instance, request: dg.RunRequest):
    config = request.run_config
    config["ops"]["ml__model_validation"]["config"].update(THRESHOLDS)
    return defs.resolve_job_def("deploy_model").execute_in_process(
        instance=instance, raise_on_error=False, run_config={**config, **QUIET}
    )


def check_result(result):
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation


def audit(settings) -> pl.DataFrame:
    return history(settings.lake_root / "ml" / "model_audit", "dev.fraud_detector")


def sensor_requests(settings, instance, cursor=None):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"lakehouse": LakehouseResource.from_settings(settings)},
    )
    return new_model_versions(context)


def test_the_first_model_is_promoted_on_absolute_thresholds_and_loads_by_alias(cd_lake, champion):
    settings, _, _ = cd_lake
    status = lifecycle(settings).status()
    assert status["champion"] == "1" and status["versions"]["1"]["stage"] == "Production"
    evaluation = check_result(champion)
    assert evaluation.passed and evaluation.check_name == "passes_validation"
    assert evaluation.metadata["challenger_pr_auc"].value >= THRESHOLDS["min_pr_auc"]
    rows = audit(settings)
    assert rows.get_column("action").to_list() == ["validated", "promoted"]
    assert "first champion" in rows.get_column("why")[1]
    # A clean process loads the champion by alias and scores with its decision threshold.
    script = (
        "import mlflow, polars as pl\n"
        f"mlflow.set_tracking_uri({settings.mlflow_uri!r})\n"
        "uri = 'models:/dev.fraud_detector@champion'\n"
        "model = mlflow.pyfunc.load_model(uri)\n"
        "threshold = mlflow.models.get_model_info(uri).metadata['decision_threshold']\n"
        "from mlops_assets.features.spec import FRAUD_SPEC\n"
        "from mlops_assets.models.training import model_inputs\n"
        f"frame = pl.read_delta({str(settings.lake_root / 'ml' / 'training_set')!r}).tail(50)\n"
        "scores = model.predict(model_inputs(frame, FRAUD_SPEC))[:, 1]\n"
        "print(len(scores), 0 < threshold < 1, model.metadata.run_id)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    run_id = lifecycle(settings).client.get_model_version("dev.fraud_detector", "1").run_id
    assert done.stdout.split()[-3:] == ["50", "True", run_id]


def register_sabotaged(settings, kind: str) -> str:
    frame = scan_table(settings.lake_root / "ml" / "training_set").collect()
    if kind == "shuffled_labels":
        shuffled = frame.with_columns(pl.col("is_fraud").shuffle(seed=1))
        result = train(shuffled, FRAUD_SPEC, seed=7)
        return log_and_register(
            settings, result, FRAUD_SPEC, inputs={}, example=frame.head(5), dagster_run_id="test"
        ).version
    if kind == "missing_feature":
        card, merchant = FRAUD_SPEC.lookups
        fewer = FRAUD_SPEC.__class__(
            request_fields=FRAUD_SPEC.request_fields,
            lookups=(FeatureLookup(card.table, card.features[1:]), merchant),
            on_demand=FRAUD_SPEC.on_demand,
            model_inputs=FRAUD_SPEC.model_inputs,
        )
        result = train(frame, fewer, seed=7)
        # Registered as if it took the full spec: serving would send a column it lacks.
        return log_and_register(
            settings, result, FRAUD_SPEC, inputs={}, example=frame.head(5), dagster_run_id="test"
        ).version
    # An incompatible signature: the model is fine, its logged signature takes amount as text.
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    result = train(frame, FRAUD_SPEC, seed=7)
    inputs = model_inputs(frame.head(5), FRAUD_SPEC)
    columns = [
        ColSpec("string" if c == "amount" or inputs[c].dtype == object else "double", c)
        for c in inputs.columns
    ]
    use_mlflow_store(settings.mlflow_uri)  # not left in MLFLOW_TRACKING_URI
    mlflow.set_experiment("dev.fraud_detector")
    with mlflow.start_run():
        logged = mlflow.sklearn.log_model(
            result.model,
            name="model",
            serialization_format="cloudpickle",
            signature=ModelSignature(inputs=Schema(columns)),
            pip_requirements=["scikit-learn"],
            metadata={"feature_spec": FRAUD_SPEC.to_dict()},
        )
    return mlflow.register_model(logged.model_uri, "dev.fraud_detector").version


def test_sabotaged_versions_are_refused_by_the_cd_run_and_never_become_champion(cd_lake, champion):
    settings, defs, instance = cd_lake
    sabotaged = {
        kind: str(register_sabotaged(settings, kind))
        for kind in ("shuffled_labels", "missing_feature", "incompatible_signature")
    }
    first = sensor_requests(settings, instance)
    requested = [r.tags["mlops/model_version"] for r in first.run_requests]
    # The champion's own run validated it: only the three new versions are requested.
    assert requested == list(sabotaged.values())
    expected_failure = {
        "shuffled_labels": "min_pr_auc",
        "missing_feature": "inputs_match_spec",
        "incompatible_signature": "signature_matches_spec",
    }
    for (kind, version), request in zip(sabotaged.items(), first.run_requests, strict=True):
        result = deploy(defs, instance, request)
        evaluation = check_result(result)
        assert not evaluation.passed, kind
        assert expected_failure[kind] in evaluation.description, evaluation.description
        # The blocking check stopped promotion in the same run.
        assert not result.asset_materializations_for_node("ml__champion")
        assert lifecycle(settings).version_of("champion") == "1"
        assert lifecycle(settings).validation(version)["passed"] is False
    # The cursor moved past them: the next tick requests nothing.
    again = sensor_requests(settings, instance, cursor=first.cursor)
    assert not again.run_requests and "no new version" in again.skip_reason.skip_message
    # Promoting one by hand is refused, and the refusal is audited.
    from mlops_assets.models.deploy import promote_version
    from mlops_assets.models.lifecycle import LifecycleError

    with pytest.raises(LifecycleError, match="has not passed validation"):
        promote_version(settings, sabotaged["shuffled_labels"], who="tester", why="try")
    rows = audit(settings).filter(pl.col("version").is_in(list(sabotaged.values())))
    assert rows.get_column("action").to_list() == ["validated"] * 3 + ["refused"]
    assert rows.get_column("passed").to_list() == [False] * 4
    assert (rows.get_column("champion_after") == "1").all()


def test_a_better_challenger_is_promoted_and_rollback_restores_the_previous(
    cd_lake, champion, tmp_path, monkeypatch, capsys
):
    settings, defs, instance = cd_lake
    result = retrain(defs, instance, seed=8)
    assert result.success, check_result(result).description
    cycle = lifecycle(settings)
    new = result.asset_materializations_for_node("ml__champion")[0].metadata["champion"].value
    assert cycle.version_of("champion") == new and cycle.version_of("previous") == "1"
    # The challenger was compared with the champion on the same hold-out.
    evaluation = check_result(result)
    assert "champion_pr_auc" in evaluation.metadata
    from mlops_assets.cli import main

    monkeypatch.setenv("MLOPS_DATA_ROOT", str(settings.data_root))
    monkeypatch.setenv("MLOPS_ENV", "dev")
    assert main(["model", "rollback", "--why", "alerts from the fraud team"]) == 0
    capsys.readouterr()
    assert main(["model", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["champion"] == "1" and status["versions"][new]["stage"] == "Archived"
    assert status["audit"][-1]["action"] == "rolled_back"
    assert status["audit"][-1]["why"] == "alerts from the fraud team"
    # What serving loads by alias is the restored version.
    use_mlflow_store(settings.mlflow_uri)  # not left in MLFLOW_TRACKING_URI
    info = mlflow.models.get_model_info("models:/dev.fraud_detector@champion")
    assert info.run_id == cycle.client.get_model_version("dev.fraud_detector", "1").run_id
