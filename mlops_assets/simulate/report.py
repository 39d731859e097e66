"""What a simulation wrote, for a terminal: one line per day, then a summary.

The manifests hold every injected transaction id (about 130 KB for a day of 600,000
transactions); they stay in their files under `_manifests/`, the terminal gets counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mlops_assets.simulate.landing import MANIFESTS_DIR, DayManifest, manifest_file


def day_line(manifest: DayManifest, done: int, total: int, seconds: float) -> str:
    """One day written: its date, lines, injected bad lines and the elapsed time."""
    return (
        f"day {done}/{total} {manifest.date}: {manifest.transaction_lines:,} transaction lines, "
        f"{manifest.quarantined:,} bad, {manifest.label_lines:,} labels  ({seconds:.1f} s)"
    )


def injected_counts(manifests: Sequence[DayManifest]) -> dict[str, int]:
    """The injected dirt of the days, by kind, summed."""
    kinds = (
        "malformed",
        "invalid_utf8",
        "wrong_type",
        "missing_field",
        "duplicate_same_day",
        "duplicate_next_day",
        "late_events",
    )
    return {kind: sum(getattr(m, kind) for m in manifests) for kind in kinds}


def summary_lines(
    manifests: Sequence[DayManifest], landing_root: Path | str, seconds: float
) -> list[str]:
    """The summary of a simulation: days, rows, injected counts, new cards, where the files are.

    Args:
        manifests: The days written, in order.
        landing_root: The landing zone they were written to.
        seconds: Wall time of the simulation.

    Returns:
        Lines to print, a handful whatever the number of rows.
    """
    root = Path(landing_root)
    if not manifests:
        return [f"no landing day written under {root}"]
    first, last = manifests[0], manifests[-1]
    dirt = injected_counts(manifests)
    manifests_dir = root / MANIFESTS_DIR
    return [
        f"wrote {len(manifests)} landing day{'s' if len(manifests) != 1 else ''} "
        f"({first.date} to {last.date}) in {seconds:.1f} s under {root}",
        f"  transactions: {sum(m.transaction_lines for m in manifests):,} lines, "
        f"{sum(m.valid_transactions for m in manifests):,} valid distinct, "
        f"{sum(m.fraud_count for m in manifests):,} fraudulent; "
        f"labels: {sum(m.label_lines for m in manifests):,} lines "
        f"({sum(m.label_fraud for m in manifests):,} fraud)",
        f"  injected bad lines: {dirt['malformed']:,} malformed ({dirt['invalid_utf8']:,} not "
        f"UTF-8), {dirt['wrong_type']:,} wrong type, {dirt['missing_field']:,} missing field; "
        f"duplicates: {dirt['duplicate_same_day']:,} same day, "
        f"{dirt['duplicate_next_day']:,} next day; late events: {dirt['late_events']:,}",
        f"  new cards (never seen before): {sum(m.new_cards for m in manifests):,}, "
        f"{sum(m.new_card_fraud for m in manifests):,} of them first used for fraud; "
        f"{sum(m.new_card_transactions for m in manifests):,} transactions",
        f"  manifests (counts and every injected transaction id): {manifests_dir}/ "
        f"({Path(manifest_file(first.date)).name} to {Path(manifest_file(last.date)).name})",
        "  next: `mlops demo` runs the whole loop on them, `mlops ui` materializes them "
        "from the asset graph",
    ]
