"""SeaweedFS: an S3-compatible object store on this machine, for a lake on `s3://`.

One `weed server` process runs SeaweedFS' master, volume server, filer and S3 gateway, every
port on 127.0.0.1, its data in one folder. The binary is built from the Go module proxy at
set-up (`make weed`, linked to `.tools/bin/weed`); nothing is downloaded at run time, and the
server's telemetry is off. The S3 gateway accepts one identity, whose access key and secret
are generated or given, from an identities file readable only by its owner.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from mlops_assets.settings import DEFAULT_S3_REGION, ObjectStore, Settings, project_root
from mlops_assets.stack.process import ServerProcess, StackError, free_port

DEFAULT_BUCKET = "lake"


def weed_binary() -> str:
    """The `weed` program: `.tools/bin/weed` (`make weed`), else one on the PATH.

    Raises:
        StackError: SeaweedFS is not built.
    """
    linked = project_root() / ".tools" / "bin" / "weed"
    if linked.is_file() and os.access(linked, os.X_OK):
        return str(linked)
    found = shutil.which("weed")
    if not found:
        raise StackError(
            f"SeaweedFS is not built: {linked} is missing; run `make weed` (builds the pinned "
            "version from the Go module proxy once per machine)"
        )
    return found


@dataclasses.dataclass(frozen=True)
class S3Credentials:
    """The S3 gateway's one identity.

    Attributes:
        access_key_id: Access key.
        secret_access_key: Its secret.
    """

    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)

    @classmethod
    def generate(cls) -> S3Credentials:
        """A fresh random key pair."""
        return cls("mlops" + secrets.token_hex(8), secrets.token_urlsafe(30))


@dataclasses.dataclass(frozen=True)
class SeaweedPorts:
    """Ports (127.0.0.1) of one `weed server`: each service's HTTP and gRPC port.

    Attributes:
        s3: The S3 gateway, the only one clients use.
    """

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int

    @classmethod
    def free(cls, s3: int | None = None) -> SeaweedPorts:
        """Ports nothing listens on now, all different (the S3 gateway's `s3` when given)."""
        chosen: list[int] = []
        while len(chosen) < len(dataclasses.fields(cls)) - 1:
            port = free_port()
            if port not in chosen and port != s3:
                chosen.append(port)
        gateway = s3 if s3 is not None else free_port()
        while gateway in chosen:
            gateway = free_port()
        *inner, s3_grpc = chosen
        return cls(*inner, s3=gateway, s3_grpc=s3_grpc)

    @classmethod
    def kept(cls, path: Path, s3: int) -> SeaweedPorts:
        """The ports a server in a lasting folder used before, chosen once and kept in `path`.

        The S3 gateway's port is the lake's endpoint's; the inner ones are chosen free the
        first time (or when the gateway's port changed) and written to `path`.
        """
        try:
            ports = cls(**json.loads(path.read_text()))
            if ports.s3 == s3:
                return ports
        except (FileNotFoundError, ValueError, TypeError):
            pass
        ports = cls.free(s3)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(ports)))
        return ports


