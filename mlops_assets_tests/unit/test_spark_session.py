import importlib.metadata

import pytest

from mlops_assets.lakehouse.spark_session import (
    DELTA_CATALOG,
    DELTA_EXTENSION,
    SparkSetupError,
    delta_coordinates,
    spark_config,
)
from mlops_assets.settings import project_root


def test_coordinates_follow_the_installed_pyspark_and_delta_spark():
    spark = importlib.metadata.version("pyspark")
    delta = importlib.metadata.version("delta-spark")
    minor = ".".join(spark.split(".")[:2])
    assert delta_coordinates() == [
        f"io.delta:delta-spark_{minor}_2.13:{delta}",
        f"io.delta:delta-storage:{delta}",
    ]


def test_missing_jars_are_named_with_the_way_to_fetch_them(tmp_path):
    with pytest.raises(SparkSetupError, match=r"delta-spark_.*\.jar is missing.*make jars"):
        spark_config("local[2]", tmp_path)


def test_a_session_gets_delta_utc_and_the_fetched_jars():
    jars = project_root() / ".jars"  # `make jars`, which `make test` runs first
    conf = spark_config("local[2]", jars, {"spark.executor.memory": "4g"})
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION
    assert conf["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.master"] == "local[2]"
    assert conf["spark.executor.memory"] == "4g"
    assert all(p.endswith(".jar") for p in conf["spark.jars"].split(","))
    cluster = spark_config("spark://10.0.0.5:7077", jars)
    assert "spark.driver.host" not in cluster
    assert spark_config("sc://127.0.0.1:15002", jars) == {"spark.remote": "sc://127.0.0.1:15002"}
