"""The active environment, its paths and policies: the one place that reads MLOPS_* variables."""

from __future__ import annotations

import datetime
import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from mlops_assets.access import ENVIRONMENTS, READ_POLICY

__all__ = ["ENVIRONMENTS", "READ_POLICY"]  # re-exported: the policy itself is in access.py

DEFAULT_START_DATE = datetime.date(2026, 1, 1)
DEFAULT_LANDING_SETTLE_SECONDS = 2.0


class Engine(StrEnum):
    """Dataframe engine that runs the transforms and the Delta I/O of an asset group.

    `polars`: polars + delta-rs in the Dagster process (the embedded default, fastest on one
    machine). `spark`: PySpark with Delta Lake on Spark, on the configured Spark master.
    """

    POLARS = "polars"
    SPARK = "spark"


# Asset groups whose engine can be chosen on its own (`MLOPS_ENGINE_<GROUP>`); a group's
# quarantine table is written by the same asset, so it follows its group.
ENGINE_GROUPS = (
    "bronze",
    "silver",
    "gold",
    "features",
    "online",
    "ml",
    "serving",
    "monitoring",
)
# Groups whose engine computes their statistics while their (small) tables stay on delta-rs.
# On Spark, `ml` builds its training sets there (written by delta-rs for the trainer) and
# `serving` scores its batches there, appending to the inference log with Delta on Spark.
STATISTICS_GROUPS = ("ml", "serving", "monitoring")
DEFAULT_SPARK_MASTER = "local[*]"

# Cron of each schedule (UTC), overridable per schedule with `MLOPS_CRON_<NAME>`. The daily
# ones catch up: each tick requests every landing day that is complete and not yet done.
DEFAULT_CRONS: dict[str, str] = {
    "medallion": "30 0 * * *",
    "refresh": "30 1 * * *",
    "serve_and_monitor": "30 2 * * *",
    "weekly_retrain": "0 3 * * 1",
}


class SettingsError(ValueError):
    """A setting names an unknown environment, engine or path."""


@dataclass(frozen=True)
class StackPorts:
    """TCP ports (on 127.0.0.1) of the servers of the local stack (`mlops stack up`).

    Each is overridable with `MLOPS_STACK_<NAME>_PORT` (`MLOPS_STACK_POSTGRES_PORT`, ...);
    the serving replicas with `MLOPS_STACK_SERVE_PORTS`, a comma-separated list with one
    port per replica.

    Attributes:
        postgres: PostgreSQL (the Dagster instance's storage and MLflow's backend store).
        redis: Redis (the online store shared by the serving replicas).
        mlflow: The MLflow tracking server and model registry.
        webserver: The Dagster webserver.
        readonly_webserver: A second Dagster webserver in read-only mode.
        serve: The `mlops serve` replicas, one port each.
    """

    postgres: int = 15432
    redis: int = 16379
    mlflow: int = 5000
    webserver: int = 3000
    readonly_webserver: int = 3001
    serve: tuple[int, ...] = (8000, 8001)

    def __post_init__(self) -> None:
        ports = [self.postgres, self.redis, self.mlflow, self.webserver]
        ports += [self.readonly_webserver, *self.serve]
        if not self.serve:
            raise SettingsError("the stack needs at least one serving port")
        if any(not 0 < port < 65536 for port in ports):
            raise SettingsError(f"stack ports must be between 1 and 65535: {ports}")
        if len(set(ports)) != len(ports):
            raise SettingsError(f"stack ports must differ from each other: {ports}")


# --- Object storage: the lake on an S3-compatible store -------------------------------------
#
# `MLOPS_LAKE_URI` moves the Delta tables off the local disk (landing files, the online store
# and MLflow stay where they are). Everything about the store is read here and handed out as
# delta-rs storage options (`Settings.storage_options`) and Spark S3A settings
# (`Settings.spark_storage_conf`).

