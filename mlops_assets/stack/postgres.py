"""PostgreSQL of the stack: one cluster under `data/<env>/stack/postgres`, on 127.0.0.1 only."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from mlops_assets.stack.process import ServerProcess, StackError

# The cluster's superuser; local connections from 127.0.0.1 are trusted (a one-machine stack).
USER = "mlops"
DATABASES = ("dagster", "mlflow")
# Unix socket paths are limited to 107 bytes; longer folders get no socket (TCP only).
_SOCKET_PATH_LIMIT = 100


def bin_dir() -> Path:
    """The folder of PostgreSQL's server programs (`initdb`, `postgres`).

    Raises:
        StackError: PostgreSQL's server is not installed.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda path: int(Path(path).parent.name.split(".")[0]), reverse=True)
    candidates += [Path(path) for path in versions]
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            return candidate
    raise StackError(
        "PostgreSQL's server is not installed (no initdb/postgres under pg_config --bindir or "
        "/usr/lib/postgresql/*/bin); on Debian: apt-get install postgresql"
    )


def _as_server_user() -> list[str]:
    """The prefix running a command as the `postgres` user when we are root (else nothing)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise StackError(
            "PostgreSQL refuses to run as root and there is no `postgres` user to run it as; "
            "install Debian's postgresql package or run the stack as a normal user"
        ) from None
    if shutil.which("setpriv"):
        # setpriv executes the server in place: the pid file names PostgreSQL itself.
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
    return ["runuser", "-u", "postgres", "--"]


def _grant_search(folder: Path) -> None:
    """As root, let the `postgres` user reach `folder`: add search (x) where it is missing.

    Only the traversal bit is added to ancestors other users cannot cross (e.g. a private
    temporary folder); nothing becomes readable.
    """
    user = pwd.getpwnam("postgres")
    for ancestor in reversed(folder.resolve().parents):
        mode = ancestor.stat().st_mode
        owner = ancestor.stat().st_uid == user.pw_uid
        if not (mode & 0o001 or (owner and mode & 0o100)):
            os.chmod(ancestor, mode & 0o7777 | 0o001)


def url(port: int, database: str) -> str:
    """The SQLAlchemy URL of one of the stack's databases (Dagster's and MLflow's stores).

    The driver is named: SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, and the
    stack's drivers are psycopg2's.
    """
    return f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/{database}"


def libpq_url(sqlalchemy_url: str) -> str:
    """The same database as a libpq URL (`psycopg2.connect`): without the driver name."""
    scheme, rest = sqlalchemy_url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


class Postgres:
    """The stack's PostgreSQL cluster: created once, then started and stopped as a server.

    Args:
        data_dir: The cluster's folder (`data/<env>/stack/postgres`).
        state_dir: Folder of the stack's pid and log files.
        port: TCP port on 127.0.0.1.
        databases: Databases created once the server runs.
    """

    def __init__(
        self, data_dir: Path, state_dir: Path, port: int, databases: Sequence[str] = DATABASES
    ) -> None:
        self.data_dir = data_dir
        self.state_dir = state_dir
        self.port = port
        self.databases = tuple(databases)
        socket_dir = str(data_dir.resolve())
        socket_dir = socket_dir if len(socket_dir) < _SOCKET_PATH_LIMIT else ""
        self.server = ServerProcess(
            name="postgres",
            command=[
                *_as_server_user(),
                str(bin_dir() / "postgres"),
                "-D",
                str(data_dir.resolve()),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={socket_dir}",
                # Dagster stores naive timestamps the server fills in (a run's creation time)
                # and reads them as UTC: a server in another zone would age every new run by
                # its offset, and the daemon's run monitoring fails a run it catches not yet
                # queued as "taking longer than 60 seconds to start" at once.
                "-c",
                "timezone=UTC",
                "-c",
                "log_timezone=UTC",
            ],
            state_dir=state_dir,
            port=port,
            ready=self.accepts_queries,
            # Fast shutdown: open sessions are ended, the cluster is shut down cleanly.
            stop_signal=signal.SIGINT,
        )

    def url(self, database: str) -> str:
        """The URL of one of the cluster's databases."""
        return url(self.port, database)

    def initialize(self) -> bool:
        """Create the cluster with `initdb` unless it exists.

        Returns:
            Whether a new cluster was created.
        """
        if (self.data_dir / "PG_VERSION").exists():
            return False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        prefix = _as_server_user()
        if prefix:
            user = pwd.getpwnam("postgres")
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
            _grant_search(self.data_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = self.state_dir / "initdb.log"
        with log.open("wb") as output:
            result = subprocess.run(
                [
                    *prefix,
                    str(bin_dir() / "initdb"),
                    "-D",
                    str(self.data_dir.resolve()),
                    f"--username={USER}",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        if result.returncode != 0:
            raise StackError(f"initdb failed (code {result.returncode}):\n{log.read_text()}")
        return True

    def accepts_queries(self) -> bool:
        """Whether the server answers a query (it accepts connections before it is ready)."""
        import psycopg2

        try:
            with psycopg2.connect(libpq_url(self.url("postgres")), connect_timeout=2) as connection:
                connection.cursor().execute("SELECT 1")
            connection.close()
        except psycopg2.OperationalError:
            return False
        return True

    def create_databases(self) -> list[str]:
        """Create the databases that do not exist yet.

        Returns:
            The databases created.
        """
        import psycopg2

        created = []
        connection = psycopg2.connect(libpq_url(self.url("postgres")), connect_timeout=5)
        try:
            connection.autocommit = True
            cursor = connection.cursor()
            for database in self.databases:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{database}"')
                    created.append(database)
        finally:
            connection.close()
        return created

    def start(self, timeout: float = 60.0) -> int:
        """Create the cluster if needed, start it, create the databases.

        Returns:
            The server's process group id.
        """
        self.initialize()
        if _as_server_user():
            # Folders on the way may have been tightened since initdb (e.g. a fresh temp root).
            _grant_search(self.data_dir)
        pid = self.server.start(timeout)
        self.create_databases()
        return pid
