"""Drift statistics: 1M current rows x 20 features against a 1M-row baseline, beside Evidently.

Setup (not timed) writes a seeded baseline and a seeded current window to Parquet: 14 numeric
columns (gamma, normal, log-normal, exponential; 3 of them drifted, 4 with 1% nulls) and 6
categorical string columns (4 to 40 categories; 2 drifted, 2 with 1% nulls). Each task runs in
a fresh process with its modules imported before the clock starts and both frames in memory:

- `ours`: `compute_drift(baseline, current)` on all rows (both 1,000,000 rows: the Wasserstein
  sum takes its equal-size shortcut, mean |a_i - b_i| of the sorted samples).
- `ours_unequal`: the same with the current window cut to 999,983 rows, so the general
  breakpoint sum runs.
- `evidently`: Evidently 0.7.23 `Report([DataDriftPreset()]).run(...)`, polars-to-pandas
  conversion included, on the first `BENCH_DRIFT_EVIDENTLY_ROWS` rows of both sides (default:
  all 1,000,000). On fewer rows its time is scaled linearly to 1M rows and the output says so;
  on this 2-core machine the 100,000-row slice scaled x10 gave 198 s where the full run took
  144 s, so the scaled figure flatters the ratio.
  Off the clock, ours runs on the same slice and per-column scores and verdicts are compared.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harness import entry_point, measure, report

MODULE = "benchmarks.bench_drift"
ROWS = int(os.environ.get("BENCH_DRIFT_ROWS", "1000000"))
# Evidently on every row takes minutes and over 2 GiB; BENCH_DRIFT_EVIDENTLY_ROWS=100000 runs
# it on a slice instead (scaled linearly, which overstates its time: see the module docstring).
EVIDENTLY_ROWS = int(os.environ.get("BENCH_DRIFT_EVIDENTLY_ROWS", "1000000"))
REPEATS = int(os.environ.get("BENCH_DRIFT_REPEATS", "3"))
UNEQUAL_CUT = 17
SEED = 20260106
NUMERIC = 14
CATEGORICAL = 6
# Raised from 3 s and 30x once the columns ran on every core (issue 15, goal 7).
GOAL_SECONDS = 1.0
GOAL_RATIO = 100.0


def _paths(root: str) -> tuple[Path, Path]:
    return Path(root) / "baseline.parquet", Path(root) / "current.parquet"


def _frame(seed: int, rows: int, drifted: bool):
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    shift = 1.0 if drifted else 0.0
    columns = {}
    for k in range(NUMERIC):
        family = k % 4
        # Columns 0, 1, 2 drift when `drifted`; the others keep their distribution.
        moved = shift if k < 3 else 0.0
        if family == 0:
            values = rng.gamma(2.0, 50.0 * (1 + 0.3 * moved), rows).round(2)
        elif family == 1:
            values = rng.normal(100.0 + 10.0 * moved, 15.0, rows)
        elif family == 2:
            values = rng.lognormal(3.0 + 0.2 * moved, 0.8, rows)
        else:
            values = rng.exponential(3_600.0, rows).round(0)
        if k % 3 == 0:
            values[rng.random(rows) < 0.01] = np.nan
        columns[f"num_{k:02d}"] = pl.Series(values).fill_nan(None)
    for k in range(CATEGORICAL):
        size = (4, 8, 12, 20, 30, 40)[k]
        weights = np.linspace(1.0, 3.0, size)
        if drifted and k < 2:
            weights = weights[::-1]
        categories = np.array([f"c{k}_{i:02d}" for i in range(size)])
        values = categories[rng.choice(size, rows, p=weights / weights.sum())]
        series = pl.Series(values)
        if k % 2 == 1:
            series = pl.when(pl.Series(rng.random(rows) < 0.01)).then(None).otherwise(series)
            series = pl.select(series).to_series()
        columns[f"cat_{k}"] = series
    return pl.DataFrame(columns)


def task_setup(root: str) -> dict:
    """Generate the baseline and the current window and write them to Parquet."""
    started = time.perf_counter()
    baseline_path, current_path = _paths(root)
    _frame(SEED, ROWS, drifted=False).write_parquet(baseline_path)
    _frame(SEED + 1, ROWS, drifted=True).write_parquet(current_path)
    return {"seconds": time.perf_counter() - started, "rows": ROWS}


def _read(root: str, rows: int | None = None):
    import polars as pl

    baseline_path, current_path = _paths(root)
    baseline, current = pl.read_parquet(baseline_path), pl.read_parquet(current_path)
    if rows is not None:
        baseline, current = baseline.head(rows), current.head(rows)
    return baseline, current


def task_ours(root: str, cut: str = "0") -> dict:
    """`compute_drift` on all rows (the current window cut by `cut` rows)."""
    from mlops_assets.monitoring.drift import compute_drift

    baseline, current = _read(root)
    current = current.head(current.height - int(cut))
    started = time.perf_counter()
    result = compute_drift(baseline, current)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "baseline_rows": baseline.height,
        "current_rows": current.height,
        "columns": result.summary.columns,
        "drifted_columns": result.summary.drifted_columns,
        "drifted": result.columns.filter("drifted").get_column("column").to_list(),
    }


def _evidently(baseline, current) -> tuple[float, dict]:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        current_data=current.to_pandas(), reference_data=baseline.to_pandas()
    )
    seconds = time.perf_counter() - started
    result = snapshot.dict()
    columns = {}
    for metric in result["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            columns[config["column"]] = {"score": metric["value"], "method": config["method"]}
    for test in result["tests"]:
        if test["id"] == "drift":
            column = test["metric_config"]["params"]["column"]
            columns[column]["drifted"] = test["status"] == "FAIL"
    return seconds, columns


def task_evidently(root: str) -> dict:
    """Evidently's DataDriftPreset on the first EVIDENTLY_ROWS rows of both sides, timed; then,
    off the clock, ours on the same rows: largest score difference and whether verdicts agree."""
    import evidently.presets  # noqa: F401  (imported before the clock, as ours is)

    from mlops_assets.monitoring.drift import compute_drift

    baseline, current = _read(root, EVIDENTLY_ROWS)
    seconds, theirs = _evidently(baseline, current)
    ours = compute_drift(baseline, current).columns
    rows = list(ours.iter_rows(named=True))
    return {
        "seconds": seconds,
        "rows": baseline.height,
        "drifted": sorted(c for c, v in theirs.items() if v["drifted"]),
        "same_columns": {r["column"] for r in rows} == set(theirs),
        "max_abs_score_difference": max(
            abs(r["score"] - theirs[r["column"]]["score"]) for r in rows
        ),
        "verdicts_equal": all(r["drifted"] == theirs[r["column"]]["drifted"] for r in rows),
    }


def main() -> None:
    """Measure ours (equal and unequal sizes) and Evidently; check agreement; print figures."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as root:
        setup = measure(MODULE, "setup", root)
        ours = [measure(MODULE, "ours", root) for _ in range(REPEATS)]
        unequal = [measure(MODULE, "ours", root, str(UNEQUAL_CUT)) for _ in range(REPEATS)]
        evidently = measure(MODULE, "evidently", root)
    ours_s = statistics.median(m.seconds for m in ours)
    unequal_s = statistics.median(m.seconds for m in unequal)
    evidently_rows = evidently.extra["rows"]
    scale = setup.extra["rows"] / evidently_rows
    evidently_1m_s = evidently.seconds * scale
    ratio = evidently_1m_s / ours_s
    evidently_basis = (
        "measured on all rows"
        if scale == 1
        else f"measured on {evidently_rows:,} rows of each side, time scaled linearly x{scale:g}"
    )
    figures = {
        "baseline_rows": setup.extra["rows"],
        "current_rows": setup.extra["rows"],
        "columns": {"numeric": NUMERIC, "categorical": CATEGORICAL},
        "repeats": REPEATS,
        "ours_s": round(ours_s, 3),
        "ours_runs_s": [round(m.seconds, 3) for m in ours],
        "ours_peak_mib": round(max(m.peak_mib for m in ours)),
        "ours_drifted_columns": ours[0].extra["drifted"],
        "ours_unequal_sizes_s": round(unequal_s, 3),
        "ours_unequal_current_rows": unequal[0].extra["current_rows"],
        "ours_unequal_runs_s": [round(m.seconds, 3) for m in unequal],
        "evidently_rows": evidently_rows,
        "evidently_measured_s": round(evidently.seconds, 2),
        "evidently_peak_mib": round(evidently.peak_mib),
        "evidently_at_full_size_s": round(evidently_1m_s, 1),
        "evidently_basis": evidently_basis,
        "evidently_drifted_columns_on_its_rows": evidently.extra["drifted"],
        "ratio_evidently_to_ours": round(ratio, 1),
        "ratio_evidently_to_ours_unequal": round(evidently_1m_s / unequal_s, 1),
        "agreement_on_evidently_rows": {
            "same_columns": evidently.extra["same_columns"],
            "max_abs_score_difference": evidently.extra["max_abs_score_difference"],
            "verdicts_equal": evidently.extra["verdicts_equal"],
        },
        # The machine is shared: a load above its core count slows every figure here.
        "load_average_1m": {"start": round(load_before, 1), "end": round(os.getloadavg()[0], 1)},
        "cpu_count": os.cpu_count(),
        "goal": f"ours_s <= {GOAL_SECONDS:g} and ratio >= {GOAL_RATIO:g}",
        "goal_met": ours_s <= GOAL_SECONDS and ratio >= GOAL_RATIO,
        "goal_met_unequal_sizes": unequal_s <= GOAL_SECONDS
        and evidently_1m_s / unequal_s >= GOAL_RATIO,
    }
    report("drift", figures)


if __name__ == "__main__":
    entry_point(
        main,
        {
            "setup": task_setup,
            "ours": task_ours,
            "evidently": task_evidently,
        },
    )
