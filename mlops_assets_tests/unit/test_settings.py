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
        ({"MLOPS_ENGINE": "duckdb"}, "use one of polars, spark"),
        ({"MLOPS_ENGINE_SILVER": "dask"}, "MLOPS_ENGINE_SILVER='dask' is not an engine"),
        ({"MLOPS_SPARK_MASTER": "127.0.0.1:7077"}, "is not a Spark master URL"),
        ({"MLOPS_SPARK_CONF": "[1]"}, "MLOPS_SPARK_CONF must be a JSON object"),
        ({"MLOPS_SPARK_CONF": "{oops"}, "MLOPS_SPARK_CONF is not JSON"),
        ({"MLOPS_START_DATE": "01/02/2026"}, "MLOPS_START_DATE='01/02/2026' is not an ISO date"),
    ],
)
def test_bad_settings_are_named(variables, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(variables)


def test_engine_is_chosen_per_environment_and_per_asset_group():
    settings = load_settings({"MLOPS_ENGINE": "spark", "MLOPS_ENGINE_BRONZE": "polars"})
    assert settings.engine is Engine.SPARK
    assert settings.engine_for("bronze") is Engine.POLARS
    assert settings.engine_for("silver") is Engine.SPARK
    assert settings.spark_master == "local[*]"
    default = load_settings({"MLOPS_ENGINE_FEATURES": "spark"})
    assert default.engine_for("features") is Engine.SPARK
    assert default.engine_for("gold") is Engine.POLARS
    assert default.engine_for("ml") is Engine.POLARS  # the training set on polars by default
    assert load_settings({"MLOPS_ENGINE_ML": "spark"}).engine_for("ml") is Engine.SPARK
    assert load_settings({"MLOPS_ENGINE_ONLINE": "spark"}).engine_for("online") is Engine.SPARK
    with pytest.raises(SettingsError, match="asset group 'deploy' has no engine setting"):
        default.engine_for("deploy")
    remote = load_settings({"MLOPS_SPARK_REMOTE": "sc://127.0.0.1:15002"})
    assert remote.spark_master == "sc://127.0.0.1:15002"
    with pytest.raises(SettingsError, match="is not a Spark Connect URL"):
        load_settings({"MLOPS_SPARK_REMOTE": "127.0.0.1:15002"})


def test_spark_settings_are_read(tmp_path):
    settings = load_settings(
        {
            "MLOPS_SPARK_MASTER": "spark://127.0.0.1:7077",
            "MLOPS_SPARK_JARS": str(tmp_path),
            "MLOPS_SPARK_CONF": '{"spark.executor.memory": "4g", "spark.executor.cores": 2}',
        }
    )
    assert settings.spark_master == "spark://127.0.0.1:7077"
    assert settings.spark_jars_dir == tmp_path
    assert settings.spark_conf == {"spark.executor.memory": "4g", "spark.executor.cores": "2"}


def test_writes_stay_in_the_active_environment_and_reads_follow_the_policy(tmp_path):
    dev = Catalog(load_settings({"MLOPS_ENV": "dev", "MLOPS_DATA_ROOT": str(tmp_path)}))
    prod = Catalog(load_settings({"MLOPS_ENV": "prod", "MLOPS_DATA_ROOT": str(tmp_path)}))
    table = TableRef("silver", "transactions")
    assert dev.uri_for_write(table) == str(tmp_path / "dev" / "lake" / "silver" / "transactions")
    staging = Catalog(load_settings({"MLOPS_ENV": "staging", "MLOPS_DATA_ROOT": str(tmp_path)}))
    # dev and staging may read prod, read-only; prod reads only prod; nobody reads dev.
    assert dev.uri_for_read(table, "prod") == str(tmp_path / "prod/lake/silver/transactions")
    assert staging.uri_for_read(table, "prod") == str(tmp_path / "prod/lake/silver/transactions")
    with pytest.raises(AccessDeniedError, match="'prod' may not read table silver/transactions"):
        prod.uri_for_read(table, "dev")
    with pytest.raises(AccessDeniedError, match="'staging' may not read table .* of 'dev'"):
        staging.uri_for_read(table, "dev")


def test_table_refs_refuse_unknown_layers_and_paths():
    with pytest.raises(ValueError, match="layer 'platinum'"):
        TableRef("platinum", "x")
    with pytest.raises(ValueError, match="plain folder name"):
        TableRef("silver", "../prod")


def test_stack_ports_have_defaults_and_are_overridable():
    from mlops_assets.settings import StackPorts

    default = load_settings({}).stack_ports
    assert default == StackPorts()
    assert (default.postgres, default.redis, default.mlflow) == (15432, 16379, 5000)
    assert (default.webserver, default.readonly_webserver, default.serve) == (
        3000,
        3001,
        (8000, 8001),
    )
    chosen = load_settings(
        {
            "MLOPS_STACK_POSTGRES_PORT": "25432",
            "MLOPS_STACK_REDIS_PORT": "26379",
            "MLOPS_STACK_MLFLOW_PORT": "5050",
            "MLOPS_STACK_WEBSERVER_PORT": "3100",
            "MLOPS_STACK_READONLY_WEBSERVER_PORT": "3101",
            "MLOPS_STACK_SERVE_PORTS": "9000, 9001,9002",
        }
    ).stack_ports
    assert chosen == StackPorts(25432, 26379, 5050, 3100, 3101, (9000, 9001, 9002))


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"MLOPS_STACK_REDIS_PORT": "redis"}, "MLOPS_STACK_REDIS_PORT='redis' is not a port"),
        ({"MLOPS_STACK_MLFLOW_PORT": "70000"}, "is not a port between 1 and 65535"),
        ({"MLOPS_STACK_WEBSERVER_PORT": "5000"}, "stack ports must differ"),
        ({"MLOPS_STACK_SERVE_PORTS": ","}, "at least one serving port"),
    ],
)
def test_bad_stack_ports_are_named(variables, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(variables)


def test_operations_settings_are_read_and_checked():
    settings = load_settings(
        {
            "MLOPS_CRON_REFRESH": "* * * * *",
            "MLOPS_AUTOMATION": "on",
            "MLOPS_SENSOR_INTERVAL_SECONDS": "5",
            "MLOPS_STREAM_WORKER": "on",
            "MLOPS_MONITORING": '{"label_maturity_days": 2}',
            "MLOPS_ONLINE_STORE": "redis://127.0.0.1:6379/0",
        }
    )
    assert settings.cron("refresh") == "* * * * *"
    assert settings.cron("medallion") == "30 0 * * *"
    assert settings.automation_on and settings.stream_worker
    assert settings.sensor_interval_seconds == 5
    assert settings.monitoring == {"label_maturity_days": 2}
    assert load_settings({"MLOPS_ENV": "prod"}).automation_on
    assert not load_settings({"MLOPS_ENV": "prod", "MLOPS_AUTOMATION": "off"}).automation_on
    assert not load_settings({}).automation_on


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"MLOPS_CRON_MEDALLION": "daily"}, "MLOPS_CRON_MEDALLION='daily' is not a cron"),
        ({"MLOPS_AUTOMATION": "yes"}, "MLOPS_AUTOMATION='yes' must be on or off"),
        ({"MLOPS_SENSOR_INTERVAL_SECONDS": "0"}, "is not a whole number of seconds"),
        ({"MLOPS_MONITORING": "[2]"}, "MLOPS_MONITORING must be a JSON object"),
        ({"MLOPS_ONLINE_STORE": "memcached://x"}, "is not a Redis URL"),
        ({"MLOPS_STREAM_WORKER": "1"}, "MLOPS_STREAM_WORKER='1' must be on or off"),
        (
            {"MLOPS_ALERT_WEBHOOK_URL": "hooks.example.com/alerts"},
            "MLOPS_ALERT_WEBHOOK_URL='hooks.example.com/alerts' is not an http",
        ),
        ({"MLOPS_ALERT_WEBHOOK_URL": "ftp://127.0.0.1/alerts"}, "is not an http"),
    ],
)
def test_bad_operations_settings_are_named(variables, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(variables)


def test_the_alert_webhook_is_a_setting():
    assert load_settings({}).alert_webhook_url == ""
    url = "http://127.0.0.1:9000/alerts"
    assert load_settings({"MLOPS_ALERT_WEBHOOK_URL": f" {url} "}).alert_webhook_url == url


# Object storage ----------------------------------------------------------------------------

S3 = {
    "MLOPS_LAKE_URI": "s3://lake/mlops/",
    "MLOPS_S3_ENDPOINT": "http://127.0.0.1:8333",
    "MLOPS_S3_ACCESS_KEY_ID": "key",
    "MLOPS_S3_SECRET_ACCESS_KEY": "secret",
}


def test_the_lake_stays_on_the_local_disk_by_default(tmp_path):
    settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ENV": "staging"})
    assert not settings.lake_on_object_store
    assert settings.lake_uri == str(tmp_path / "staging" / "lake")
    assert settings.storage_options == {}
    assert settings.spark_storage_conf == {}
    catalog = Catalog(settings)
    assert catalog.uri_for_write(TableRef("silver", "labels")) == str(
        tmp_path / "staging" / "lake" / "silver" / "labels"
    )


def test_a_lake_on_s3_gives_delta_rs_and_spark_their_options(tmp_path):
    settings = load_settings({**S3, "MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_S3_REGION": "eu-1"})
    assert settings.lake_on_object_store
    assert settings.lake_uri == "s3://lake/mlops/dev"
    # Landing files stay on the local disk.
    assert settings.landing_root == tmp_path / "dev" / "landing"
    assert settings.storage_options == {
        "aws_region": "eu-1",
        "aws_conditional_put": "etag",
        "aws_endpoint_url": "http://127.0.0.1:8333",
        "aws_virtual_hosted_style_request": "false",
        "aws_allow_http": "true",
        "aws_access_key_id": "key",
        "aws_secret_access_key": "secret",
    }
    spark = settings.spark_storage_conf
    assert spark["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:8333"
    assert spark["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert spark["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert spark["spark.hadoop.fs.s3a.access.key"] == "key"
    assert spark["spark.hadoop.fs.s3a.secret.key"] == "secret"
    # The secret is not shown where settings are printed.
    assert "secret" not in repr(settings.object_store)


def test_tables_on_s3_are_under_the_lake_per_environment_and_the_read_policy_holds():
    dev = Catalog(load_settings({**S3, "MLOPS_ENV": "dev"}))
    table = TableRef("gold", "merchant_category_daily")
    assert dev.uri_for_write(table) == "s3://lake/mlops/dev/gold/merchant_category_daily"
    assert dev.uri_for_read(table, "prod") == "s3://lake/mlops/prod/gold/merchant_category_daily"
    assert dev.storage_options["aws_conditional_put"] == "etag"
    staging = Catalog(load_settings({**S3, "MLOPS_ENV": "staging"}))
    assert (
        staging.uri_for_read(table, "prod") == "s3://lake/mlops/prod/gold/merchant_category_daily"
    )
    with pytest.raises(AccessDeniedError, match="'staging' may not read table .* of 'dev'"):
        staging.uri_for_read(table, "dev")
    with pytest.raises(ValueError, match="use table_uri"):
        dev.table_path(table)
    bucket_only = Catalog(load_settings({**S3, "MLOPS_LAKE_URI": "s3://lake"}))
    assert bucket_only.uri_for_write(table) == "s3://lake/dev/gold/merchant_category_daily"


def test_aws_itself_needs_no_endpoint_and_may_use_the_default_credentials():
    settings = load_settings({"MLOPS_LAKE_URI": "s3://my-lake"})
    assert settings.storage_options == {"aws_region": "us-east-1", "aws_conditional_put": "etag"}
    assert "spark.hadoop.fs.s3a.endpoint" not in settings.spark_storage_conf


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"MLOPS_LAKE_URI": "/data/lake"}, r"MLOPS_LAKE_URI='/data/lake' is not an s3:// URI"),
        ({"MLOPS_LAKE_URI": "s3a://lake/x"}, "is not an s3:// URI"),
        ({"MLOPS_LAKE_URI": "s3://Lake_1/x"}, "'Lake_1' is not an S3 bucket name"),
        ({"MLOPS_LAKE_URI": "s3://lake/../x"}, "without '.', '..'"),
        ({"MLOPS_S3_ENDPOINT": "127.0.0.1:8333"}, "MLOPS_S3_ENDPOINT='127.0.0.1:8333' is not"),
        ({"MLOPS_S3_ENDPOINT": "http://10.0.0.5:8333"}, "plain http is allowed only to a store"),
        ({"MLOPS_S3_ENDPOINT": "http://127.0.0.1:99999"}, "has no valid port"),
        ({"MLOPS_S3_SECRET_ACCESS_KEY": ""}, "MLOPS_S3_ACCESS_KEY_ID is set without its pair"),
        ({"MLOPS_S3_ACCESS_KEY_ID": ""}, "MLOPS_S3_SECRET_ACCESS_KEY is set without its pair"),
        ({"MLOPS_S3_REGION": "EU WEST"}, "MLOPS_S3_REGION='EU WEST' is not a region name"),
    ],
)
def test_bad_object_storage_settings_are_named(variables, message):
    with pytest.raises(SettingsError, match=message):
        load_settings({**S3, **variables})


def test_source_timezones_are_checked_names():
    settings = load_settings({"MLOPS_SOURCE_TIMEZONES": '{"transactions": "Europe/Berlin"}'})
    assert settings.source_timezones == {"transactions": "Europe/Berlin"}
    assert load_settings({}).source_timezones == {}
    with pytest.raises(SettingsError, match="'Mars/Olympus' .*'labels'.* not an IANA"):
        load_settings({"MLOPS_SOURCE_TIMEZONES": '{"labels": "Mars/Olympus"}'})
    with pytest.raises(SettingsError, match="MLOPS_SOURCE_TIMEZONES must be a JSON object"):
        load_settings({"MLOPS_SOURCE_TIMEZONES": '["UTC"]'})


def test_landing_settle_seconds():
    assert load_settings({}).landing_settle_seconds == 2.0
    assert load_settings({"MLOPS_LANDING_SETTLE_SECONDS": "0.5"}).landing_settle_seconds == 0.5
    for bad in ("-1", "nan", "inf", "soon"):
        with pytest.raises(SettingsError, match="MLOPS_LANDING_SETTLE_SECONDS"):
            load_settings({"MLOPS_LANDING_SETTLE_SECONDS": bad})
