import subprocess
import sys

import polars as pl

from mlops_assets.monitoring.report import sample_rows


def test_sample_is_bounded_seeded_and_keeps_row_order():
    frame = pl.DataFrame({"transaction_id": range(50_000)})
    sample = sample_rows(frame, 1_000, seed=3)
    assert sample.height == 1_000
    ids = sample.get_column("transaction_id")
    assert ids.is_sorted()
    assert ids.n_unique() == 1_000
    assert sample.equals(sample_rows(frame, 1_000, seed=3))
    assert not sample.equals(sample_rows(frame, 1_000, seed=4))


def test_a_small_frame_is_kept_whole():
    frame = pl.DataFrame({"x": [3, 1, 2]})
    assert sample_rows(frame, 10).equals(frame)


def test_importing_the_report_module_does_not_import_evidently():
    code = "import sys, mlops_assets.monitoring.report; print('evidently' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
