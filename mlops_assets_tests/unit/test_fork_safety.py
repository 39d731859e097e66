"""The warm launcher's fork server loads the definitions without running polars or opening
the instance: a run forked from it can run polars (a pool built before a fork hangs the child)."""

import os
import signal
import subprocess
import sys
import textwrap

CHILD_RUNS_POLARS = textwrap.dedent(
    """
    import os, signal, sys
    from mlops_assets.defs import catalog, runner

    if sys.argv[1] == "preload":
        catalog.preload_table_schemas()
        runner.check_instance_per_run()
    import mlops_assets.definitions as definitions

    definitions.defs.get_repository_def().get_all_jobs()
    import polars as pl

    pid = os.fork()
    if pid == 0:
        signal.alarm(5)
        frame = pl.DataFrame({"a": list(range(200_000)), "b": [1] * 200_000})
        frame.group_by("b").agg(pl.col("a").sum())
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(status)
    """
)


def child_status(mode: str, tmp_path) -> int:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "DAGSTER_"))}
    environ["MLOPS_DATA_ROOT"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", CHILD_RUNS_POLARS, mode],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        check=True,
    )
    return int(done.stdout.strip().splitlines()[-1])


def test_a_run_forked_after_the_servers_warm_up_runs_polars(tmp_path):
    assert child_status("preload", tmp_path) == 0


def test_deriving_the_schemas_in_the_forking_process_would_hang_the_child(tmp_path):
    # The hazard the preload avoids, shown: the child is stopped by its alarm.
    status = child_status("derive", tmp_path)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM
