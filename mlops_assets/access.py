"""The access policy between dev, staging and prod, in one place.

Two rules, for every resource an environment has:

- **read**: an environment reads itself and the environments `READ_POLICY` lists beside it,
  read-only. Dev reads prod (scientists work on real data and models); staging reads prod (it
  copies prod's champion to test a release against it); prod reads only itself.
- **write**: an environment writes only itself. Nothing else writes into prod: not dev, not
  staging, not a process of prod's configured with another environment's variables.

The resources, and how each one's environment is known:

- table: its location, `<lake>/<env>/<layer>/<table>` (`lakehouse.catalog.Catalog`); a
  location that resolves (through a symbolic link) into another environment's root is
  another environment's;
- online store: the environment stamped into the store when it is first written (a row of
  the SQLite file's `online_meta` table, a `<prefix>:mlops-environment` key in Redis;
  `features.online_store`, `features.redis_store`);
- registry: a registered model's name, `<env>.<model>`, and the environment stamped into the
  tracking store (an experiment named `mlops-environment` tagged `mlops.env`); every write
  (versions, aliases, tags, webhooks, runs) goes through `models.guard`;
- Dagster instance: the environment stamped into the instance's key-value storage
  (`defs.runner.claim_instance`): runs are not launched, and the code location does not
  load, in a process whose environment differs from the instance's.

Every check runs before the first write: a refused operation leaves the resource unchanged.
The error names the active environment, the object and the rule.
"""

from __future__ import annotations

from enum import StrEnum

ENVIRONMENTS = ("dev", "staging", "prod")

# Which environments each environment may read, beside itself (read-only).
READ_POLICY: dict[str, tuple[str, ...]] = {
    "dev": ("dev", "prod"),
    "staging": ("staging", "prod"),
    "prod": ("prod",),
}

# The key (online store, Dagster instance) or experiment (tracking store) holding a store's
# environment once it is first written.
ENVIRONMENT_STAMP = "mlops-environment"
# The tag of the tracking store's stamp experiment naming its environment.
ENVIRONMENT_TAG = "mlops.env"


class Resource(StrEnum):
    """What an environment owns."""

    TABLE = "table"
    ONLINE_STORE = "online store"
    REGISTRY = "registry"
    INSTANCE = "Dagster instance"


class AccessDeniedError(PermissionError):
    """A read or write crosses environments against the access policy.

    Attributes:
        active: The environment that asked.
        owner: The environment the object belongs to.
        resource: The kind of object.
        obj: The object (a table, a model, a store's address).
        rule: `read` or `write`.
    """

    def __init__(
        self,
        active: str,
        owner: str,
        resource: Resource,
        obj: str,
        rule: str,
        why: str | None = None,
    ) -> None:
        self.active, self.owner, self.resource, self.obj, self.rule = (
            active,
            owner,
            resource,
            obj,
            rule,
        )
        if why is not None:
            pass
        elif rule == "write":
            why = "an environment writes only itself"
        else:
            allowed = ", ".join(READ_POLICY.get(active, (active,)))
            why = f"{active} reads only {allowed}"
        super().__init__(
            f"environment {active!r} may not {rule} {resource} {obj} of {owner!r} "
            f"(rule {rule}: {why}; see mlops_assets/access.py)"
        )


def _known(env: str, what: str) -> None:
    if env not in ENVIRONMENTS:
        raise ValueError(
            f"{what} {env!r} is not an environment; use one of {', '.join(ENVIRONMENTS)}"
        )


def may_read(active: str, owner: str) -> bool:
    """Whether `active` may read what `owner` has."""
    return owner in READ_POLICY.get(active, ())


def check_read(active: str, owner: str, resource: Resource, obj: str) -> None:
    """Refuse a read of `owner`'s `obj` from `active` unless the read policy allows it.

    Raises:
        AccessDeniedError: `active` may not read `owner`.
    """
    _known(active, "active environment")
    _known(owner, f"owner of {resource} {obj}:")
    if not may_read(active, owner):
        raise AccessDeniedError(active, owner, resource, obj, "read")


def check_write(active: str, owner: str, resource: Resource, obj: str) -> None:
    """Refuse a write into `owner`'s `obj` from `active` unless they are the same.

    Raises:
        AccessDeniedError: `owner` is another environment.
    """
    _known(active, "active environment")
    _known(owner, f"owner of {resource} {obj}:")
    if owner != active:
        raise AccessDeniedError(active, owner, resource, obj, "write")


def check_stamp(
    active: str, stamp: str | None, resource: Resource, obj: str, rule: str = "write"
) -> None:
    """Refuse a `rule` (read or write) of a store stamped by another environment.

    A store not stamped yet (None) belongs to whoever writes it first; its first write stamps
    it. A stamp that names no environment is refused for writes and reads alike.

    Raises:
        AccessDeniedError: The stamp names an environment `active` may not `rule`.
        ValueError: The stamp names no environment.
    """
    if stamp is None:
        return
    if rule == "write":
        check_write(active, stamp, resource, obj)
    else:
        check_read(active, stamp, resource, obj)


def model_owner(name: str) -> str:
    """The environment a registered model belongs to, from its name `<env>.<model>`.

    Raises:
        ValueError: The name carries no environment.
    """
    env, dot, _ = name.partition(".")
    if not dot or env not in ENVIRONMENTS:
        raise ValueError(
            f"registered model {name!r} carries no environment; names are <env>.<model> "
            f"with <env> one of {', '.join(ENVIRONMENTS)}"
        )
    return env
