"""The access policy on the MLflow registry and tracking store: every write checked first.

An environment writes only its own registry (`mlops_assets.access`). Two things say whose a
registry object is:

- a registered model's name, `<env>.<model>` (`access.model_owner`);
- the tracking store's stamp: an experiment named `access.ENVIRONMENT_STAMP` whose tag
  `access.ENVIRONMENT_TAG` names the environment, created by the store's first checked write.
  A store stamped by another environment is refused for writes (and for reads the read
  policy forbids), so a process of dev configured with prod's `MLFLOW_TRACKING_URI` cannot
  write prod's runs, versions, aliases, tags or webhooks even under a `dev.` model name.

`GuardedClient` wraps an `mlflow.MlflowClient`: reads (`get_*`, `search_*`, `list_*`,
`download_*`, `load_*`) pass through once the store's stamp was checked against the read
policy; every other method is a write, checked before it runs: the store's stamp, then the
model named by its first argument (`name`) when the method is about a registered model.
`registry_client` is the active environment's guarded client, `registry_reader` another
environment's read-only one, `check_registry_write` the same check for writes through
MLflow's fluent API (`mlflow.start_run`, `mlflow.register_model`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlops_assets.access import (
    ENVIRONMENT_STAMP,
    ENVIRONMENT_TAG,
    AccessDeniedError,
    Resource,
    check_read,
    check_stamp,
    check_write,
    model_owner,
)

# Methods that only read; any other public method of the client is a write.
READ_PREFIXES = ("get_", "search_", "list_", "download_", "load_", "parse_")
# Writes whose first argument (or `name`) is a registered model's name.
MODEL_WRITES = frozenset(
    {
        "create_registered_model",
        "update_registered_model",
        "rename_registered_model",
        "delete_registered_model",
        "set_registered_model_tag",
        "delete_registered_model_tag",
        "set_registered_model_alias",
        "delete_registered_model_alias",
        "create_model_version",
        "update_model_version",
        "delete_model_version",
        "transition_model_version_stage",
        "set_model_version_tag",
        "delete_model_version_tag",
    }
)
# Writes whose model is not the first argument: the argument (position, keyword) naming it.
# `copy_model_version(src_model_uri, dst_name)` writes a version of `dst_name`.
MODEL_ARGUMENT = {"copy_model_version": (1, "dst_name")}


def store_environment(client: Any) -> str | None:
    """The environment stamped into a tracking store, None before its first checked write."""
    experiment = client.get_experiment_by_name(ENVIRONMENT_STAMP)
    if experiment is None:
        return None
    stamp = experiment.tags.get(ENVIRONMENT_TAG)
    if stamp is None:
        raise ValueError(
            f"the tracking store {client.tracking_uri} has an experiment {ENVIRONMENT_STAMP!r} "
            f"without the tag {ENVIRONMENT_TAG!r}: it cannot tell whose store it is"
        )
    return stamp


def claim_store(client: Any, env: str) -> None:
    """Refuse a write into a tracking store stamped by another environment; stamp a new one.

    Raises:
        AccessDeniedError: The store is another environment's.
    """
    obj = f"tracking store {client.tracking_uri}"
    stamp = store_environment(client)
    check_stamp(env, stamp, Resource.REGISTRY, obj, "write")
    if stamp is None:
        try:
            client.create_experiment(ENVIRONMENT_STAMP, tags={ENVIRONMENT_TAG: env})
        except Exception:  # noqa: BLE001 - another process stamped it meanwhile: check theirs
            check_stamp(env, store_environment(client), Resource.REGISTRY, obj, "write")


def _model_argument(attr: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    position, keyword = MODEL_ARGUMENT.get(attr, (0, "name"))
    name = kwargs.get(keyword, args[position] if len(args) > position else None)
    return name if isinstance(name, str) else None


class GuardedClient:
    """An `mlflow.MlflowClient` whose writes are checked against the access policy first.

    Args:
        client: The client, bound to one tracking and registry store.
        env: The active environment.
        owner: The environment whose store it is (the active one by default); a client of
            another environment's store refuses every write (`registry_reader`).
        read_only: Refuse every write, also into the active environment's own store.
    """

    def __init__(
        self, client: Any, env: str, owner: str | None = None, *, read_only: bool = False
    ) -> None:
        self._client = client
        self._env = env
        self._owner = owner or env
        self._read_only = read_only
        self._claimed = False
        self._read_checked = False

    @property
    def env(self) -> str:
        """The active environment."""
        return self._env

    @property
    def owner(self) -> str:
        """The environment whose store the client is bound to."""
        return self._owner

    @property
    def read_only(self) -> bool:
        """Whether every write is refused (another environment's store, or a reader)."""
        return self._read_only or self._owner != self._env

    def __repr__(self) -> str:
        return (
            f"GuardedClient({self._client.tracking_uri!r}, env={self._env!r}, "
            f"owner={self._owner!r})"
        )

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_") and not attr.startswith("__"):
            # The wrapped client's internals (`_tracking_client`, `_get_registry_client`)
            # would write past the guard.
            raise AttributeError(
                f"{attr} is private to the MLflow client the registry guard wraps; use the "
                "guarded client's public methods"
            )
        value = getattr(self._client, attr)
        if attr.startswith("_") or not callable(value):
            return value
        if attr.startswith(READ_PREFIXES):
            return self._reading(value)
        return self._writing(attr, value)

    def check_write(self, what: str, model: str | None = None) -> None:
        """Refuse a write (`what`, about `model` if given) the access policy forbids.

        Raises:
            AccessDeniedError: The store or the model is another environment's.
            ValueError: `model` carries no environment in its name.
        """
        obj = (
            f"model {model} ({what})"
            if model
            else f"tracking store {self._client.tracking_uri} ({what})"
        )
        if self.read_only:
            raise AccessDeniedError(
                self._env,
                self._owner,
                Resource.REGISTRY,
                obj,
                "write",
                why=f"a client of {self._owner}'s registry is read-only",
            )
        if model is not None:
            check_write(self._env, model_owner(model), Resource.REGISTRY, obj)
        if not self._claimed:
            claim_store(self._client, self._env)
            self._claimed = True

    def check_read(self) -> None:
        """Refuse reading a store the read policy keeps from the active environment.

        Raises:
            AccessDeniedError: The store is stamped by an environment the active one may not
                read.
        """
        if not self._read_checked:
            stamp = store_environment(self._client)
            obj = f"tracking store {self._client.tracking_uri}"
            check_stamp(self._env, stamp, Resource.REGISTRY, obj, "read")
            self._read_checked = True

    def _reading(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def read(*args: Any, **kwargs: Any) -> Any:
            self.check_read()
            return method(*args, **kwargs)

        return read

    def _writing(self, attr: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            about_model = attr in MODEL_WRITES or attr in MODEL_ARGUMENT
            model = _model_argument(attr, args, kwargs) if about_model else None
            self.check_write(attr, model)
            if attr == "rename_registered_model":
                new_name = kwargs.get("new_name", args[1] if len(args) > 1 else None)
                if isinstance(new_name, str):
                    self.check_write(attr, new_name)
            return method(*args, **kwargs)

        return write


def guarded(client: Any, env: str) -> GuardedClient:
    """`client` guarded for the active environment `env` (a guarded client is kept)."""
    if isinstance(client, GuardedClient):
        if client.env != env:
            raise ValueError(f"the client is guarded for environment {client.env!r}, not {env!r}")
        return client
    return GuardedClient(client, env)


def registry_client(settings: Any) -> GuardedClient:
    """The active environment's tracking and registry client, writes checked."""
    import mlflow

    uri = settings.mlflow_uri
    return GuardedClient(mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), settings.env)


def registry_reader(settings: Any, env: str) -> GuardedClient:
    """A read-only client of `env`'s registry, for a read the policy allows.

    Staging reads prod's champion this way to copy it; dev reads prod's. The store is found
    through `settings.mlflow_uri_of(env)` (`MLOPS_TRACKING_URI_<ENV>`, else its SQLite
    file); every write through the client is refused, and so is any read when its stamp
    names an environment the active one may not read.

    Raises:
        AccessDeniedError: The active environment may not read `env`.
    """
    import mlflow

    uri = settings.mlflow_uri_of(env)
    check_read(settings.env, env, Resource.REGISTRY, f"tracking store {uri}")
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return GuardedClient(client, settings.env, owner=env, read_only=True)


def check_registry_write(settings: Any, model: str | None = None) -> None:
    """Check a write through MLflow's fluent API (runs, `register_model`) before it starts.

    Args:
        settings: The active environment's settings (its `mlflow_uri` is the store written).
        model: The registered model the write creates a version of, if any.

    Raises:
        AccessDeniedError: The store or the model is another environment's.
    """
    registry_client(settings).check_write("log and register" if model else "log", model)
