"""Dagster resources: the lakehouse of the active environment, and its Spark session."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from mlops_assets.lakehouse.catalog import Catalog, TableRef
from mlops_assets.lakehouse.store import DeltaRsStore, SparkStore, TableStore
from mlops_assets.settings import (
    DEFAULT_S3_REGION,
    ENGINE_GROUPS,
    STATISTICS_GROUPS,
    Engine,
    ObjectStore,
    Settings,
    load_settings,
)


class SparkResource(dg.ConfigurableResource):
    """The Spark session (Delta Lake on Spark) of the asset groups that run on Spark.

    A thin resource around dagster-pyspark's `LazyPySparkResource`, which builds the session:
    the session starts on first use, so runs on the polars engine never start a JVM (and do
    not need pyspark installed), and the configuration is typed and checked (master URL, the
    io.delta jars present and matching the installed delta-spark) instead of a free-form
    dict. The session lives as long as the process: a run's steps share it.

    Attributes:
        master: `local[*]`, `local[N]`, `spark://host:port` (standalone cluster) or
            `sc://host:port` (Spark Connect).
        jars_dir: Folder holding the io.delta jars (`make jars`).
        conf: Further Spark settings (object storage, memory, ...); they win over ours.
    """

    master: str
    jars_dir: str
    conf: dict[str, str] = {}
    _delegate: Any = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> SparkResource:
        """Build the resource from `MLOPS_SPARK_*` settings."""
        settings = settings or load_settings()
        return cls(
            master=settings.spark_master,
            jars_dir=str(settings.spark_jars_dir),
            conf=dict(settings.spark_conf),
        )

    @property
    def session(self) -> Any:
        """The `pyspark.sql.SparkSession`, started on first use.

        Raises:
            SparkSetupError: pyspark is not installed, or the io.delta jars are missing.
        """
        if self._delegate is None:
            from mlops_assets.lakehouse.spark_session import spark_config

            config = spark_config(self.master, Path(self.jars_dir), self.conf)
            from dagster_pyspark import LazyPySparkResource

            self._delegate = LazyPySparkResource(spark_config=config)
        return self._delegate.spark_session


class LakehouseResource(dg.ConfigurableResource):
    """The active environment's lakehouse: landing files and Delta tables.

    Attributes:
        env: Environment whose root every write goes to (dev, staging, prod).
        data_root: Folder holding the environments' roots.
        engine: Engine of the asset groups (`polars` or `spark`).
        group_engines: Engine of an asset group where it differs (`{"features": "spark"}`).
        online_store_url: The online store (`redis://...`); empty for the embedded SQLite
            store, or the process's `MLOPS_ONLINE_STORE`.
        lake_uri: `s3://bucket/prefix` when the lake is on object storage; empty for the
            local data root.
        s3_endpoint: The object store's URL; empty for AWS's endpoint of the region.
        s3_access_key_id: Access key of the object store; empty (with the secret) for the
            AWS default credential chain, which keeps secrets out of the resource's config.
        s3_secret_access_key: Secret of the access key.
        s3_region: The object store's region.
    """

    env: str
    data_root: str
    engine: str = Engine.POLARS.value
    group_engines: dict[str, str] = {}
    online_store_url: str = ""
    lake_uri: str = ""
    s3_endpoint: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_region: str = DEFAULT_S3_REGION
    _spark: SparkResource | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> LakehouseResource:
        """Build the resource for the environment the settings select."""
        settings = settings or load_settings()
        return cls(
            env=settings.env,
            data_root=str(settings.data_root),
            engine=settings.engine.value,
            group_engines={group: e.value for group, e in settings.group_engines.items()},
            online_store_url=settings.online_store_url,
            lake_uri=settings.object_store.lake_uri,
            s3_endpoint=settings.object_store.endpoint,
            s3_access_key_id=settings.object_store.access_key_id,
            s3_secret_access_key=settings.object_store.secret_access_key,
            s3_region=settings.object_store.region,
        )

    @property
    def settings(self) -> Settings:
        """Settings of the configured environment."""
        # The process's other settings (crons, Spark, thresholds) with this resource's
        # environment, engines, online store and lake.
        base = load_settings()
        return dataclasses.replace(
            base,
            online_store_url=self.online_store_url or base.online_store_url,
            env=self.env,
            data_root=Path(self.data_root),
            engine=Engine(self.engine),
            group_engines={group: Engine(e) for group, e in self.group_engines.items()},
            object_store=ObjectStore(
                lake_uri=self.lake_uri,
                endpoint=self.s3_endpoint,
                access_key_id=self.s3_access_key_id,
                secret_access_key=self.s3_secret_access_key,
                region=self.s3_region,
            ),
        )

    def store(self, group: str) -> TableStore:
        """The table store of an asset group, on the engine the settings give the group.

        The `online` group, which has no engine setting, runs on polars and delta-rs; so do
        the tables of the `STATISTICS_GROUPS` (ml, serving, monitoring), whose heavy work
        runs on Spark through `spark_store` when their engine is spark.
        """
        settings = self.settings
        options = settings.storage_options
        spark = group in ENGINE_GROUPS and settings.engine_for(group) is Engine.SPARK
        if spark and group not in STATISTICS_GROUPS:
            # The session of the `MLOPS_SPARK_*` settings, started on first use: runs on the
            # polars engine never start a JVM.
            if self._spark is None:
                self._spark = SparkResource.from_settings(settings)
            return SparkStore(self.catalog, self._spark.session, options)
        return DeltaRsStore(self.catalog, options)

    def spark_store(self) -> SparkStore:
        """The Spark store of the environment, whatever the groups' engines (session on first use).

        The `STATISTICS_GROUPS` read their large inputs through it when they run on Spark
        (the monitoring group the day's inference log); their own small tables stay on
        delta-rs.
        """
        if self._spark is None:
            self._spark = SparkResource.from_settings(self.settings)
        return SparkStore(self.catalog, self._spark.session, self.settings.storage_options)

    def engine_for(self, group: str) -> Engine:
        """The engine that runs an asset group (one of `settings.ENGINE_GROUPS`)."""
        return self.settings.engine_for(group)

    @property
    def catalog(self) -> Catalog:
        """Table locations and access policy."""
        return Catalog(self.settings)

    @property
    def landing_root(self) -> Path:
        """Folder landing files arrive in."""
        return self.settings.landing_root

    def write_uri(self, table: TableRef) -> str:
        """Location to write `table` in the active environment."""
        return self.catalog.uri_for_write(table)

    def read_uri(self, table: TableRef, env: str | None = None) -> str:
        """Location to read `table`, from `env` when the read policy allows it."""
        return self.catalog.uri_for_read(table, env)


def engine_kinds(settings: Settings, group: str) -> set[str]:
    """Kinds the UI shows for an asset group: its engine as the environment sets it, delta."""
    return {settings.engine_for(group).value, "deltalake"}
