"""The staging stage tells "prod has no champion" apart from "prod's registry cannot be read"."""

import mlflow
import pytest

from mlops_assets.access import ENVIRONMENT_STAMP, ENVIRONMENT_TAG, AccessDeniedError
from mlops_assets.models.guard import GuardedClient
from mlops_assets.release.staging import _champion_version


def test_a_missing_model_or_alias_is_no_champion_a_refused_read_is_raised(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    prod = GuardedClient(raw, "staging", owner="prod")
    assert _champion_version(prod, "prod.fraud_detector") is None  # no such model
    raw.create_registered_model("prod.fraud_detector")
    assert _champion_version(prod, "prod.fraud_detector") is None  # no champion alias
    # A store stamped by dev, which staging may not read: refused, not "no champion".
    raw.create_experiment(ENVIRONMENT_STAMP, tags={ENVIRONMENT_TAG: "dev"})
    fresh = GuardedClient(raw, "staging", owner="prod")
    with pytest.raises(AccessDeniedError, match="may not read registry"):
        _champion_version(fresh, "prod.fraud_detector")
