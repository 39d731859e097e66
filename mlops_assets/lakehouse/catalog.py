"""Where each table lives, and which environment may read or write it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlops_assets.access import AccessDeniedError, Resource, check_read
from mlops_assets.settings import ENVIRONMENTS, Settings

__all__ = ["LAYERS", "AccessDeniedError", "Catalog", "TableRef"]

LAYERS = ("bronze", "silver", "gold", "quarantine", "features", "ml", "serving", "monitoring")


@dataclass(frozen=True)
class TableRef:
    """A table's identity: its layer and its name, as in the asset key `[layer, name]`."""

    layer: str
    name: str

    def __post_init__(self) -> None:
        if self.layer not in LAYERS:
            raise ValueError(f"table layer {self.layer!r} is not one of {', '.join(LAYERS)}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"table name {self.name!r} must be a plain folder name")

    def __str__(self) -> str:
        return f"{self.layer}/{self.name}"


@dataclass(frozen=True)
class Catalog:
    """Resolves table locations for the active environment and enforces the access policy.

    Writes go only under the active environment's root. Reads of another environment are
    allowed only where `access.READ_POLICY` says so (dev may read prod), and are read-only.
    Tables live in `data/<env>/lake/` on the local disk (the default), or under
    `<MLOPS_LAKE_URI>/<env>/` on an S3-compatible store; the policy is the same.
    """

    settings: Settings

    @property
    def env(self) -> str:
        """The active environment."""
        return self.settings.env

    @property
    def on_object_store(self) -> bool:
        """Whether table locations are `s3://` URIs (`MLOPS_LAKE_URI`) rather than folders."""
        return self.settings.lake_on_object_store

    @property
    def storage_options(self) -> dict[str, str]:
        """delta-rs storage options of the lake's tables (empty on the local disk)."""
        return self.settings.storage_options

    def table_path(self, table: TableRef, env: str | None = None) -> Path:
        """Folder of a table in `env` (the active environment by default) on the local disk.

        Raises:
            ValueError: The lake is on the object store (use `table_uri`).
        """
        if self.on_object_store:
            raise ValueError(
                f"{table} lives on the object store ({self.settings.lake_uri}), not in a local "
                "folder: use table_uri"
            )
        root = self.settings.env_root_of(env or self.env)
        return root / "lake" / table.layer / table.name

    def table_uri(self, table: TableRef, env: str | None = None) -> str:
        """Location of a table in `env` (the active environment by default), unchecked.

        `<lake>/<env>/<layer>/<table>` on the object store, `data/<env>/lake/<layer>/<table>`
        on the local disk. Access is checked by `uri_for_read` and `uri_for_write`.
        """
        if self.on_object_store:
            return f"{self.settings.lake_uri_of(env or self.env)}/{table.layer}/{table.name}"
        return str(self.table_path(table, env))

    def uri_for_write(self, table: TableRef) -> str:
        """Location to write a table; always inside the active environment's root.

        On the local disk the location is resolved (symbolic links followed) first: a table
        folder, a lake or an environment root that leads into another environment's root is
        refused, as is one that leads out of the data root altogether.

        Raises:
            AccessDeniedError: The location resolves outside the active environment's root.
        """
        if self.on_object_store:
            # Layer and name are checked plain names (`TableRef`): the URI stays below the
            # active environment's prefix.
            return self.table_uri(table)
        path = self.table_path(table).resolve()
        root = self.settings.env_root.resolve()
        data_root = self.settings.data_root.resolve()
        roots = {env: self.settings.env_root_of(env).resolve() for env in ENVIRONMENTS}
        owners = [env for env, where in roots.items() if path.is_relative_to(where)]
        if owners != [self.env] or not path.is_relative_to(root):
            # The owner: the environment whose own folder (not a link to it) holds the path.
            others = sorted(
                (env for env in owners if env != self.env),
                key=lambda env: roots[env] != data_root / env,
            )
            where = (
                f"inside the root of {others[0]}"
                if others
                else f"outside the environment's root {root}"
            )
            raise AccessDeniedError(
                self.env,
                others[0] if others else self.env,
                Resource.TABLE,
                str(table),
                "write",
                why=f"it resolves to {path}, {where}; an environment writes only itself",
            )
        return str(path)

    def uri_for_read(self, table: TableRef, env: str | None = None) -> str:
        """Location to read a table in `env`, checked against the read policy.

        Raises:
            AccessDeniedError: The active environment may not read `env`.
        """
        source = env or self.env
        if source not in ENVIRONMENTS:
            raise AccessDeniedError(
                self.env, str(source), Resource.TABLE, str(table), "read", why="not an environment"
            )
        check_read(self.env, source, Resource.TABLE, str(table))
        return self.table_uri(table, source)
