"""Guarded MLflow client: writes whose model is not the first argument, read-only readers."""

import mlflow
import pytest

from mlops_assets.access import AccessDeniedError
from mlops_assets.models.guard import GuardedClient, registry_reader
from mlops_assets.settings import load_settings


def test_copy_model_version_is_checked_on_its_destination(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client = GuardedClient(raw, "dev")
    client.create_registered_model("dev.m")
    source = tmp_path / "model"
    source.mkdir()
    client.create_model_version("dev.m", source.as_uri())
    with pytest.raises(AccessDeniedError, match="model prod.m"):
        client.copy_model_version("models:/dev.m/1", "prod.m")
    with pytest.raises(AccessDeniedError, match="model prod.m"):
        client.copy_model_version(src_model_uri="models:/dev.m/1", dst_name="prod.m")
    assert [m.name for m in raw.search_registered_models()] == ["dev.m"]
    copied = client.copy_model_version("models:/dev.m/1", "dev.m_copy")
    assert (copied.name, str(copied.version)) == ("dev.m_copy", "1")


def test_a_reader_of_the_active_environments_own_registry_is_read_only(tmp_path):
    settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ENV": "dev"})
    reader = registry_reader(settings, "dev")
    assert reader.read_only and reader.owner == "dev"
    with pytest.raises(AccessDeniedError, match="read-only"):
        reader.create_registered_model("dev.m")


def test_the_wrapped_clients_internals_are_not_reachable(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = GuardedClient(mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), "dev")
    for private in ("_tracking_client", "_get_registry_client"):
        with pytest.raises(AttributeError, match=f"{private} is private"):
            getattr(client, private)
    # Public reads still pass through.
    assert client.search_registered_models() == []