DEFAULT_S3_REGION = "us-east-1"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ObjectStore:
    """Where the lake lives when it is not on the local disk: an S3-compatible object store.

    Attributes:
        lake_uri: `s3://bucket/prefix` holding every environment's tables
            (`<lake_uri>/<env>/<layer>/<table>`); empty for the local data root
            (`data/<env>/lake/`), the embedded default.
        endpoint: The store's URL (`http://127.0.0.1:8333`); empty for AWS's own endpoint of
            the region.
        access_key_id: Access key; empty (with the secret) for the AWS default credential
            chain (`AWS_*` variables, profile, instance role).
        secret_access_key: Secret of the access key.
        region: The store's region (S3-compatible servers accept any; signing needs one).
    """

    lake_uri: str = ""
    endpoint: str = ""
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    region: str = DEFAULT_S3_REGION

    def __post_init__(self) -> None:
        lake = self.lake_uri
        if lake:
            parsed = urllib.parse.urlsplit(lake)
            if parsed.scheme != "s3":
                raise SettingsError(
                    f"MLOPS_LAKE_URI={lake!r} is not an s3:// URI (s3://bucket/prefix); leave "
                    "it empty for the local data root (MLOPS_DATA_ROOT)"
                )
            if not _BUCKET.match(parsed.netloc) or ".." in parsed.netloc:
                raise SettingsError(
                    f"MLOPS_LAKE_URI={lake!r}: {parsed.netloc!r} is not an S3 bucket name "
                    "(3 to 63 lowercase letters, digits, dots and hyphens)"
                )
            parts = [p for p in parsed.path.split("/") if p]
            if parsed.query or parsed.fragment or any(p in (".", "..") for p in parts):
                raise SettingsError(
                    f"MLOPS_LAKE_URI={lake!r} must be s3://bucket/prefix without '.', '..', "
                    "a query or a fragment"
                )
        if self.endpoint:
            parsed = urllib.parse.urlsplit(self.endpoint)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise SettingsError(
                    f"MLOPS_S3_ENDPOINT={self.endpoint!r} is not an http(s) URL "
                    "(http://127.0.0.1:8333)"
                )
            try:
                parsed.port  # noqa: B018 - a bad port raises
            except ValueError:
                raise SettingsError(
                    f"MLOPS_S3_ENDPOINT={self.endpoint!r} has no valid port"
                ) from None
            if parsed.scheme == "http" and parsed.hostname not in _LOOPBACK_HOSTS:
                raise SettingsError(
                    f"MLOPS_S3_ENDPOINT={self.endpoint!r}: plain http is allowed only to a store "
                    "on this machine (127.0.0.1, localhost); use https"
                )
        if bool(self.access_key_id) != bool(self.secret_access_key):
            given = "MLOPS_S3_ACCESS_KEY_ID" if self.access_key_id else "MLOPS_S3_SECRET_ACCESS_KEY"
            raise SettingsError(
                f"{given} is set without its pair: set both MLOPS_S3_ACCESS_KEY_ID and "
                "MLOPS_S3_SECRET_ACCESS_KEY, or neither (the AWS default credential chain)"
            )
        if not re.match(r"^[a-z0-9-]+$", self.region):
            raise SettingsError(f"MLOPS_S3_REGION={self.region!r} is not a region name (us-east-1)")

    @property
    def enabled(self) -> bool:
        """Whether the lake is on the object store (else on the local disk)."""
        return bool(self.lake_uri)

    @property
    def bucket(self) -> str:
        """The lake's bucket (empty for a local lake)."""
        return urllib.parse.urlsplit(self.lake_uri).netloc if self.lake_uri else ""

    @property
    def prefix(self) -> str:
        """Key prefix of the lake inside its bucket, without slashes at its ends."""
        return urllib.parse.urlsplit(self.lake_uri).path.strip("/") if self.lake_uri else ""

    def lake_uri_of(self, env: str) -> str:
        """`s3://bucket/prefix/<env>`: the root of one environment's tables."""
        return "/".join(p for p in (f"s3://{self.bucket}", self.prefix, env) if p)

    @property
    def plain_http(self) -> bool:
        """Whether the endpoint is plain HTTP (a store on this machine or a test server)."""
        return self.endpoint.startswith("http://")

    def storage_options(self) -> dict[str, str]:
        """delta-rs (and polars) storage options; empty for a local lake.

        Commits are conditional PUTs (`conditional_put=etag`): a commit whose version another
        writer took first fails and is retried on top of it, so concurrent writers need no
        lock service.
        """
        if not self.enabled:
            return {}
        options = {"aws_region": self.region, "aws_conditional_put": "etag"}
        if self.endpoint:
            options["aws_endpoint_url"] = self.endpoint
            # Path-style requests (http://host:port/bucket/key): S3-compatible servers do not
            # serve bucket subdomains.
            options["aws_virtual_hosted_style_request"] = "false"
        if self.plain_http:
            options["aws_allow_http"] = "true"
        if self.access_key_id:
            options["aws_access_key_id"] = self.access_key_id
            options["aws_secret_access_key"] = self.secret_access_key
        return options

    def spark_conf(self) -> dict[str, str]:
        """Hadoop S3A settings of a Spark session (`spark.hadoop.fs.s3a.*`); empty for local.

        Spark reads and writes the lake as `s3a://` (`spark_io` maps `s3://` URIs); Delta on Spark
        commits through its S3 log store (single driver: see the README, "Object storage").
        """
        if not self.enabled:
            return {}
        conf = {
            "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
            "spark.hadoop.fs.s3a.endpoint.region": self.region,
            "spark.hadoop.fs.s3a.path.style.access": "true",
        }
        if self.endpoint:
            conf["spark.hadoop.fs.s3a.endpoint"] = self.endpoint
            conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(not self.plain_http).lower()
        if self.access_key_id:
            conf["spark.hadoop.fs.s3a.access.key"] = self.access_key_id
            conf["spark.hadoop.fs.s3a.secret.key"] = self.secret_access_key
            conf["spark.hadoop.fs.s3a.aws.credentials.provider"] = (
                "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
            )
        return conf


