"""Run the medallion job for days in-process, on the environment's Dagster instance.

The instance is an environment's like its tables (`mlops_assets.access`): its key-value
storage holds the environment that first used it (`claim_instance`), and a process of another
environment launches no run on it (`run_once`, `run_days`, `prepare_dagster_home`) and does
not load its code location (`check_dagster_home`, called by `mlops_assets.definitions`).
"""

from __future__ import annotations

import datetime
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from mlops_assets.access import ENVIRONMENT_STAMP, Resource, check_stamp
from mlops_assets.settings import Settings, project_root


def instance_environment(instance: dg.DagsterInstance) -> str | None:
    """The environment stamped into an instance's key-value storage, None before its first."""
    return instance.run_storage.get_cursor_values({ENVIRONMENT_STAMP}).get(ENVIRONMENT_STAMP)


def _instance_name(instance: dg.DagsterInstance) -> str:
    """The instance's home (links followed) and where its runs are stored."""
    if not instance.is_persistent:
        return "(ephemeral)"
    storage = type(instance.run_storage).__name__
    return f"at {Path(instance.root_directory).resolve()} ({storage})"


def claim_instance(instance: dg.DagsterInstance, env: str) -> None:
    """Refuse an instance stamped by another environment; stamp an unstamped one with `env`.

    Called before a run is launched (nothing of the run is written when it refuses).

    Raises:
        AccessDeniedError: The instance is another environment's.
    """
    obj = _instance_name(instance)
    stamp = instance_environment(instance)
    check_stamp(env, stamp, Resource.INSTANCE, obj, "write")
    if stamp is None:
        instance.run_storage.set_cursor_values({ENVIRONMENT_STAMP: env})
        # Two processes stamping a new instance at once: the one that lost is refused now.
        check_stamp(env, instance_environment(instance), Resource.INSTANCE, obj, "write")


# Set in a process that loads the code but must not open the instance (the warm launcher's
# fork server): each run it forks checks the instance it opens instead (`claim_instance`).
_HOME_CHECKED_PER_RUN = False


def check_instance_per_run() -> None:
    """Leave the instance check of `check_dagster_home` to each run this process forks."""
    global _HOME_CHECKED_PER_RUN
    _HOME_CHECKED_PER_RUN = True


def check_dagster_home(env: str) -> None:
    """Refuse to load an environment's code on the instance at `DAGSTER_HOME` of another.

    Nothing is checked without `DAGSTER_HOME` (a bare `dg.Definitions` load, tests) or when
    the home does not exist yet. An unstamped instance is stamped with `env`.

    Raises:
        AccessDeniedError: The instance is another environment's.
    """
    home = os.environ.get("DAGSTER_HOME")
    if _HOME_CHECKED_PER_RUN or not home or not (Path(home) / "dagster.yaml").is_file():
        return
    with dg.DagsterInstance.get() as instance:
        claim_instance(instance, env)


def _env_of(defs: dg.Definitions) -> str:
    """The environment the definitions were built for (their lakehouse resource's)."""
    lakehouse = (defs.resources or {}).get("lakehouse")
    env = getattr(lakehouse, "env", None)
    if not isinstance(env, str):
        raise ValueError(
            "the definitions carry no lakehouse resource naming their environment; build "
            "them with mlops_assets.definitions.build_definitions"
        )
    return env


def prepare_dagster_home(settings: Settings, set_env: bool = True) -> Path:
    """Make `data/<env>/dagster/` the Dagster home, with the project's instance settings.

    The home gets the top-level `dagster.yaml` (SQLite storage under the home), or the stack's
    `mlops_assets/stack/dagster.postgres.yaml` (PostgreSQL storage at
    `MLOPS_DAGSTER_POSTGRES_URL`) when `settings.dagster_postgres_url` is set.

    Args:
        settings: The environment's settings.
        set_env: Also set `DAGSTER_HOME` in this process, and claim its instance for the
            environment (`claim_instance`).

    Returns:
        The Dagster home folder.

    Raises:
        AccessDeniedError: The instance is another environment's (`set_env` only).
    """
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    if settings.dagster_postgres_url:
        source = project_root() / "mlops_assets" / "stack" / "dagster.postgres.yaml"
    else:
        source = project_root() / "dagster.yaml"
    target = home / "dagster.yaml"
    if not target.exists() or target.read_bytes() != source.read_bytes():
        shutil.copyfile(source, target)
    if set_env:
        os.environ["DAGSTER_HOME"] = str(home)
        with dg.DagsterInstance.get() as instance:
            claim_instance(instance, settings.env)
    return home


@dataclass(frozen=True)
class DayRun:
    """Outcome of one partition's run."""

    day: datetime.date
    run_id: str
    success: bool
    seconds: float


def run_once(
    defs: dg.Definitions,
    job_name: str,
    instance: dg.DagsterInstance,
    log_level: str = "WARNING",
    run_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    """Execute an unpartitioned job in-process; failures are in the result, not raised.

    Raises:
        AccessDeniedError: The instance is another environment's (no run is created).
    """
    claim_instance(instance, _env_of(defs))
    return defs.resolve_job_def(job_name).execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={
            **(run_config or {}),
            "loggers": {"console": {"config": {"log_level": log_level}}},
        },
        tags={"mlops/launched_by": "mlops demo"},
    )


def run_days(
    defs: dg.Definitions,
    days: Sequence[datetime.date],
    instance: dg.DagsterInstance,
    selection: Sequence[dg.AssetKey] | None = None,
    job_name: str = "medallion_daily",
    log_level: str = "WARNING",
    on_day: Callable[[DayRun, int, int], None] | None = None,
) -> list[DayRun]:
    """Execute the partitioned job once per day, in order, stopping at the first failure.

    `on_day(run, done, total)` is called after each day's run (progress lines, see
    `print_day`).

    Raises:
        AccessDeniedError: The instance is another environment's (no run is created).
    """
    claim_instance(instance, _env_of(defs))
    job = defs.resolve_job_def(job_name)
    results: list[DayRun] = []
    for day in days:
        started = datetime.datetime.now()
        result = job.execute_in_process(
            partition_key=day.isoformat(),
            instance=instance,
            asset_selection=list(selection) if selection else None,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            tags={"mlops/launched_by": "mlops demo"},
        )
        seconds = (datetime.datetime.now() - started).total_seconds()
        results.append(DayRun(day, result.run_id, result.success, seconds))
        if on_day is not None:
            on_day(results[-1], len(results), len(days))
        if not result.success:
            break
    return results


def print_day(job_name: str, prefix: str = "[backfill]") -> Callable[[DayRun, int, int], None]:
    """An `on_day` callback printing one line per day: the outcome, its time, the run id."""
    started = time.perf_counter()

    def show(run: DayRun, done: int, total: int) -> None:
        outcome = "ok" if run.success else "FAILED"
        print(
            f"{prefix} {job_name} {run.day} ({done}/{total}): {outcome} in {run.seconds:.1f} s, "
            f"{time.perf_counter() - started:.1f} s elapsed (run {run.run_id[:8]})",
            flush=True,
        )

    return show
