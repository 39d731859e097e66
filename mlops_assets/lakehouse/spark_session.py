"""Spark sessions with Delta Lake: the io.delta jars fetched at set-up, the lake's conventions.

Nothing is downloaded at run time: `make jars` copies the io.delta jars matching the installed
delta-spark from Maven Central into `.jars/` (`python -m mlops_assets.lakehouse.spark_session`
prints their coordinates), and sessions load them from there with `spark.jars`.
"""

from __future__ import annotations

import importlib.metadata
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


def delta_jars(jars_dir: Path) -> list[Path]:
    """The io.delta jar files in `jars_dir`, checked against the installed versions.

    Raises:
        SparkSetupError: A jar is missing (the message says how to fetch it).
    """
    paths = []
    for coordinate in delta_coordinates():
        _, artifact, version = coordinate.split(":")
        path = jars_dir / f"{artifact}-{version}.jar"
        if not path.is_file():
            raise SparkSetupError(
                f"{path} is missing: Spark needs {coordinate}, fetched at set-up by `make jars` "
                "(nothing is downloaded at run time); or point MLOPS_SPARK_JARS at the folder "
                "holding it"
            )
        paths.append(path)
    return paths


def spark_config(
    master: str, jars_dir: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Spark configuration of a lake session: Delta on Spark with the lake's conventions.

    The session clock is UTC (event days are UTC days, as on polars); Parquet timestamps are
    written as microseconds, which delta-rs and polars read as they write them; deletion
    vectors stay off so that every engine reading the lake can read what Spark wrote.

    Args:
        master: `local[*]`, `local[N]`, `spark://host:port` or `sc://host:port`.
        jars_dir: Folder holding the io.delta jars.
        extra: Further settings; they win over these.

    Raises:
        SparkSetupError: The jars are missing.
    """
    if master.startswith("sc://"):
        # Spark Connect: the server holds the Delta jars and the configuration.
        return {"spark.remote": master, **(extra or {})}
    conf = {
        "spark.app.name": "mlops-assets",
        "spark.jars": ",".join(str(p) for p in delta_jars(jars_dir)),
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
    if master.startswith("local"):
        # Day-sized partitions: a few shuffle partitions, not Spark's cluster default of 200.
        conf["spark.sql.shuffle.partitions"] = "4"
        # Delta rebuilds a table snapshot from its log in this many tasks (50 by default).
        conf["spark.databricks.delta.snapshotPartitions"] = "2"
        conf["spark.driver.memory"] = "2g"
    conf.update(extra or {})
    return conf


if __name__ == "__main__":
    # `make jars` asks for the coordinates to fetch, one per line.
    print("\n".join(delta_coordinates()))
    sys.exit(0)