def _object_store(environ: Mapping[str, str]) -> ObjectStore:
    """The object store settings: `MLOPS_LAKE_URI` and `MLOPS_S3_*`."""
    return ObjectStore(
        lake_uri=environ.get("MLOPS_LAKE_URI", "").strip().rstrip("/"),
        endpoint=environ.get("MLOPS_S3_ENDPOINT", "").strip().rstrip("/"),
        access_key_id=environ.get("MLOPS_S3_ACCESS_KEY_ID", "").strip(),
        secret_access_key=environ.get("MLOPS_S3_SECRET_ACCESS_KEY", "").strip(),
        region=environ.get("MLOPS_S3_REGION", "").strip() or DEFAULT_S3_REGION,
    )


# --- End of the object storage section ------------------------------------------------------


def project_root() -> Path:
    """Return the repository root (the folder holding `pyproject.toml`)."""
    return Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    """Resolved settings of one environment.

    Attributes:
        env: The active environment, one of `dev`, `staging`, `prod`.
        data_root: Folder holding every environment's root (`data/` by default).
        engine: Dataframe engine for transforms.
        start_date: First day of the daily partitions.
        group_engines: Engine per asset group where it differs from `engine`.
        spark_master: Spark master URL: `local[*]`, `local[N]`, `spark://host:port` (a
            standalone cluster) or `sc://host:port` (Spark Connect).
        spark_jars_dir: Folder holding the io.delta jars `make jars` fetched.
        spark_conf: Further Spark configuration (object storage credentials, memory, ...).
        crons: Cron (UTC) of each schedule, by name (`DEFAULT_CRONS`).
        automation: Whether schedules and sensors run by default when the daemon starts;
            None means "prod only".
        online_store_url: The online store: empty for the embedded SQLite file under
            `data/<env>/online/`, or `redis://host:port/db` for a Redis server shared by
            several serving replicas.
        dagster_postgres_url: PostgreSQL URL of the Dagster instance's run, event-log and
            schedule storage; empty for the embedded SQLite instance under `data/<env>/dagster`.
        stack_ports: Ports of the local stack's servers (`mlops stack up`).
        sensor_interval_seconds: Minimum interval of every polling sensor when set (each
            sensor's own interval otherwise), e.g. short in an end-to-end test.
        stream_worker: Landed files are scored by the long-lived stream worker (`mlops
            stream`), so the `landed_transactions` sensor stays off by default.
        monitoring: Drift, performance and retraining thresholds that differ from the
            monitoring resource's defaults (`{"label_maturity_days": 2}`).
        object_store: Where the lake lives when it is not on the local disk (`MLOPS_LAKE_URI`,
            `MLOPS_S3_*`); see `lake_uri` and `storage_options`.
        alert_webhook_url: Where the monitoring alerts are POSTed as JSON
            (`MLOPS_ALERT_WEBHOOK_URL`, an http(s) URL); empty for none.
        source_timezones: The time zone each landing source's times without an offset are
            in (`MLOPS_SOURCE_TIMEZONES`, e.g. `{"transactions": "Europe/Berlin"}`); a
            source not named here must send every time with an offset (or `Z`).
        landing_settle_seconds: How long a landed file must be unchanged (size and
            modification time) before streaming takes it (`MLOPS_LANDING_SETTLE_SECONDS`):
            the guard for writers that do not rename a finished file into place.
        tracking_uris: The MLflow tracking store of other environments, where it is not
            their embedded SQLite file (`MLOPS_TRACKING_URI_<ENV>`, e.g.
            `MLOPS_TRACKING_URI_PROD=http://127.0.0.1:5000`): what `mlflow_uri_of` reads,
            policy permitting.
    """

    env: str
    data_root: Path
    engine: Engine = Engine.POLARS
    start_date: datetime.date = DEFAULT_START_DATE
    group_engines: dict[str, Engine] = field(default_factory=dict)
    spark_master: str = DEFAULT_SPARK_MASTER
    spark_jars_dir: Path = field(default_factory=lambda: project_root() / ".jars")
    spark_conf: dict[str, str] = field(default_factory=dict)
    crons: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CRONS))
    automation: bool | None = None
    online_store_url: str = ""
    dagster_postgres_url: str = ""
    stack_ports: StackPorts = field(default_factory=StackPorts)
    sensor_interval_seconds: int | None = None
    stream_worker: bool = False
    monitoring: dict[str, float | int | str] = field(default_factory=dict)
    object_store: ObjectStore = field(default_factory=ObjectStore)
    alert_webhook_url: str = ""
    source_timezones: dict[str, str] = field(default_factory=dict)
    landing_settle_seconds: float = DEFAULT_LANDING_SETTLE_SECONDS
    tracking_uris: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.env not in ENVIRONMENTS:
            raise SettingsError(
                f"MLOPS_ENV={self.env!r} is not an environment; "
                f"use one of {', '.join(ENVIRONMENTS)}"
            )
        unknown = sorted(set(self.group_engines) - set(ENGINE_GROUPS))
        if unknown:
            raise SettingsError(
                f"engine set for unknown asset groups {', '.join(unknown)}; groups with an "
                f"engine of their own are {', '.join(ENGINE_GROUPS)}"
            )

    def engine_for(self, group: str) -> Engine:
        """The engine that runs an asset group: its own setting, else the environment's."""
        if group not in ENGINE_GROUPS:
            raise SettingsError(
                f"asset group {group!r} has no engine setting; use one of "
                f"{', '.join(ENGINE_GROUPS)}"
            )
        return self.group_engines.get(group, self.engine)

    @property
    def automation_on(self) -> bool:
        """Whether schedules and sensors run by default: prod yes, others when asked."""
        return self.env == "prod" if self.automation is None else self.automation

    def cron(self, name: str) -> str:
        """The cron of a schedule (`DEFAULT_CRONS` names them)."""
        if name not in self.crons:
            raise SettingsError(
                f"no schedule named {name!r}; schedules are {', '.join(self.crons)}"
            )
        return self.crons[name]

    @property
    def env_root(self) -> Path:
        """Root of the active environment: every write lands under it."""
        return self.data_root / self.env

    @property
    def landing_root(self) -> Path:
        """Where raw landing files arrive."""
        return self.env_root / "landing"

    @property
    def lake_root(self) -> Path:
        """Where the Delta tables live, one folder per layer."""
        return self.env_root / "lake"

    @property
    def mlflow_uri(self) -> str:
        """MLflow tracking and registry store: `MLFLOW_TRACKING_URI`, else the env's SQLite."""
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.env_root / 'mlflow.db'}"

    def mlflow_uri_of(self, env: str) -> str:
        """The tracking and registry store of an environment (unchecked: see `access`).

        The active environment's is `mlflow_uri`; another's is `MLOPS_TRACKING_URI_<ENV>`
        when set, else its embedded SQLite file.
        """
        if env == self.env:
            return self.mlflow_uri
        return self.tracking_uris.get(env) or f"sqlite:///{self.env_root_of(env) / 'mlflow.db'}"

    @property
    def online_store_path(self) -> Path:
        """The embedded online feature store of the environment."""
        return self.env_root / "online" / "features.sqlite"

    @property
    def webhook_inbox_path(self) -> Path:
        """Registry webhook deliveries accepted for the CD sensor."""
        return self.env_root / "cd" / "webhooks.sqlite"

    @property
    def dagster_home(self) -> Path:
        """Dagster run and event storage of the environment."""
        return self.env_root / "dagster"

    # Object storage (see `ObjectStore`) ------------------------------------------------------

    @property
    def lake_on_object_store(self) -> bool:
        """Whether the lake's tables live on the object store (`MLOPS_LAKE_URI`)."""
        return self.object_store.enabled

    @property
    def lake_uri(self) -> str:
        """Root of the active environment's tables: `s3://bucket/prefix/<env>` or `lake_root`."""
        return self.lake_uri_of(self.env)

    def lake_uri_of(self, env: str) -> str:
        """Root of an environment's tables (`<layer>/<table>` below it)."""
        if self.object_store.enabled:
            if env not in ENVIRONMENTS:
                raise SettingsError(
                    f"{env!r} is not an environment; use one of {', '.join(ENVIRONMENTS)}"
                )
            return self.object_store.lake_uri_of(env)
        return str(self.env_root_of(env) / "lake")

    @property
    def storage_options(self) -> dict[str, str]:
        """delta-rs storage options of the lake (endpoint, keys, region, conditional put).

        Empty when the lake is on the local disk.
        """
        return self.object_store.storage_options()

    @property
    def spark_storage_conf(self) -> dict[str, str]:
        """Spark's Hadoop S3A settings for the lake; empty when it is on the local disk."""
        return self.object_store.spark_conf()

    def env_root_of(self, env: str) -> Path:
        """Root of another environment, for policy-checked reads."""
        if env not in ENVIRONMENTS:
            raise SettingsError(
                f"{env!r} is not an environment; use one of {', '.join(ENVIRONMENTS)}"
            )
        return self.data_root / env


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build settings from environment variables.

    Variables: `MLOPS_ENV` (dev, staging, prod; default dev), `MLOPS_DATA_ROOT` (default
    `<repo>/data`), `MLOPS_ENGINE` (polars or spark; default polars), `MLOPS_ENGINE_<GROUP>`
    (the engine of one asset group: BRONZE, SILVER, GOLD, FEATURES, ONLINE, ML, SERVING,
    MONITORING), `MLOPS_START_DATE`
    (first partition day, ISO date; default 2026-01-01), `MLOPS_SPARK_MASTER` (default
    `local[*]`), `MLOPS_SPARK_REMOTE` (a Spark Connect server, `sc://host:port`; it wins over
    the master), `MLOPS_SPARK_JARS` (folder of the io.delta jars; default `<repo>/.jars`),
    `MLOPS_SPARK_CONF` (a JSON object of further Spark settings), `MLOPS_CRON_<SCHEDULE>`
    (the cron of one schedule: MEDALLION, REFRESH, SERVE_AND_MONITOR, WEEKLY_RETRAIN),
    `MLOPS_AUTOMATION` (`on` or `off`: schedules and sensors running by default; default on
    in prod only), `MLOPS_ONLINE_STORE` (`redis://host:port/db`; default the embedded SQLite
    file), `MLOPS_DAGSTER_POSTGRES_URL` (PostgreSQL storage of the Dagster instance),
    `MLOPS_STACK_<NAME>_PORT` (a port of the local stack: POSTGRES, REDIS, MLFLOW, WEBSERVER,
    READONLY_WEBSERVER) and `MLOPS_STACK_SERVE_PORTS` (the serving replicas' ports, e.g.
    `8000,8001`), `MLOPS_SENSOR_INTERVAL_SECONDS` (minimum interval of every polling
    sensor), `MLOPS_STREAM_WORKER` (`on`: the stream worker scores landed files),
    `MLOPS_MONITORING` (a JSON object of monitoring thresholds, e.g.
    `{"label_maturity_days": 2, "min_labelled_days": 3}`), `MLOPS_LAKE_URI` (the lake on an
    S3-compatible store, `s3://bucket/prefix`; default the local data root) with
    `MLOPS_S3_ENDPOINT`, `MLOPS_S3_ACCESS_KEY_ID`, `MLOPS_S3_SECRET_ACCESS_KEY` and
    `MLOPS_S3_REGION` (default us-east-1), `MLOPS_ALERT_WEBHOOK_URL` (an http(s) URL the
    monitoring alerts are POSTed to; default none), `MLOPS_SOURCE_TIMEZONES` (a JSON object
    of landing source to IANA time zone, for sources that send times without an offset;
    default none) and `MLOPS_LANDING_SETTLE_SECONDS` (how long a landed file must be
    unchanged before streaming takes it; default 2).

    Args:
        environ: Variables to read; `os.environ` when omitted.

    Returns:
        The resolved settings.

    Raises:
        SettingsError: A variable holds a value that is not allowed.
    """
    environ = dict(os.environ) if environ is None else environ
    env = environ.get("MLOPS_ENV", "dev").strip().lower() or "dev"
    data_root = Path(environ.get("MLOPS_DATA_ROOT") or project_root() / "data").resolve()
    engine = _engine(environ, "MLOPS_ENGINE") or Engine.POLARS
    group_engines = {
        group: chosen
        for group in ENGINE_GROUPS
        if (chosen := _engine(environ, f"MLOPS_ENGINE_{group.upper()}")) is not None
    }
    spark_master = environ.get("MLOPS_SPARK_MASTER", "").strip() or DEFAULT_SPARK_MASTER
    if not spark_master.startswith(("local", "spark://", "sc://", "yarn", "k8s://")):
        raise SettingsError(
            f"MLOPS_SPARK_MASTER={spark_master!r} is not a Spark master URL; use local[*], "
            "local[N], spark://host:port, sc://host:port, yarn or k8s://..."
        )
    remote = environ.get("MLOPS_SPARK_REMOTE", "").strip()
    if remote:
        # A Spark Connect server: the session is a thin client, the server holds Spark.
        if not remote.startswith("sc://"):
            raise SettingsError(
                f"MLOPS_SPARK_REMOTE={remote!r} is not a Spark Connect URL; use "
                "sc://host:port (e.g. sc://127.0.0.1:15002)"
            )
        spark_master = remote
    jars_dir = Path(environ.get("MLOPS_SPARK_JARS") or project_root() / ".jars").resolve()
    spark_conf = _json(environ, "MLOPS_SPARK_CONF")
    if not isinstance(spark_conf, dict) or not all(
        isinstance(v, str | int | float | bool) for v in spark_conf.values()
    ):
        raise SettingsError(
            "MLOPS_SPARK_CONF must be a JSON object of Spark keys to plain values, e.g. "
            '{"spark.executor.memory": "4g"}'
        )
    start_text = environ.get("MLOPS_START_DATE", DEFAULT_START_DATE.isoformat())
    try:
        start_date = datetime.date.fromisoformat(start_text)
    except ValueError:
        raise SettingsError(
            f"MLOPS_START_DATE={start_text!r} is not an ISO date (YYYY-MM-DD)"
        ) from None
    crons = dict(DEFAULT_CRONS)
    for name in DEFAULT_CRONS:
        variable = f"MLOPS_CRON_{name.upper()}"
        text = environ.get(variable, "").strip()
        if text:
            if len(text.split()) != 5:
                raise SettingsError(
                    f"{variable}={text!r} is not a cron of five fields (minute hour day month "
                    "weekday), e.g. '30 0 * * *' or '* * * * *'"
                )
            crons[name] = text
    automation_text = environ.get("MLOPS_AUTOMATION", "").strip().lower()
    if automation_text not in ("", "on", "off"):
        raise SettingsError(f"MLOPS_AUTOMATION={automation_text!r} must be on or off")
    online_store_url = environ.get("MLOPS_ONLINE_STORE", "").strip()
    if online_store_url and not online_store_url.startswith(("redis://", "rediss://")):
        raise SettingsError(
            f"MLOPS_ONLINE_STORE={online_store_url!r} is not a Redis URL (redis://host:port/db); "
            "leave it empty for the embedded SQLite store"
        )
    postgres_url = environ.get("MLOPS_DAGSTER_POSTGRES_URL", "").strip()
    if postgres_url and not postgres_url.startswith(
        ("postgresql://", "postgres://", "postgresql+")
    ):
        raise SettingsError(
            f"MLOPS_DAGSTER_POSTGRES_URL={postgres_url!r} is not a PostgreSQL URL "
            "(postgresql+psycopg2://user@host:port/db)"
        )
    interval_text = environ.get("MLOPS_SENSOR_INTERVAL_SECONDS", "").strip()
    if interval_text and not (interval_text.isdigit() and int(interval_text) > 0):
        raise SettingsError(
            f"MLOPS_SENSOR_INTERVAL_SECONDS={interval_text!r} is not a whole number of seconds"
        )
    worker_text = environ.get("MLOPS_STREAM_WORKER", "").strip().lower()
    if worker_text not in ("", "on", "off"):
        raise SettingsError(f"MLOPS_STREAM_WORKER={worker_text!r} must be on or off")
    monitoring = _json(environ, "MLOPS_MONITORING")
    if not isinstance(monitoring, dict) or not all(
        isinstance(v, int | float | str) and not isinstance(v, bool) for v in monitoring.values()
    ):
        raise SettingsError(
            "MLOPS_MONITORING must be a JSON object of threshold names to values, e.g. "
            '{"label_maturity_days": 2}'
        )
    return Settings(
        env=env,
        data_root=data_root,
        engine=engine,
        start_date=start_date,
        group_engines=group_engines,
        spark_master=spark_master,
        spark_jars_dir=jars_dir,
        spark_conf={str(k): str(v) for k, v in spark_conf.items()},
        crons=crons,
        automation=None if not automation_text else automation_text == "on",
        online_store_url=online_store_url,
        dagster_postgres_url=postgres_url,
        stack_ports=_stack_ports(environ),
        sensor_interval_seconds=int(interval_text) if interval_text else None,
        stream_worker=worker_text == "on",
        monitoring=monitoring,
        object_store=_object_store(environ),
        alert_webhook_url=_webhook_url(environ),
        source_timezones=_source_timezones(environ),
        landing_settle_seconds=_settle_seconds(environ),
        tracking_uris=_tracking_uris(environ, env),
    )


def _tracking_uris(environ: Mapping[str, str], env: str) -> dict[str, str]:
    """`MLOPS_TRACKING_URI_<ENV>` of the environments other than the active one."""
    found = {}
    for other in ENVIRONMENTS:
        uri = environ.get(f"MLOPS_TRACKING_URI_{other.upper()}", "").strip()
        if other != env and uri:
            found[other] = uri
    return found


def _json(environ: Mapping[str, str], variable: str) -> object:
    """The JSON value of a variable (an empty object when unset)."""
    text = environ.get(variable, "").strip() or "{}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SettingsError(f"{variable} is not JSON: {error}") from None


def _source_timezones(environ: dict[str, str]) -> dict[str, str]:
    """Declared time zones of landing sources (`MLOPS_SOURCE_TIMEZONES`), each checked."""
    import zoneinfo

    zones = _json(environ, "MLOPS_SOURCE_TIMEZONES")
    if not isinstance(zones, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in zones.items()
    ):
        raise SettingsError(
            "MLOPS_SOURCE_TIMEZONES must be a JSON object of source to time zone, e.g. "
            '{"transactions": "Europe/Berlin"}'
        )
    for source, zone in zones.items():
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise SettingsError(
                f"MLOPS_SOURCE_TIMEZONES: {zone!r} (source {source!r}) is not an IANA time "
                "zone name such as UTC or Europe/Berlin"
            ) from None
    return dict(zones)


def _settle_seconds(environ: dict[str, str]) -> float:
    """`MLOPS_LANDING_SETTLE_SECONDS`: a non-negative number of seconds."""
    text = environ.get("MLOPS_LANDING_SETTLE_SECONDS", "").strip()
    if not text:
        return DEFAULT_LANDING_SETTLE_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise SettingsError(
            f"MLOPS_LANDING_SETTLE_SECONDS={text!r} is not a non-negative number of seconds"
        )
    return seconds


def _webhook_url(environ: dict[str, str]) -> str:
    """The alerts' webhook (`MLOPS_ALERT_WEBHOOK_URL`): an http(s) URL, or empty for none."""
    url = environ.get("MLOPS_ALERT_WEBHOOK_URL", "").strip()
    if url:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise SettingsError(
                f"MLOPS_ALERT_WEBHOOK_URL={url!r} is not an http(s) URL "
                "(https://hooks.example.com/alerts); leave it empty for no webhook"
            )
    return url


