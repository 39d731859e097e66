import pytest

from mlops_assets.lakehouse.catalog import AccessDeniedError, Catalog, TableRef
from mlops_assets.settings import Engine, SettingsError, load_settings


def test_environment_selects_its_root(tmp_path):
    settings = load_settings({"MLOPS_ENV": "staging", "MLOPS_DATA_ROOT": str(tmp_path)})
    assert settings.env_root == tmp_path / "staging"
    assert settings.landing_root == tmp_path / "staging" / "landing"
    assert settings.lake_root == tmp_path / "staging" / "lake"
    assert settings.engine is Engine.POLARS


def test_defaults_are_dev_and_the_repository_data_folder():
    settings = load_settings({})
    assert settings.env == "dev"
    assert settings.data_root.name == "data"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"MLOPS_ENV": "qa"}, "MLOPS_ENV='qa' is not an environment"),
        ({"MLOPS_ENGINE": "duckdb"}, "MLOPS_ENGINE='duckdb' is not an engine"),
        ({"MLOPS_ENGINE": "spark"}, "MLOPS_ENGINE='spark' is not an engine; use one of polars"),
        ({"MLOPS_START_DATE": "01/02/2026"}, "MLOPS_START_DATE='01/02/2026' is not an ISO date"),
    ],
)
def test_bad_settings_are_named(variables, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(variables)


def test_writes_stay_in_the_active_environment_and_reads_follow_the_policy(tmp_path):
    dev = Catalog(load_settings({"MLOPS_ENV": "dev", "MLOPS_DATA_ROOT": str(tmp_path)}))
    prod = Catalog(load_settings({"MLOPS_ENV": "prod", "MLOPS_DATA_ROOT": str(tmp_path)}))
    table = TableRef("silver", "transactions")
    assert dev.uri_for_write(table) == str(tmp_path / "dev" / "lake" / "silver" / "transactions")
    # dev may read prod, read-only; prod reads only prod.
    assert dev.uri_for_read(table, "prod") == str(tmp_path / "prod/lake/silver/transactions")
    with pytest.raises(AccessDeniedError, match="'prod' may not read 'dev'"):
        prod.uri_for_read(table, "dev")
    with pytest.raises(AccessDeniedError, match="'staging' may not read 'prod'"):
        Catalog(
            load_settings({"MLOPS_ENV": "staging", "MLOPS_DATA_ROOT": str(tmp_path)})
        ).uri_for_read(table, "prod")


def test_table_refs_refuse_unknown_layers_and_paths():
    with pytest.raises(ValueError, match="layer 'platinum'"):
        TableRef("platinum", "x")
    with pytest.raises(ValueError, match="plain folder name"):
        TableRef("silver", "../prod")
