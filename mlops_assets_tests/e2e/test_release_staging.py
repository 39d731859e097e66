"""The staging stage of a release (`mlops release staging`) against a small prod with a champion.

A prod is built once in a temporary data root (in-process, `release.staging.seed_prod`); the
stage runs as a user or CI runs it, in a subprocess with `MLOPS_ENV=staging`. It must pass on
the code under test and leave prod's registry and tables as they were; and it must fail, naming
the failure, when prod's champion is one the code under test cannot serve.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from deltalake import DeltaTable

ROOT = Path(__file__).resolve().parents[2]
MLOPS = [sys.executable, "-m", "mlops_assets.cli"]
# A small feed: few days, few transactions; gates meaningful on it (a model without signal
# has a PR-AUC near the fraud rate, about 0.01).
STAGE = ["--days", "5", "--per-day", "1500", "--min-pr-auc", "0.02"]
STAGE += ["--min-recall-at-1pct-fpr", "0"]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def env_for(data_root: Path, env: str) -> dict[str, str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "DAGSTER_", "MLFLOW_"))
    }
    return {**clean, "MLOPS_DATA_ROOT": str(data_root), "MLOPS_ENV": env}


def registry_state(data_root: Path) -> dict:
    """Every prod model's versions, their tags and aliases."""
    uri = f"sqlite:///{data_root / 'prod' / 'mlflow.db'}"
    # The registry too: this process's default registry is whichever store it last used.
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {
        model.name: {
            "aliases": dict(model.aliases),
            "versions": {
                v.version: dict(v.tags)
                for v in client.search_model_versions(f"name = '{model.name}'")
            },
        }
        for model in client.search_registered_models()
    }


def table_versions(data_root: Path) -> dict[str, int]:
    """The Delta version of every table of prod's lake."""
    lake = data_root / "prod" / "lake"
    return {
        str(log.parent.relative_to(lake)): DeltaTable(str(log.parent)).version()
        for log in lake.glob("*/*/_delta_log")
    }


@pytest.fixture(scope="module")
def prod_root(tmp_path_factory):
    """A data root holding a small prod with a champion of the fraud detector."""
    from mlops_assets.release.staging import seed_prod
    from mlops_assets.settings import load_settings

    root = tmp_path_factory.mktemp("release")
    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith(("MLOPS_", "MLFLOW_"))]:
            patch.delenv(key)
        patch.setenv("DAGSTER_HOME", str(root / "prod" / "dagster"))
        settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "prod"})
        assert seed_prod(settings, days=6, per_day=1500, seed=11, label_days=2) == 0
    print(f"small prod built in {time.perf_counter() - started:.1f} s")
    assert registry_state(root)["prod.fraud_detector"]["aliases"]["champion"]
    return root


def stage(data_root: Path) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    done = subprocess.run(
        [*MLOPS, "release", "staging", *STAGE],
        env=env_for(data_root, "staging"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    print(f"staging stage ran in {time.perf_counter() - started:.1f} s")
    return done


def verdict(data_root: Path) -> dict:
    newest = sorted((data_root / "staging" / "release").glob("*.json"))[-1]
    return json.loads(newest.read_text())


def test_the_stage_refuses_another_environment(tmp_path):
    done = subprocess.run(
        [*MLOPS, "release", "staging"],
        env=env_for(tmp_path, "dev"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "runs in the staging environment only; MLOPS_ENV is 'dev'" in done.stderr
    assert not (tmp_path / "dev").exists() and not (tmp_path / "staging").exists()


def test_the_release_passes_against_prods_champion_and_prod_is_unchanged(prod_root):
    registry, tables = registry_state(prod_root), table_versions(prod_root)
    done = stage(prod_root)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    source = registry["prod.fraud_detector"]["aliases"]["champion"]
    assert f"copy: prod.fraud_detector: ok: version {source}" in done.stdout
    assert "registered as staging.fraud_detector version 1, alias champion" in done.stdout
    assert "PASSED" in done.stdout
    # The copy names its source; it is staging's champion.
    uri = f"sqlite:///{prod_root / 'staging' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    copied = client.get_model_version_by_alias("staging.fraud_detector", "champion")
    assert copied.tags["mlops.source_model"] == "prod.fraud_detector"
    assert copied.tags["mlops.source_version"] == str(source)  # aliases map to int versions
    # The challenger was trained and validated by this code; the day was scored by the copy.
    report = verdict(prod_root)
    assert report["passed"] and not report["failures"]
    names = [o["name"] for o in report["outcomes"]]
    assert "staging.fraud_detector v2 min_pr_auc" in names
    assert any(n.startswith("serve_and_monitor") for n in names)
    # Prod: the same versions, aliases and tags, and no table written.
    assert registry_state(prod_root) == registry
    assert table_versions(prod_root) == tables


def test_the_release_fails_when_the_code_cannot_serve_prods_champion(prod_root, tmp_path):
    """prod's champion asks for a feature the code under test no longer computes."""
    from mlflow.models import Model

    uri = f"sqlite:///{prod_root / 'prod' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("prod.fraud_detector", "champion")
    # A champion trained and validated by an earlier code version, whose card behaviour had a
    # feature this code does not have: its files, with that feature's name in its spec.
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(
                "prod.fraud_detector", champion.version
            ),
            dst_path=str(tmp_path),
            tracking_uri=uri,
        )
    )
    described = Model.load(str(local / "MLmodel"))
    spec = described.metadata["feature_spec"]
    lookup = next(lk for lk in spec["lookups"] if lk["table"] == "card_behaviour")
    lookup["features"] = [
        "txn_count_1h_legacy" if f == "txn_count_1h" else f for f in lookup["features"]
    ]
    run = client.get_run(champion.run_id)
    logged = client.create_logged_model(
        run.info.experiment_id, name="model", source_run_id=run.info.run_id
    )
    described.model_id = logged.model_id
    described.save(str(local / "MLmodel"))
    client.log_model_artifacts(logged.model_id, str(local))
    client.finalize_logged_model(logged.model_id, "READY")
    older = client.create_model_version(
        "prod.fraud_detector",
        f"models:/{logged.model_id}",
        run_id=run.info.run_id,
        model_id=logged.model_id,
    )
    client.set_registered_model_alias("prod.fraud_detector", "champion", older.version)
    registry, tables = registry_state(prod_root), table_versions(prod_root)
    done = stage(prod_root)
    assert done.returncode == 1, done.stdout[-6000:] + done.stderr[-3000:]
    assert "FAILED" in done.stdout
    assert "failure: champion: staging.fraud_detector v1 loads" in done.stdout
    assert "txn_count_1h_legacy" in done.stdout
    report = verdict(prod_root)
    assert not report["passed"]
    failed = [f["name"] for f in report["failures"]]
    assert "staging.fraud_detector v1 loads" in failed
    assert registry_state(prod_root) == registry
    assert table_versions(prod_root) == tables
