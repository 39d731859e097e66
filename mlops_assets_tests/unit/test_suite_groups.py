"""The suite's parallel run keeps a group's tests on one worker, in their order.

`make test` runs pytest-xdist with `--dist loadgroup`; `mlops_assets_tests/conftest.py` puts
the tests sharing a module-scoped fixture into one group. A small suite of that shape runs
here with four workers in a new pytest process: each module's tests must see the state the
module's earlier tests left in its fixture.
"""

import shutil
import subprocess
import sys
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1]

MODULE = """
import time

import pytest


@pytest.fixture(scope="module")
def shared():
    return []


def test_first(shared):
    time.sleep(0.2)
    shared.append(1)


def test_second(shared):
    shared.append(2)
    assert shared == [1, 2]


def test_third(shared):
    shared.append(3)
    assert shared == [1, 2, 3]
"""

FREE = """
import time


def test_free():
    time.sleep(0.05)
"""


def test_a_modules_tests_run_on_one_worker_in_order(tmp_path):
    package = tmp_path / "mlops_assets_tests"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("conftest.py", "reap.py"):
        shutil.copyfile(SUITE / name, package / name)
    for index in range(4):
        (package / f"test_shared_{index}.py").write_text(MODULE)
    for index in range(12):
        (package / f"test_free_{index}.py").write_text(FREE)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "4"]
        + ["--dist", "loadgroup", "mlops_assets_tests"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "24 passed" in done.stdout
