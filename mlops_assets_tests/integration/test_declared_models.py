"""A second declared model through the whole lifecycle, beside the fraud detector.

On its own small lake: the linear fraud model is trained (an MLflow run with parameters,
metrics and its training set's Delta version), validated, promoted (alias champion), batch
scored into the inference log with its name and version, answered by the REST server at
`/v1/models/fraud_linear/score` beside the fraud detector's `/v1/score`, and monitored.
"""

import datetime
import http.client
import json

import dagster as dg
import mlflow
import polars as pl
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.ml import keys
from mlops_assets.lakehouse.delta_io import scan_table, table_exists
from mlops_assets.models.audit import history
from mlops_assets.models.declaration import FRAUD_LINEAR
from mlops_assets.models.training import model_inputs
from mlops_assets.settings import load_settings
from mlops_assets.simulate import Scenario, simulate
from mlops_assets_tests.integration.conftest import build_lake

START = datetime.date(2026, 1, 1)
DAYS = [START + datetime.timedelta(days=i) for i in range(8)]
CUTOFF = "2026-01-09T00:00:00+00:00"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
LINEAR = keys(FRAUD_LINEAR)


def _node(key: dg.AssetKey) -> str:
    return LINEAR.node(key)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """Eight days through medallion, features and the online store; both models trained."""
    root = tmp_path_factory.mktemp("declared")
    settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev"})
    scenario = Scenario.clean(
        days=len(DAYS),
        transactions_per_day=2_000,
        seed=17,
        start_date=START,
        label_delay_days=(1, 2),
    )
    simulate(scenario, settings.landing_root)
    defs = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        build_lake(defs, instance, DAYS)
        window = {"label_cutoff": CUTOFF, "days": 8, "label_maturity_days": 2}
        lenient = {"min_pr_auc": 0.02, "min_recall_at_1pct_fpr": 0.0}
        fraud = defs.resolve_job_def("retrain_and_deploy").execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={
                "ops": {
                    "ml__training_set": {"config": window},
                    "ml__model_validation": {"config": lenient},
                },
                **QUIET,
            },
        )
        assert fraud.success
        linear = defs.resolve_job_def("retrain_and_deploy_fraud_linear").execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={
                "ops": {
                    _node(LINEAR.training_set): {"config": window},
                    _node(LINEAR.trained): {"config": {"params": {"C": 0.5}}},
                },
                **QUIET,
            },
        )
        yield settings, defs, instance, linear


def test_the_linear_model_is_trained_validated_and_promoted_by_its_generated_job(lake):
    settings, _, _, result = lake
    assert result.success
    trained = result.asset_materializations_for_node(_node(LINEAR.trained))[0].metadata
    assert trained["model"].value == "dev.fraud_linear"
    version = trained["version"].value
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    run = client.get_run(trained["mlflow_run_id"].value)
    assert run.data.params["C"] == "0.5" and run.data.params["max_iter"] == "1000"
    assert run.data.metrics["pr_auc"] > 0
    assert json.loads(run.data.tags["mlops.inputs"]) == {
        "ml/fraud_linear__training_set": trained["training_set_version"].value
    }
    assert run.data.tags["mlops.model"] == "fraud_linear"
    # Its own training set, with its own spec's columns only.
    frame = scan_table(settings.lake_root / "ml" / "fraud_linear__training_set").collect()
    assert set(FRAUD_LINEAR.spec.feature_columns) <= set(frame.columns)
    assert "merchant_category" not in frame.columns
    checks = result.get_asset_check_evaluations()
    assert [c.passed for c in checks] == [True]
    assert checks[0].asset_key == LINEAR.validation
    assert str(client.get_model_version_by_alias("dev.fraud_linear", "champion").version) == version
    # The fraud detector's champion is untouched by the other model's lifecycle.
    assert str(client.get_model_version_by_alias("dev.fraud_detector", "champion").version) == "1"
    info = mlflow.models.get_model_info(f"models:/dev.fraud_linear/{version}")
    assert info.metadata["feature_spec"]["categorical"] == ["channel", "entry_mode"]
    assert 0 < info.metadata["decision_threshold"] < 1
    audit = history(settings.lake_root / "ml" / "model_audit", "dev.fraud_linear")
    assert audit.get_column("action").to_list() == ["validated", "promoted"]
    # The audit table is on the asset graph: the run reported its appends.
    reported = [
        e.asset_key
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["ml", "model_audit"])
    ]
    assert len(reported) == 2


