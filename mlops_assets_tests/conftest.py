"""Suite-wide set-up: how tests share expensive state under parallel workers, and clean-up.

`make test` runs one pytest process with xdist workers and `--dist loadgroup`. A worker
builds a module-scoped fixture (a lake, a server, a trained model) for the tests it runs, so
tests that share one must run on the same worker or each worker builds it again. Here every
test that uses a module-scoped fixture of its own module joins the module's group, and every
test that uses one of the lakes the integration conftest builds once per session joins that
lake's group (the tests of a group keep their collection order on their worker). Tests that
share nothing are spread one by one. A test that names its own `xdist_group` keeps it.

Every run carries a marker in its environment (`MLOPS_TEST_RUN`, see `reap`): what a test
leaves running (a server of a timed-out or killed test) is stopped when the run ends.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Generator

import pytest

from mlops_assets_tests.reap import MARKER, describe, marked, reap

# One OpenMP thread per process: the suite's workers already fill the cores, and OpenMP threads
# (scikit-learn's tree fitting) spin while they wait on a busy machine (a fit measured at 333 s
# with the default threads and 15 s with one, under load). Set before scikit-learn loads; the
# processes tests start inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Session fixtures built once per run: the tests using them share one worker (by group name).
SHARED_SESSION_FIXTURES = {"cd_lake": "cd_lake", "champion": "cd_lake"}
# Fixtures of the suite's own modules and conftests (not pytest's or plugins').
SUITE = "mlops_assets_tests"
# Scopes whose fixtures are set up once for the tests of one module (or class).
MODULE_SCOPES = {"module", "class", "package"}
# The controller's run marker, kept for its clean-up.
_RUN = pytest.StashKey[str]()


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    """The controller marks its run (nested under a marker the caller set, e.g. `make test`)."""
    if _is_worker(config):
        return
    parent = os.environ.get(MARKER)
    own = f"pytest-{os.getpid()}-{int(time.time())}"
    os.environ[MARKER] = f"{parent}/{own}" if parent else own
    config.stash[_RUN] = os.environ[MARKER]


def pytest_unconfigure(config: pytest.Config) -> None:
    """The controller stops whatever its run left running, and says what it was."""
    run = config.stash.get(_RUN, None)
    if run is None:
        return
    left = {pid: describe(pid) for pid in marked(run) if pid != os.getpid()}
    stopped = reap(run)
    for pid in stopped:
        sys.stderr.write(f"\nmlops_assets_tests: stopped a leftover process {pid}: {left.get(pid)}")


# Variables MLflow's `set_tracking_uri`/`set_registry_uri` write into the process environment;
# `Settings.mlflow_uri` reads the first as the user's choice. A test that leaves them set points
# every later test on its worker at its own store (a prod lake's training then refused to write
# a dev store): each test's values are put back after it.
MLFLOW_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _mlflow_variables_kept() -> Generator[None, None, None]:
    saved = {name: os.environ.get(name) for name in MLFLOW_VARIABLES}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _group(item: pytest.Item) -> str | None:
    """The xdist group `item` must share a worker with, None when it shares nothing."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    module = item.nodeid.split("::", 1)[0]
    for name in sorted(info.names_closure):
        if name in SHARED_SESSION_FIXTURES:
            return SHARED_SESSION_FIXTURES[name]
    for name in info.names_closure:
        for fixturedef in info.name2fixturedefs.get(name, ()):
            if fixturedef.scope in MODULE_SCOPES and fixturedef.baseid.startswith(SUITE):
                return module
    return None


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> Generator[None, None, None]:
    """Add the `xdist_group` marks, and the group to each grouped test's id on a worker.

    xdist's `loadgroup` schedules by the group suffix of a test's id (`...::test@group`),
    which its worker hook writes into `item._nodeid`; pytest 9 keeps the id in `item._id`, so
    that write is lost and every group was spread over the workers out of order (a module's
    tests ran without the state its first test leaves). The suffix is written here too.
    """
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        group = _group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    result = yield
    if getattr(config.option, "loadgroup", False):
        from _pytest.nodeid import coerce_node_id

        for item in items:
            names = {
                str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                for mark in item.iter_markers("xdist_group")
            }
            if names and "@" not in item.nodeid.rsplit("]", 1)[-1]:
                item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(sorted(names))}")
    return result
