"""Dagster resources: the lakehouse of the active environment."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mlops_assets.lakehouse.catalog import Catalog, TableRef
from mlops_assets.settings import Settings, load_settings


class LakehouseResource(dg.ConfigurableResource):
    """The active environment's lakehouse: landing files and Delta tables.

    Attributes:
        env: Environment whose root every write goes to (dev, staging, prod).
        data_root: Folder holding the environments' roots.
    """

    env: str
    data_root: str

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> LakehouseResource:
        """Build the resource for the environment the settings select."""
        settings = settings or load_settings()
        return cls(env=settings.env, data_root=str(settings.data_root))

    @property
    def settings(self) -> Settings:
        """Settings of the configured environment."""
        base = load_settings()
        return Settings(
            env=self.env,
            data_root=Path(self.data_root),
            engine=base.engine,
            start_date=base.start_date,
        )

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
