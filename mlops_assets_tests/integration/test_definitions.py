import dagster as dg

from mlops_assets.definitions import build_definitions
from mlops_assets.settings import load_settings

EXPECTED_ASSETS = {
    "landing/transactions": "landing",
    "landing/labels": "landing",
    "bronze/transactions": "bronze",
    "bronze/labels": "bronze",
    "silver/transactions": "silver",
    "silver/labels": "silver",
    "gold/merchant_category_daily": "gold",
    "gold/prediction_summary": "gold",
    "monitoring/dashboard": "monitoring",
    "quarantine/bronze_transactions": "quarantine",
    "quarantine/bronze_labels": "quarantine",
    "quarantine/silver_transactions": "quarantine",
    "quarantine/silver_labels": "quarantine",
    "features/card_behaviour": "features",
    "features/merchant_daily": "features",
    "features/merchant_risk": "features",
    "online/card_behaviour": "online",
    "online/merchant_risk": "online",
    "ml/training_set": "ml",
    "ml/fraud_model": "ml",
    "ml/model_validation": "ml",
    "ml/champion": "ml",
    "ml/fraud_linear/training_set": "ml",
    "ml/fraud_linear/model": "ml",
    "ml/fraud_linear/model_validation": "ml",
    "ml/fraud_linear/champion": "ml",
    "ml/model_audit": "ml",
    "serving/batch_predictions": "serving",
    "serving/fraud_linear/batch_predictions": "serving",
    "serving/stream_predictions": "serving",
    "serving/stream_checkpoint": "serving",
    "serving/inference_log": "serving",
    "monitoring/drift_metrics": "monitoring",
    "monitoring/profiles": "monitoring",
    "monitoring/performance": "monitoring",
    "monitoring/drift_report": "monitoring",
    "monitoring/reference": "monitoring",
    "monitoring/alerts": "monitoring",
    "monitoring/fraud_linear/drift_metrics": "monitoring",
    "monitoring/fraud_linear/performance": "monitoring",
}
# Tables kept per something other than the day (model version, the whole history).
NOT_DAILY = {"monitoring/reference", "monitoring/alerts", "monitoring/dashboard"}
# The second declared model's generated assets (see models/declaration.py).
LINEAR_TRAINING_SET = "ml/fraud_linear/training_set"


def load(tmp_path) -> dg.Definitions:
    return build_definitions(load_settings({"MLOPS_DATA_ROOT": str(tmp_path)}))


def test_definitions_load_and_resolve(tmp_path):
    defs = load(tmp_path)
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("medallion_daily") is not None
    assert defs.resolve_job_def("features_daily") is not None
    assert defs.resolve_schedule_def("medallion_daily_schedule") is not None
    assert defs.resolve_sensor_def("new_model_versions") is not None


def test_weekly_retraining_runs_by_default_in_prod_only(tmp_path):
    for env, status in (("dev", "STOPPED"), ("prod", "RUNNING")):
        settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ENV": env})
        schedule = build_definitions(settings).resolve_schedule_def("weekly_retrain")
        assert schedule.default_status.name == status
        assert schedule.job_name == "retrain_and_deploy"


def test_asset_graph_snapshot(tmp_path):
    graph = load(tmp_path).resolve_asset_graph()
    specs = {key.to_user_string(): graph.get(key) for key in graph.get_all_asset_keys()}
    assert {k: node.group_name for k, node in specs.items()} == EXPECTED_ASSETS
    assert {
        k: sorted(p.to_user_string() for p in node.parent_keys) for k, node in specs.items()
    } == {
        "landing/transactions": [],
        "landing/labels": [],
        "bronze/transactions": ["landing/transactions"],
        "bronze/labels": ["landing/labels"],
        "silver/transactions": ["bronze/transactions"],
        "silver/labels": ["bronze/labels", "silver/transactions"],
        "gold/merchant_category_daily": ["silver/labels", "silver/transactions"],
        "gold/prediction_summary": [
            "serving/batch_predictions",
            "serving/fraud_linear/batch_predictions",
            "serving/stream_predictions",
            "silver/labels",
            "silver/transactions",
        ],
        "monitoring/dashboard": [
            "gold/prediction_summary",
            "ml/model_audit",
            "monitoring/alerts",
            "monitoring/drift_metrics",
            "monitoring/performance",
        ],
        "quarantine/bronze_transactions": [],
        "quarantine/bronze_labels": [],
        "quarantine/silver_transactions": ["bronze/transactions"],
        "quarantine/silver_labels": ["bronze/labels"],
        "features/card_behaviour": ["silver/transactions"],
        "features/merchant_daily": ["silver/labels", "silver/transactions"],
        "features/merchant_risk": ["features/merchant_daily"],
        "online/card_behaviour": ["features/card_behaviour"],
        "online/merchant_risk": ["features/merchant_risk"],
        "ml/training_set": [
            "features/card_behaviour",
            "features/merchant_risk",
            "silver/labels",
            "silver/transactions",
        ],
        "ml/fraud_model": ["ml/training_set"],
        "ml/model_validation": ["ml/fraud_model", "ml/training_set"],
        "ml/champion": ["ml/model_validation"],
        LINEAR_TRAINING_SET: [
            "features/card_behaviour",
            "features/merchant_risk",
            "silver/labels",
            "silver/transactions",
        ],
        "ml/fraud_linear/model": [LINEAR_TRAINING_SET],
        "ml/fraud_linear/model_validation": ["ml/fraud_linear/model", LINEAR_TRAINING_SET],
        "ml/fraud_linear/champion": ["ml/fraud_linear/model_validation"],
        "ml/model_audit": [
            "ml/champion",
            "ml/fraud_linear/champion",
            "ml/fraud_linear/model_validation",
            "ml/model_validation",
        ],
        "serving/batch_predictions": [
            "features/card_behaviour",
            "features/merchant_risk",
            "ml/champion",
            "silver/transactions",
        ],
        "serving/fraud_linear/batch_predictions": [
            "features/card_behaviour",
            "features/merchant_risk",
            "ml/fraud_linear/champion",
            "silver/transactions",
        ],
        "serving/stream_predictions": ["online/card_behaviour", "online/merchant_risk"],
        "serving/stream_checkpoint": ["serving/stream_predictions"],
        "serving/inference_log": [
            "serving/batch_predictions",
            "serving/fraud_linear/batch_predictions",
        ],
        "monitoring/drift_metrics": ["monitoring/reference", "serving/batch_predictions"],
        "monitoring/profiles": ["serving/batch_predictions"],
        "monitoring/performance": ["serving/batch_predictions", "silver/labels"],
        "monitoring/drift_report": ["monitoring/reference", "serving/batch_predictions"],
        "monitoring/reference": ["ml/fraud_model", "ml/training_set"],
        "monitoring/alerts": ["monitoring/drift_metrics", "monitoring/performance"],
        "monitoring/fraud_linear/drift_metrics": [
            "ml/fraud_linear/model",
            LINEAR_TRAINING_SET,
            "serving/fraud_linear/batch_predictions",
        ],
        "monitoring/fraud_linear/performance": [
            "serving/fraud_linear/batch_predictions",
            "silver/labels",
        ],
    }


