"""The whole stack: its servers in dependency order, their variables, `up`, `down` and `status`."""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlops_assets.settings import Settings, StackPorts, load_settings
from mlops_assets.stack import dagster_servers, postgres, redis_server, seaweedfs
from mlops_assets.stack.mlflow_server import mlflow_process
from mlops_assets.stack.process import STACK_MARKER, ServerProcess, StackError, free_port, port_open
from mlops_assets.stack.serving import serve_process, stream_worker_process


@dataclasses.dataclass(frozen=True)
class ServerStatus:
    """One server as `mlops stack status` shows it.

    Attributes:
        name: The server's name (also its pid and log file names).
        pid: Its process group id while it runs.
        port: The port it listens on (None for the daemon).
        up: Whether it runs (and its port accepts connections).
        log: Its log file.
    """

    name: str
    pid: int | None
    port: int | None
    up: bool
    log: Path


class Stack:
    """The production-shaped stack of one environment on this machine.

    Servers, in start order: PostgreSQL and Redis (and SeaweedFS when the lake is on an
    `s3://` endpoint on this machine); MLflow (on PostgreSQL); the Dagster webserver, the
    read-only webserver, the Dagster daemon, the serving replicas and the stream worker.
    Every server binds 127.0.0.1, and every state folder, pid and log file is under
    `data/<env>/stack/` (the Dagster home stays `data/<env>/dagster/`).

    Args:
        settings: The environment's settings (`load_settings()` when omitted).
        ports: The servers' ports (`settings.stack_ports` when omitted).
        data_root: A data root other than the settings' (e.g. a test's temporary folder).
        extra_env: Further variables for the Dagster and serving processes (e.g.
            `MLOPS_AUTOMATION`, `MLOPS_CRON_<NAME>`).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        ports: StackPorts | None = None,
        data_root: Path | str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        settings = settings or load_settings()
        if data_root is not None:
            settings = dataclasses.replace(settings, data_root=Path(data_root).resolve())
        self.ports = ports or settings.stack_ports
        self.root = settings.env_root / "stack"
        self.postgres = postgres.Postgres(self.root / "postgres", self.root, self.ports.postgres)
        self.settings = dataclasses.replace(
            settings,
            stack_ports=self.ports,
            dagster_postgres_url=self.postgres.url("dagster"),
            online_store_url=redis_server.url(self.ports.redis),
        )
        self.extra_env = dict(extra_env or {})
        # The lake's object store, when it is an S3 endpoint on this machine (MLOPS_LAKE_URI).
        self.object_store = seaweedfs.stack_object_store(self.settings, self.root)
        env = self.env
        self.redis = redis_server.redis_process(self.root / "redis", self.root, self.ports.redis)
        self.mlflow = mlflow_process(
            self.postgres.url("mlflow"),
            self.root / "mlflow-artifacts",
            self.root,
            self.ports.mlflow,
        )
        self.webserver = dagster_servers.webserver_process(self.root, self.ports.webserver, env)
        self.readonly_webserver = dagster_servers.webserver_process(
            self.root, self.ports.readonly_webserver, env, read_only=True
        )
        self.daemon = dagster_servers.daemon_process(
            self.root, env, self.settings.dagster_postgres_url
        )
        self.replicas = [
            serve_process(number, self.root, port, env)
            for number, port in enumerate(self.ports.serve, start=1)
        ]
        self.stream_worker = stream_worker_process(self.root, env)
        # Every process of the stack (and each child it starts) carries this variable.
        for server in self.servers:
            server.env = {**server.env, STACK_MARKER: str(self.root)}

    @property
    def env_file(self) -> Path:
        """`data/<env>/stack/stack.env`: the stack's variables, for `source` in a shell."""
        return self.root / "stack.env"

    @property
    def env(self) -> dict[str, str]:
        """The variables a process needs to use the stack (the servers' children get them)."""
        settings = self.settings
        return {
            "MLOPS_ENV": settings.env,
            "MLOPS_DATA_ROOT": str(settings.data_root),
            "DAGSTER_HOME": str(settings.dagster_home),
            "MLFLOW_TRACKING_URI": self.urls["mlflow"],
            "MLOPS_ONLINE_STORE": settings.online_store_url,
            "MLOPS_DAGSTER_POSTGRES_URL": settings.dagster_postgres_url,
            # The stream worker scores landed files; the per-file sensor stays off.
            "MLOPS_STREAM_WORKER": "on",
            **self.extra_env,
        }

    @property
    def urls(self) -> dict[str, str]:
        """Where each server answers."""
        ports = self.ports
        urls = {
            "postgres": postgres.libpq_url(postgres.url(ports.postgres, "postgres")),
            "redis": redis_server.url(ports.redis),
            "mlflow": f"http://127.0.0.1:{ports.mlflow}",
            "dagster-webserver": f"http://127.0.0.1:{ports.webserver}",
            "dagster-webserver-readonly": f"http://127.0.0.1:{ports.readonly_webserver}",
        }
        for number, port in enumerate(ports.serve, start=1):
            urls[f"serve-{number}"] = f"http://127.0.0.1:{port}"
        if self.object_store is not None:
            urls["seaweedfs"] = self.object_store.endpoint
        return urls

    @property
    def servers(self) -> list[ServerProcess]:
        """Every server, in start order."""
        store = [self.object_store.server] if self.object_store is not None else []
        return [
            self.postgres.server,
            self.redis,
            *store,
            self.mlflow,
            self.webserver,
            self.readonly_webserver,
            self.daemon,
            *self.replicas,
            self.stream_worker,
        ]

    def _tiers(self) -> list[list[ServerProcess]]:
        """Servers by dependency: each tier needs only the tiers before it.

        PostgreSQL, Redis and the lake's object store (when the stack runs one); MLflow and
        the Dagster processes, which need PostgreSQL; the serving replicas and the stream
        worker, which need MLflow's registry and Redis.
        """
        store = [self.object_store.server] if self.object_store is not None else []
        return [
            [self.postgres.server, self.redis, *store],
            [self.mlflow, self.webserver, self.readonly_webserver, self.daemon],
            [*self.replicas, self.stream_worker],
        ]

    def _prepare_dagster(self) -> None:
        """Write the Dagster home's instance file and create the instance's tables."""
        from mlops_assets.defs.runner import prepare_dagster_home

        prepare_dagster_home(self.settings, set_env=False)
        dagster_servers.initialize_storage(self.settings.dagster_postgres_url)

    def _claim_stores(self) -> None:
        """Stamp the tracking store with the stack's environment as soon as it answers.

        Its first write would stamp it otherwise, whichever environment's process made it.
        (The Dagster instance is stamped by the webserver and the daemon loading the code
        location; each Redis prefix by its environment's first publish.)

        Raises:
            AccessDeniedError: The store is stamped by another environment.
        """
        import mlflow

        from mlops_assets.models.guard import claim_store

        uri = self.urls["mlflow"]
        claim_store(mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), self.settings.env)

    def up(self, on_ready: Callable[[str, float], None] | None = None) -> dict[str, float]:
        """Start every server that is not running, in dependency order, and wait for each.

        The servers of a tier start together once the tier before is ready; the Dagster
        processes start once their tables exist in PostgreSQL (`dagster-storage`). Servers
        that run already are only waited for, so `up` twice is harmless. Then `stack.env` is
        written.

        Args:
            on_ready: Called with each step's name and seconds once it is ready.

        Returns:
            Seconds each step took, by name (`total` for the whole).

        Raises:
            StackError: A server did not start; the others keep running (`down` stops them).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        seconds: dict[str, float] = {}
        errors: list[str] = []

        def step(name: str, start: Callable[[], object]) -> bool:
            begun = time.monotonic()
            try:
                start()
            except Exception as error:  # a step's failure is reported with the others'
                errors.append(str(error) if isinstance(error, StackError) else f"{name}: {error}")
                return False
            seconds[name] = time.monotonic() - begun
            if on_ready is not None:
                on_ready(name, seconds[name])
            return True

        def together(steps: list[tuple[str, Callable[[], object]]]) -> None:
            with ThreadPoolExecutor(max_workers=max(len(steps), 1)) as pool:
                list(pool.map(lambda pair: step(*pair), steps))

        dagster = {self.webserver.name, self.readonly_webserver.name, self.daemon.name}

        def start_dagster() -> None:
            if step("dagster-storage", self._prepare_dagster):
                together([(s.name, s.start) for s in self._tiers()[1] if s.name in dagster])

        starts: dict[str, Callable[[], object]] = {"postgres": self.postgres.start}
        if self.object_store is not None:
            # The server, then the lake's bucket, then a write that lands.
            starts[self.object_store.server.name] = self.object_store.start
        for tier in self._tiers():
            steps = [
                (server.name, starts.get(server.name, server.start))
                for server in tier
                if server.name not in dagster
            ]
            if any(server.name in dagster for server in tier):
                steps.append(("dagster", start_dagster))
            together(steps)
            if errors:
                raise StackError("\n\n".join(errors))
        step("claim-stores", self._claim_stores)
        if errors:
            raise StackError("\n\n".join(errors))
        self.write_env_file()
        seconds["total"] = time.monotonic() - started
        return seconds

    def write_env_file(self) -> Path:
        """Write `stack.env` (`export NAME=value` lines) and return its path."""
        lines = ["# The local stack's variables: `source` this file to use the stack."]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in self.env.items()]
        self.root.mkdir(parents=True, exist_ok=True)
        self.env_file.write_text("\n".join(lines) + "\n")
        return self.env_file

    def down(self, timeout: float = 30.0) -> list[str]:
        """Stop every server, tier by tier in reverse start order, each process group whole.

        Returns:
            The servers that were running.
        """
        stopped: list[str] = []
        for tier in reversed(self._tiers()):
            with ThreadPoolExecutor(max_workers=max(len(tier), 1)) as pool:
                ran = list(pool.map(lambda server: server.stop(timeout), tier))
            stopped += [server.name for server, was in zip(tier, ran, strict=True) if was]
        return stopped

    def status(self) -> list[ServerStatus]:
        """Each server: process group, port, and whether it is up."""
        rows = []
        for server in self.servers:
            pid = server.pid()
            up = pid is not None and (server.port is None or port_open(server.port))
            rows.append(ServerStatus(server.name, pid, server.port, up, server.log_file))
        return rows

    def processes(self) -> list[int]:
        """Live processes started by this stack (its servers and all their children)."""
        marker = f"{STACK_MARKER}={self.root}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                found.append(int(entry.name))
        return found

    def is_up(self) -> bool:
        """Whether every server is up."""
        return all(row.up for row in self.status())


def child_env(stack: Stack) -> dict[str, str]:
    """This process's environment with the stack's variables: for a child process."""
    return {**os.environ, **stack.env}


def free_ports(replicas: int = 1) -> StackPorts:
    """Ports of a stack on free 127.0.0.1 ports (tests and benchmarks beside other stacks)."""
    return StackPorts(
        postgres=free_port(),
        redis=free_port(),
        mlflow=free_port(),
        webserver=free_port(),
        readonly_webserver=free_port(),
        serve=tuple(free_port() for _ in range(replicas)),
    )
