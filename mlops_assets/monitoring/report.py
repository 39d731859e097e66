"""Evidently's HTML drift report of one window, on a seeded sample, for people to read.

The automated statistics come from `drift.compute_drift` on all rows; this report is the
picture beside them. Evidently needs pandas and takes minutes on a million rows, so both sides
are sampled (without replacement, seeded) to at most `max_rows` rows each. Evidently is
imported on first use: importing it takes seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from mlops_assets.monitoring.thresholds import DEFAULT, Thresholds

MAX_REPORT_ROWS = 20_000
SEED = 0


def sample_rows(
    frame: pl.DataFrame, max_rows: int = MAX_REPORT_ROWS, seed: int = SEED
) -> pl.DataFrame:
    """At most `max_rows` rows of `frame`, drawn without replacement, in their original order.

    Args:
        frame: The rows.
        max_rows: The most rows kept.
        seed: Seed of the draw: the same frame and seed give the same sample.

    Returns:
        `frame` itself when it is small enough, else the sample.
    """
    if frame.height <= max_rows:
        return frame
    return (
        frame.with_row_index("_row")
        .sample(n=max_rows, shuffle=False, seed=seed)
        .sort("_row")
        .drop("_row")
    )


def preset_options(thresholds: Thresholds, reference_rows: int) -> dict[str, float]:
    """Evidently `DataDriftPreset` options that judge as `drift.compute_drift` does.

    Args:
        thresholds: The monitoring thresholds.
        reference_rows: Rows of the reference Evidently is given (it picks distances above
            `drift.LARGE_REFERENCE_ROWS`, p-value tests at or below).

    Returns:
        `drift_share` and the numeric and categorical column limits.
    """
    from mlops_assets.monitoring.drift import LARGE_REFERENCE_ROWS

    large = reference_rows > LARGE_REFERENCE_ROWS
    return {
        "drift_share": thresholds.drift_share,
        "num_threshold": thresholds.wasserstein if large else thresholds.ks,
        "cat_threshold": thresholds.jensenshannon if large else thresholds.chisquare,
    }


def drift_report_html(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    path: str | Path,
    *,
    columns: Sequence[str] | None = None,
    max_rows: int = MAX_REPORT_ROWS,
    seed: int = SEED,
    thresholds: Thresholds = DEFAULT,
) -> Path:
    """Write Evidently's `DataDriftPreset` report of `current` against `reference` as HTML.

    Args:
        reference: The baseline rows.
        current: The window's rows.
        path: Where to write the HTML file (parent folders are created).
        columns: Columns to compare (default: the columns both frames share).
        max_rows: The most rows of each side given to Evidently.
        seed: Seed of the samples.
        thresholds: The monitoring thresholds: Evidently reports dataset drift at
            `drift_share`, and judges columns by the same method limits as
            `drift.compute_drift` (distances above `drift.LARGE_REFERENCE_ROWS` reference
            rows, p-value tests at or below; a categorical column of a small sample is judged
            at the `chisquare` limit, also when Evidently picks the z-test).

    Returns:
        The path of the written report.
    """
    from evidently import Report
    from evidently.presets import DataDriftPreset

    names = (
        list(columns)
        if columns is not None
        else [c for c in current.columns if c in reference.columns]
    )
    reference_sample = sample_rows(reference.select(names), max_rows, seed).to_pandas()
    current_sample = sample_rows(current.select(names), max_rows, seed + 1).to_pandas()
    report = Report([DataDriftPreset(**preset_options(thresholds, len(reference_sample)))])
    snapshot = report.run(current_data=current_sample, reference_data=reference_sample)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(target))
    return target
