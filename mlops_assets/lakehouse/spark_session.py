"""Spark sessions with Delta Lake: the io.delta jars fetched at set-up, the lake's conventions.

Nothing is downloaded at run time: `make jars` copies the io.delta jars matching the installed
delta-spark, and the Hadoop S3A connector matching the Hadoop bundled with pyspark, from Maven
Central into `.jars/` (`python -m mlops_assets.lakehouse.spark_session` prints their
coordinates), and sessions load them from there with `spark.jars`. A session whose settings
reach an S3 store (`spark.hadoop.fs.s3a.*`, from `Settings.spark_storage_conf` when the lake is
on `s3://`) also loads the S3A jars.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
LOOPBACK = ("127.0.0.1", "localhost")


class SparkSetupError(RuntimeError):
    """Spark cannot start as configured: jars missing, versions not matching, bad master."""


def versions() -> dict[str, str]:
    """Versions of the installed pyspark and delta-spark, and the Scala pyspark is built for.

    Raises:
        SparkSetupError: The spark extra is not installed.
    """
    try:
        spark = importlib.metadata.version("pyspark")
        delta = importlib.metadata.version("delta-spark")
    except importlib.metadata.PackageNotFoundError as error:
        raise SparkSetupError(
            f"{error.name} is not installed: install the project's `spark` extra "
            "(`uv sync --extra spark`, which `make install` does)"
        ) from None
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    scala = sorted(
        m.group(1)
        for p in jars.glob("scala-library-*.jar")
        if (m := re.match(r"scala-library-(\d+\.\d+)\.", p.name))
    )
    if not scala:
        raise SparkSetupError(f"no scala-library jar in {jars}: the pyspark install is broken")
    return {"spark": spark, "delta": delta, "scala": scala[0]}


def delta_coordinates() -> list[str]:
    """Maven coordinates of the io.delta jars matching the installed pyspark and delta-spark.

    Since Delta 4.1 the Spark artifact names the Spark minor version it is built for
    (`delta-spark_4.2_2.13`), as delta-spark's own `configure_spark_with_delta_pip` does.
    """
    found = versions()
    spark_minor = ".".join(found["spark"].split(".")[:2])
    return [
        f"io.delta:delta-spark_{spark_minor}_{found['scala']}:{found['delta']}",
        f"io.delta:delta-storage:{found['delta']}",
    ]


# The AWS SDK (v2 bundle) and the S3 analytics accelerator each hadoop-aws release is built
# against (its pom: `aws-java-sdk-v2.version`, `amazon-s3-analyticsaccelerator-s3.version`).
# hadoop-aws must be the exact Hadoop version of pyspark's `hadoop-client-*` jars.
S3A_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "3.5.0": (
        "software.amazon.awssdk:bundle:2.35.4",
        "software.amazon.s3.analyticsaccelerator:analyticsaccelerator-s3:1.3.1",
    ),
}


def hadoop_version() -> str:
    """The Hadoop version bundled with the installed pyspark (`hadoop-client-api-<v>.jar`).

    Raises:
        SparkSetupError: pyspark is not installed, or carries no Hadoop client.
    """
    versions()  # the spark extra is installed
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    found = sorted(
        m.group(1)
        for p in jars.glob("hadoop-client-api-*.jar")
        if (m := re.match(r"hadoop-client-api-(\d+\.\d+\.\d+)\.jar$", p.name))
    )
    if not found:
        raise SparkSetupError(f"no hadoop-client-api jar in {jars}: the pyspark install is broken")
    return found[-1]


def s3a_coordinates() -> list[str]:
    """Maven coordinates of the Hadoop S3A connector matching pyspark's Hadoop.

    Raises:
        SparkSetupError: The Hadoop version has no known AWS SDK pairing (the message names
            what to add to `S3A_DEPENDENCIES`).
    """
    hadoop = hadoop_version()
    if hadoop not in S3A_DEPENDENCIES:
        raise SparkSetupError(
            f"pyspark bundles Hadoop {hadoop}, whose S3A connector's AWS SDK version is not "
            "known here: add it to S3A_DEPENDENCIES (hadoop-project's pom, "
            "aws-java-sdk-v2.version)"
        )
    return [f"org.apache.hadoop:hadoop-aws:{hadoop}", *S3A_DEPENDENCIES[hadoop]]


def _jar_paths(jars_dir: Path, coordinates: list[str], purpose: str) -> list[Path]:
    paths = []
    for coordinate in coordinates:
        _, artifact, version = coordinate.split(":")
        path = jars_dir / f"{artifact}-{version}.jar"
        if not path.is_file():
            raise SparkSetupError(
                f"{path} is missing: Spark needs {coordinate} for {purpose}, fetched at set-up "
                "by `make jars` (nothing is downloaded at run time); or point MLOPS_SPARK_JARS "
                "at the folder holding it"
            )
        paths.append(path)
    return paths


def s3a_jars(jars_dir: Path) -> list[Path]:
    """The S3A connector's jar files in `jars_dir`.

    Raises:
        SparkSetupError: A jar is missing (the message says how to fetch it).
    """
    return _jar_paths(jars_dir, s3a_coordinates(), "s3a:// tables")


def delta_jars(jars_dir: Path) -> list[Path]:
    """The io.delta jar files in `jars_dir`, checked against the installed versions.

    Raises:
        SparkSetupError: A jar is missing (the message says how to fetch it).
    """
    return _jar_paths(jars_dir, delta_coordinates(), "Delta Lake")


def spark_config(
    master: str,
    jars_dir: Path,
    extra: Mapping[str, str] | None = None,
    storage: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Spark configuration of a lake session: Delta on Spark with the lake's conventions.

    The session clock is UTC (event days are UTC days, as on polars); Parquet timestamps are
    written as microseconds, which delta-rs and polars read as they write them; deletion
    vectors stay off so that every engine reading the lake can read what Spark wrote. When
    the settings reach an S3 store (`spark.hadoop.fs.s3a.*`), the S3A connector's jars are
    loaded too and Delta commits to `s3a://` tables through its single-driver S3 log store.

    Args:
        master: `local[*]`, `local[N]`, `spark://host:port` or `sc://host:port`.
        jars_dir: Folder holding the io.delta (and S3A) jars.
        extra: Further settings; they win over these.
        storage: The lake's object-store settings (`Settings.spark_storage_conf`); by
            default the process's settings' (empty when the lake is on the local disk).

    Raises:
        SparkSetupError: The jars are missing.
    """
    if storage is None:
        from mlops_assets.settings import load_settings

        storage = load_settings().spark_storage_conf
    if master.startswith("sc://"):
        # Spark Connect: the server holds the Delta jars and the configuration.
        return {"spark.remote": master, **(extra or {})}
    jars = delta_jars(jars_dir)
    reaches_s3 = any(k.startswith("spark.hadoop.fs.s3a.") for k in {**storage, **(extra or {})})
    if reaches_s3:
        jars += s3a_jars(jars_dir)
    conf = {
        "spark.app.name": "mlops-assets",
        "spark.jars": ",".join(str(p) for p in jars),
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
    }
    conf["spark.master"] = master
    host = urlparse(master).hostname if "://" in master else None
    if master.startswith("local") or host in LOOPBACK:
        # A local session or a cluster on this machine: no other interface is needed.
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
        # Python work on the executors (`mapInArrow`) runs in this environment, which has
        # polars and the project; a bare `python3` on the PATH may not. pyspark reads the
        # workers' interpreter from PYSPARK_PYTHON when the context starts.
        conf["spark.pyspark.python"] = sys.executable
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if master.startswith("local"):
        # Day-sized partitions: a few shuffle partitions, not Spark's cluster default of 200.
        conf["spark.sql.shuffle.partitions"] = "4"
        # Delta rebuilds a table snapshot from its log in this many tasks (50 by default).
        conf["spark.databricks.delta.snapshotPartitions"] = "2"
        conf["spark.driver.memory"] = "2g"
    if reaches_s3:
        # Delta's default for s3a:// (named here so that it shows): commits are serialised
        # within this driver; see the README, "Object storage", for other writers.
        conf["spark.delta.logStore.s3a.impl"] = "io.delta.storage.S3SingleDriverLogStore"
    conf.update(storage)
    conf.update(extra or {})
    return conf


if __name__ == "__main__":
    # `make jars` asks for the coordinates to fetch, one per line.
    print("\n".join(delta_coordinates() + s3a_coordinates()))
    sys.exit(0)
