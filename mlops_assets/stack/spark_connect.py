"""A Spark Connect server started from the pyspark distribution, with the lake's Delta setup.

`pyspark/jars` carries Spark Connect's server (`spark-connect_<scala>-<version>.jar`); the
server is `spark-submit --class org.apache.spark.sql.connect.service.SparkConnectServer` with
the io.delta jars `make jars` fetched, the lake's session settings (`spark_session.
spark_config`) and its gRPC endpoint bound to 127.0.0.1. Clients reach it as
`sc://127.0.0.1:<port>` (`MLOPS_SPARK_REMOTE`). Python work the clients send (`mapInArrow`)
runs in the server's Python workers: this interpreter, which has the project.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from mlops_assets.lakehouse.spark_session import SparkSetupError, spark_config
from mlops_assets.stack.process import ServerProcess, free_port

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
# Settings of the client session that are the server's to hold (set on the command line).
_SERVER_ONLY = ("spark.master", "spark.app.name", "spark.jars", "spark.remote")


def spark_home() -> Path:
    """The pyspark distribution's folder (its `bin/spark-submit` and `jars/`).

    Raises:
        SparkSetupError: pyspark is missing or carries no Spark Connect server jar.
    """
    try:
        import pyspark
    except ImportError:
        raise SparkSetupError(
            "pyspark is not installed: install the project's `spark` extra"
        ) from None
    home = Path(pyspark.__file__).parent
    if not any((home / "jars").glob("spark-connect_*.jar")):
        raise SparkSetupError(f"{home / 'jars'} holds no spark-connect jar: no Connect server")
    return home


def connect_server(
    state_dir: Path, port: int, jars_dir: Path, master: str = "local[2]"
) -> ServerProcess:
    """The Spark Connect server of a lake: its command, log and readiness.

    Args:
        state_dir: Folder of its pid and log files (and Spark's scratch space).
        port: gRPC port on 127.0.0.1.
        jars_dir: Folder of the io.delta jars.
        master: The server's own Spark master.

    Raises:
        SparkSetupError: pyspark or the Delta jars are missing.
    """
    home = spark_home()
    conf = spark_config(master, jars_dir, storage={})
    command = [
        str(home / "bin" / "spark-submit"),
        "--class",
        SERVER_CLASS,
        "--master",
        master,
        "--name",
        "mlops-spark-connect",
        "--jars",
        conf["spark.jars"],
    ]
    settings = {
        **{k: v for k, v in conf.items() if k not in _SERVER_ONLY},
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.local.dir": str(state_dir / "spark-local"),
        "spark.sql.warehouse.dir": str(state_dir / "spark-warehouse"),
    }
    for key, value in settings.items():
        command += ["--conf", f"{key}={value}"]
    # spark-submit wants a primary resource; the server class lives in the Connect jar.
    command.append(str(next((home / "jars").glob("spark-connect_*.jar"))))
    return ServerProcess(
        name="spark-connect",
        command=command,
        state_dir=state_dir,
        env={
            "SPARK_HOME": str(home),
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1",
        },
        cwd=state_dir,
        port=port,
    )


@contextlib.contextmanager
def scratch_connect_server(
    state_dir: Path, jars_dir: Path, master: str = "local[2]", timeout: float = 240.0
) -> Iterator[str]:
    """A Spark Connect server on a free 127.0.0.1 port for the block; its URL.

    The server's whole process group is stopped on the way out.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    server = connect_server(state_dir, free_port(), jars_dir, master)
    server.start(timeout=timeout)
    try:
        yield f"sc://127.0.0.1:{server.port}"
    finally:
        server.stop()