def test_every_asset_is_described_owned_kinded_and_versioned(tmp_path):
    graph = load(tmp_path).resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and len(node.description) > 60, key
        assert node.owners, key
        assert node.kinds, key
        assert node.code_version, key
        if (
            key.path[0] not in ("landing", "online", "ml", "serving")
            and key.to_user_string() not in NOT_DAILY
        ):
            assert node.partitions_def is not None, key
        if key.path[0] not in ("landing", "online", "ml", "serving") and key.path[-1] not in (
            "drift_report",
            "dashboard",
        ):
            assert "deltalake" in node.kinds, key


def test_contract_and_validation_checks_are_blocking(tmp_path):
    graph = load(tmp_path).resolve_asset_graph()
    checks = {
        (k.asset_key.to_user_string(), k.name): graph.get_check_spec(k).blocking
        for k in graph.asset_check_keys
    }
    assert checks == {
        ("bronze/transactions", "every_landing_line_accounted_for"): True,
        ("bronze/labels", "every_landing_line_accounted_for"): True,
        ("bronze/transactions", "landing_files_present"): False,
        ("bronze/labels", "landing_files_present"): False,
        ("silver/transactions", "transaction_id_unique"): True,
        ("silver/transactions", "required_fields_present"): True,
        ("silver/transactions", "values_in_range"): True,
        ("silver/transactions", "fresh"): False,
        ("silver/transactions", "reject_share_low"): False,
        ("silver/transactions", "no_conflicting_records"): False,
        ("silver/labels", "transaction_id_reported_at_unique"): True,
        ("silver/labels", "required_fields_present"): True,
        ("silver/labels", "values_in_range"): True,
        ("silver/labels", "fresh"): False,
        ("silver/labels", "reject_share_low"): False,
        ("silver/labels", "no_conflicting_records"): False,
        ("silver/labels", "transactions_known"): False,
        ("features/card_behaviour", "one_row_per_transaction"): True,
        ("gold/prediction_summary", "summary_matches_inference_log"): False,
        ("ml/model_validation", "passes_validation"): True,
        ("ml/fraud_linear/model_validation", "passes_validation"): True,
    }


def test_every_daily_asset_starts_at_the_settings_start_date(tmp_path, monkeypatch):
    # The process says otherwise: the definitions follow the settings they are built from.
    monkeypatch.setenv("MLOPS_START_DATE", "2025-06-01")
    settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_START_DATE": "2026-02-03"})
    graph = build_definitions(settings).resolve_asset_graph()
    daily = [key for key in graph.get_all_asset_keys() if graph.get(key).partitions_def]
    assert {"serving/batch_predictions", "monitoring/drift_metrics"} <= {
        key.to_user_string() for key in daily
    }
    assert "monitoring/fraud_linear/performance" in {key.to_user_string() for key in daily}
    for key in daily:
        assert graph.get(key).partitions_def.start.date().isoformat() == "2026-02-03", key


def test_alerts_go_to_the_settings_webhook(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_ALERT_WEBHOOK_URL", "http://127.0.0.1:1/from-the-process")
    url = "http://127.0.0.1:9/alerts"
    settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ALERT_WEBHOOK_URL": url})
    assert build_definitions(settings).resources["monitoring"].alert_webhook_url == url
    quiet = load_settings({"MLOPS_DATA_ROOT": str(tmp_path)})
    assert build_definitions(quiet).resources["monitoring"].alert_webhook_url == ""