def write_identities(path: Path, credentials: S3Credentials) -> Path:
    """Write the S3 gateway's identities file (owner-only): one identity, every action."""
    config = {
        "identities": [
            {
                "name": "mlops",
                "credentials": [
                    {
                        "accessKey": credentials.access_key_id,
                        "secretKey": credentials.secret_access_key,
                    }
                ],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(config, out)
    return path


def seaweedfs_process(
    data_dir: Path, state_dir: Path, ports: SeaweedPorts, identities: Path
) -> ServerProcess:
    """The `weed server` process: master, volume server, filer and S3 gateway on 127.0.0.1.

    Its data (volumes, the master's and the filer's metadata) stays in `data_dir`; its pid
    and log files are `state_dir/seaweedfs.{pid,log}`. Ready when the S3 gateway answers its
    health check.
    """
    data_dir.mkdir(parents=True, exist_ok=True)

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports.s3}/healthz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    return ServerProcess(
        name="seaweedfs",
        command=[
            weed_binary(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data_dir.resolve()}",
            f"-master.port={ports.master}",
            f"-master.port.grpc={ports.master_grpc}",
            # No usage reports leave the machine.
            "-master.telemetry=false",
            # Small volumes (not preallocated), grown as needed: a test's store stays small.
            "-master.volumeSizeLimitMB=512",
            "-volume.max=200",
            f"-volume.port={ports.volume}",
            f"-volume.port.grpc={ports.volume_grpc}",
            "-filer",
            f"-filer.port={ports.filer}",
            f"-filer.port.grpc={ports.filer_grpc}",
            "-s3",
            f"-s3.port={ports.s3}",
            f"-s3.port.grpc={ports.s3_grpc}",
            f"-s3.config={identities.resolve()}",
            # The Iceberg and Lance catalogs of the gateway are not used.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ],
        state_dir=state_dir,
        cwd=data_dir,
        port=ports.s3,
        ready=healthy,
    )


class SeaweedFS:
    """One SeaweedFS server with a bucket for the lake.

    Args:
        data_dir: Where the store keeps its data.
        state_dir: Where its pid, log and identities files go.
        ports: Its ports (free ones when omitted).
        credentials: The S3 identity (generated when omitted).
        bucket: The bucket created at start.
    """

    def __init__(
        self,
        data_dir: Path,
        state_dir: Path,
        ports: SeaweedPorts | None = None,
        credentials: S3Credentials | None = None,
        bucket: str = DEFAULT_BUCKET,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.state_dir = Path(state_dir)
        self.ports = ports or SeaweedPorts.free()
        self.credentials = credentials or S3Credentials.generate()
        self.bucket = bucket
        self.identities = self.state_dir / "seaweedfs-identities.json"
        self.server = seaweedfs_process(self.data_dir, self.state_dir, self.ports, self.identities)

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.ports.s3}"

    def object_store(self, prefix: str = "mlops") -> ObjectStore:
        """The settings of a lake at `s3://<bucket>/<prefix>` on this store."""
        lake = f"s3://{self.bucket}/{prefix}".rstrip("/")
        return ObjectStore(
            lake_uri=lake,
            endpoint=self.endpoint,
            access_key_id=self.credentials.access_key_id,
            secret_access_key=self.credentials.secret_access_key,
            region=DEFAULT_S3_REGION,
        )

    def environ(self, prefix: str = "mlops") -> dict[str, str]:
        """`MLOPS_LAKE_URI` and `MLOPS_S3_*` for a lake at `s3://<bucket>/<prefix>`."""
        store = self.object_store(prefix)
        return {
            "MLOPS_LAKE_URI": store.lake_uri,
            "MLOPS_S3_ENDPOINT": store.endpoint,
            "MLOPS_S3_ACCESS_KEY_ID": store.access_key_id,
            "MLOPS_S3_SECRET_ACCESS_KEY": store.secret_access_key,
            "MLOPS_S3_REGION": store.region,
        }

    def start(self, timeout: float = 120.0) -> None:
        """Start the server, create the bucket and wait until an object can be written.

        Raises:
            StackError: The server did not start, or the bucket cannot be written.
        """
        write_identities(self.identities, self.credentials)
        self.server.start(timeout=timeout)
        self.create_bucket(self.bucket, timeout=timeout)
        self._wait_writable(timeout)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the server's process group; return whether it was running.

        The Unix sockets SeaweedFS opens in /tmp for its own services are removed too (a
        killed server leaves them behind).
        """
        was_running = self.server.stop(timeout)
        if self.server.pid() is None:
            for path in self.sockets():
                path.unlink(missing_ok=True)
        return was_running

    def sockets(self) -> list[Path]:
        """The Unix sockets SeaweedFS opens in /tmp for this server's ports."""
        ports = self.ports
        grpc = {
            "master": ports.master_grpc,
            "volume": ports.volume_grpc,
            "filer": ports.filer_grpc,
            "s3": ports.s3_grpc,
        }
        paths = [Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock") for name, port in grpc.items()]
        paths += [
            Path(f"/tmp/seaweedfs-filer-{ports.filer}.sock"),
            Path(f"/tmp/seaweedfs-s3-{ports.s3}.sock"),
        ]
        return paths

    def shell(self, commands: str, timeout: float = 60.0) -> str:
        """Run `weed shell` commands against the server; return their output.

        A master that has just (re)started may not have elected itself leader yet ("Not
        current leader"): the shell is retried until `timeout` for that answer only.

        Raises:
            StackError: The shell failed.
        """
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(
                [
                    weed_binary(),
                    "shell",
                    # SeaweedFS names a server `host:port.grpcPort` when gRPC is not port + 10000.
                    f"-master=127.0.0.1:{self.ports.master}.{self.ports.master_grpc}",
                    f"-filer=127.0.0.1:{self.ports.filer}.{self.ports.filer_grpc}",
                ],
                input=commands.rstrip("\n") + "\nexit\n",
                capture_output=True,
                text=True,
                timeout=max(deadline - time.monotonic(), 1.0),
                check=False,
                cwd=self.state_dir,
            )
            if done.returncode == 0:
                return done.stdout
            if "Not current leader" not in done.stderr or time.monotonic() > deadline:
                raise StackError(f"weed shell failed ({done.returncode}): {done.stderr[-2000:]}")
            time.sleep(0.5)

    def buckets(self) -> list[str]:
        """The store's buckets."""
        listing = self.shell("s3.bucket.list")
        return [
            line.strip().split()[0]
            for line in listing.splitlines()
            if line.strip() and not line.startswith(">")
        ]

    def create_bucket(self, name: str, timeout: float = 60.0) -> None:
        """Create a bucket unless it exists (the filer may need a moment after start).

        Raises:
            StackError: The bucket is not there after `timeout`.
        """
        deadline = time.monotonic() + timeout
        output = ""
        while time.monotonic() < deadline:
            if name in self.buckets():
                return
            output = self.shell(f"s3.bucket.create -name {name}")
            if name in self.buckets():
                return
            time.sleep(0.5)
        raise StackError(f"seaweedfs: bucket {name!r} could not be created: {output[-1000:]}")

    def _wait_writable(self, timeout: float) -> None:
        """Write and delete a probe object until the store takes writes (volumes allocated)."""
        from pyarrow.fs import S3FileSystem

        store = S3FileSystem(
            access_key=self.credentials.access_key_id,
            secret_key=self.credentials.secret_access_key,
            region=DEFAULT_S3_REGION,
            scheme="http",
            endpoint_override=f"127.0.0.1:{self.ports.s3}",
        )
        probe = f"{self.bucket}/_mlops_probe"
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with store.open_output_stream(probe) as out:
                    out.write(b"ok")
                store.delete_file(probe)
                return
            except OSError as failure:
                error = failure
                time.sleep(0.5)
        raise StackError(
            f"seaweedfs: bucket {self.bucket!r} takes no writes after {timeout:.0f} s: {error}\n"
            f"{self.server.tail()}"
        )


def stack_object_store(settings: Settings, state_dir: Path) -> SeaweedFS | None:
    """The stack's SeaweedFS, when the lake is on `s3://` at an endpoint on this machine.

    The gateway listens on the endpoint's port and accepts the settings' key pair; the bucket
    is the lake's; data, pid, log and port files are in `state_dir` (`data/<env>/stack/`).
    None when the lake is on the local disk or on a store elsewhere.

    Raises:
        StackError: The endpoint is on this machine but the settings hold no key pair.
    """
    store = settings.object_store
    if not store.enabled or not store.endpoint:
        return None
    endpoint = urllib.parse.urlsplit(store.endpoint)
    if endpoint.hostname not in ("127.0.0.1", "localhost") or endpoint.scheme != "http":
        return None
    if not store.access_key_id:
        raise StackError(
            f"the lake is on {store.endpoint}, which the stack runs (SeaweedFS): set "
            "MLOPS_S3_ACCESS_KEY_ID and MLOPS_S3_SECRET_ACCESS_KEY, the key pair it accepts"
        )
    ports = SeaweedPorts.kept(state_dir / "seaweedfs-ports.json", endpoint.port or 80)
    credentials = S3Credentials(store.access_key_id, store.secret_access_key)
    return SeaweedFS(state_dir / "seaweedfs", state_dir, ports, credentials, bucket=store.bucket)


@contextlib.contextmanager
def scratch_s3(state_dir: Path, bucket: str = DEFAULT_BUCKET) -> Iterator[SeaweedFS]:
    """A throwaway S3-compatible store for tests and benchmarks: 127.0.0.1, free ports.

    Yields the started server (its `environ()` and `object_store()` give a lake's settings)
    while the block runs, then stops its process group. The data stays in `state_dir`.

    Raises:
        StackError: SeaweedFS is not built (`make weed`), or did not start.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    server = SeaweedFS(state_dir / "data", state_dir, bucket=bucket)
    try:
        server.start()
        yield server
    finally:
        # A graceful stop takes SeaweedFS 15 to 25 s (its filer flushes and retries); the
        # store is thrown away, so the group is killed after a short wait.
        server.stop(timeout=3)