def test_the_linear_champion_batch_scores_a_day_into_the_inference_log(lake):
    settings, defs, instance, _ = lake
    day = DAYS[-1]
    job = dg.define_asset_job("score_linear", selection=[LINEAR.batch_predictions])
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    scored = merged.resolve_job_def("score_linear").execute_in_process(
        instance=instance, partition_key=day.isoformat(), raise_on_error=False, run_config=QUIET
    )
    assert scored.success
    log = scan_table(settings.lake_root / "serving" / "inference_log").collect()
    rows = log.filter(pl.col("model_name") == "dev.fraud_linear", pl.col("mode") == "batch")
    silver = scan_table(settings.lake_root / "silver" / "transactions").filter(
        pl.col("landing_date") == day
    )
    assert rows.height == silver.collect().height > 0
    assert rows.get_column("model_version").unique().to_list() == ["1"]
    model = mlflow.pyfunc.load_model("models:/dev.fraud_linear/1")
    again = model.predict(model_inputs(rows, FRAUD_LINEAR.spec))[:, 1]
    assert (abs(rows.get_column("score").to_numpy() - again) < 1e-12).all()
    threshold = rows.get_column("threshold")[0]
    assert (rows.get_column("decision") == (rows.get_column("score") >= threshold)).all()


def _call(url: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(
            method,
            path,
            json.dumps(body) if body is not None else None,
            {"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_the_rest_server_answers_both_models_and_says_which_path_serves(lake):
    from mlops_assets.serving.app import ScoringServer, build_service

    settings = lake[0]
    silver = scan_table(settings.lake_root / "silver" / "transactions").collect()
    row = silver.sort("event_time").row(-1, named=True)
    request = {
        "transaction_id": "rest-linear-1",
        "card_id": row["card_id"],
        "merchant_id": row["merchant_id"],
        "event_time": (row["event_time"] + datetime.timedelta(minutes=5)).isoformat(),
        "amount": row["amount"],
        "merchant_category": row["merchant_category"],
        "channel": row["channel"],
        "entry_mode": row["entry_mode"],
        "device_type": row["device_type"],
        "country": row["country"],
        "card_country": row["card_country"],
    }
    service = build_service(settings, poll_seconds=0.2, flush_interval_ms=100, wait_for_model=120)
    server = ScoringServer(("127.0.0.1", 0), service).start()
    try:
        status, ready = _call(server.url, "GET", "/readyz")
        assert status == 200 and ready["ready"], ready
        linear = ready["models"]["fraud_linear"]
        assert linear["serving_version"] == "1" and linear["scorer"] == "reference"
        assert "HistGradientBoostingClassifier" in linear["fallback_reason"]
        assert ready["models"]["fraud_detector"]["scorer"] == "compiled"
        status, fraud = _call(server.url, "POST", "/v1/score", request)
        assert status == 200 and fraud["model"]["name"] == "dev.fraud_detector"
        # The linear model's own fields: the fraud detector's extra ones are refused.
        linear_request = {k: v for k, v in request.items() if k in FRAUD_LINEAR.spec.request_fields}
        status, answer = _call(server.url, "POST", "/v1/models/fraud_linear/score", linear_request)
        assert status == 200, answer
        assert answer["model"] == {"name": "dev.fraud_linear", "version": "1", "alias": "champion"}
        assert 0 <= answer["score"] <= 1
        assert answer["decision"] == (answer["score"] >= answer["threshold"])
        status, missing = _call(server.url, "POST", "/v1/models/no_such/score", linear_request)
        assert status == 404 and "fraud_linear" in missing["error"]["message"]
    finally:
        server.stop()
    log = scan_table(settings.lake_root / "serving" / "inference_log").collect()
    online = log.filter(pl.col("mode") == "online", pl.col("status") == "ok")
    assert sorted(online.get_column("model_name").to_list()) == [
        "dev.fraud_detector",
        "dev.fraud_linear",
    ]
    logged = online.filter(pl.col("model_name") == "dev.fraud_linear").row(0, named=True)
    assert logged["score"] == pytest.approx(answer["score"], abs=0)


def test_the_linear_model_is_monitored_on_its_own_predictions(lake):
    settings, defs, instance, _ = lake
    # A day whose labels are mature (3 days, the model's declared maturity) at the horizon.
    day = DAYS[2]
    selection = [
        LINEAR.batch_predictions,
        *(dg.AssetKey(["monitoring", "fraud_linear", n]) for n in ("drift_metrics", "performance")),
    ]
    job = dg.define_asset_job("monitor_linear", selection=selection)
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    result = merged.resolve_job_def("monitor_linear").execute_in_process(
        instance=instance, partition_key=day.isoformat(), raise_on_error=False, run_config=QUIET
    )
    assert result.success
    drift = scan_table(settings.lake_root / "monitoring" / "fraud_linear__drift_metrics").collect()
    assert set(drift.get_column("column")) == {*FRAUD_LINEAR.spec.feature_columns, "score"}
    assert drift.get_column("model_version").unique().to_list() == ["1"]
    performance = scan_table(
        settings.lake_root / "monitoring" / "fraud_linear__performance"
    ).collect()
    assert performance.get_column("model_version").to_list() == ["1"]
    assert performance.get_column("mature").to_list() == [True]
    assert performance.get_column("labelled")[0] > 0
    assert table_exists(settings.lake_root / "monitoring" / "fraud_linear__reference")