def _port(variable: str, text: str) -> int:
    """A TCP port a variable names."""
    try:
        port = int(text.strip())
    except ValueError:
        raise SettingsError(f"{variable}={text!r} is not a port number") from None
    if not 0 < port < 65536:
        raise SettingsError(f"{variable}={text!r} is not a port between 1 and 65535")
    return port


def _stack_ports(environ: dict[str, str]) -> StackPorts:
    """The local stack's ports: the defaults, overridden by `MLOPS_STACK_*_PORT(S)`."""
    chosen: dict[str, object] = {}
    for name in ("postgres", "redis", "mlflow", "webserver", "readonly_webserver"):
        variable = f"MLOPS_STACK_{name.upper()}_PORT"
        text = environ.get(variable, "").strip()
        if text:
            chosen[name] = _port(variable, text)
    serve_text = environ.get("MLOPS_STACK_SERVE_PORTS", "").strip()
    if serve_text:
        chosen["serve"] = tuple(
            _port("MLOPS_STACK_SERVE_PORTS", part) for part in serve_text.split(",") if part.strip()
        )
    return StackPorts(**chosen)


def _engine(environ: dict[str, str], variable: str) -> Engine | None:
    """The engine a variable names, None when it is unset or empty."""
    name = environ.get(variable, "").strip().lower()
    if not name:
        return None
    try:
        return Engine(name)
    except ValueError:
        raise SettingsError(
            f"{variable}={name!r} is not an engine; use one of {', '.join(e.value for e in Engine)}"
        ) from None


def use_mlflow_store(uri: str) -> None:
    """Point MLflow's fluent API (runs, logging, model loading) at a store, in this process.

    MLflow's `set_tracking_uri` also writes `MLFLOW_TRACKING_URI` (and the registry's
    variable) into the process environment, which `Settings.mlflow_uri` reads as the user's
    choice: a later environment's settings in the same process (tests, a second environment)
    would then silently resolve to this store. The variables are put back as they were.
    """
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
