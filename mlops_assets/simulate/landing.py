"""Writes simulated days into the landing zone as CSV part files plus a JSON manifest per day."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_assets.simulate.generator import DayBatch, generate_day
from mlops_assets.simulate.scenario import Scenario

TRANSACTIONS_DIR = "transactions"
LABELS_DIR = "labels"
MANIFESTS_DIR = "_manifests"


def transaction_file(date: datetime.date, part: int = 0) -> str:
    """Landing-relative path of a transaction part file."""
    iso = date.isoformat()
    return f"{TRANSACTIONS_DIR}/{iso}/transactions_{iso}_{part:03d}.csv"


def label_file(date: datetime.date, part: int = 0) -> str:
    """Landing-relative path of a labels part file (the simulator writes part 0 only)."""
    iso = date.isoformat()
    return f"{LABELS_DIR}/{iso}/labels_{iso}_{part:03d}.csv"


def manifest_file(date: datetime.date) -> str:
    """Landing-relative path of a day's manifest."""
    return f"{MANIFESTS_DIR}/{date.isoformat()}.json"


@dataclass(frozen=True)
class DayManifest:
    """What was written for one day, with the exact ground truth of injected dirt.

    Attributes:
        date: The files' partition date.
        day_index: 0-based day index within the scenario.
        files: Landing-relative POSIX paths of the data files written (transactions, labels).
        transaction_events: Distinct transaction events generated for the day.
        transaction_lines: Transaction lines over all parts, headers excluded.
        valid_transactions: Distinct valid transaction ids originating from this day.
        label_lines: Label lines, header excluded.
        fraud_count: Fraudulent transactions among the day's events.
        label_fraud: Label lines with ``is_fraud=1``.
        malformed: Lines with a wrong field count or invalid UTF-8.
        invalid_utf8: The part of ``malformed`` that is not valid UTF-8.
        wrong_type: Well-formed lines with an unparseable amount or event_time.
        missing_field: Well-formed lines with an empty required field.
        duplicate_same_day: Verbatim re-sends of this day's valid lines.
        duplicate_next_day: Verbatim re-sends of the previous day's valid lines in this file.
        late_events: Valid lines whose event_time is 1-3 days before ``date``.
        added_column: Whether the ``terminal_id`` column is present.
        transaction_ids_malformed: Ids of the events whose line was made malformed.
        transaction_ids_wrong_type: Ids of the events whose line got a wrong-type value.
        transaction_ids_missing_field: Ids of the events whose line lost a required field.
        new_cards: Cards never seen before that transact this day (issued this day); each
            ordinary one makes one transaction, each of the others one fraud burst.
        new_card_fraud: The part of ``new_cards`` whose first transactions are a fraud burst.
        new_card_transactions: Transaction events made with the day's new cards.
        new_card_fraud_transactions: The fraudulent part of ``new_card_transactions``.
        new_card_ids: The new cards' ids (those of fraud bursts first).

    Manifests written before new cards existed read with zero new cards.
    """

    date: datetime.date
    day_index: int
    files: tuple[str, ...]
    transaction_events: int
    transaction_lines: int
    valid_transactions: int
    label_lines: int
    fraud_count: int
    label_fraud: int
    malformed: int
    invalid_utf8: int
    wrong_type: int
    missing_field: int
    duplicate_same_day: int
    duplicate_next_day: int
    late_events: int
    added_column: bool
    transaction_ids_malformed: tuple[str, ...] = dataclasses.field(repr=False)
    transaction_ids_wrong_type: tuple[str, ...] = dataclasses.field(repr=False)
    transaction_ids_missing_field: tuple[str, ...] = dataclasses.field(repr=False)
    new_cards: int = 0
    new_card_fraud: int = 0
    new_card_transactions: int = 0
    new_card_fraud_transactions: int = 0
    new_card_ids: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    @property
    def quarantined(self) -> int:
        """Lines an ingestion must reject: malformed + wrong_type + missing_field."""
        return self.malformed + self.wrong_type + self.missing_field

    @classmethod
    def from_batch(cls, batch: DayBatch, files: Sequence[str]) -> DayManifest:
        """Build the manifest of a generated day written to ``files``."""
        values = {
            f.name: getattr(batch, f.name)
            for f in dataclasses.fields(cls)
            if f.name not in ("files", "valid_transactions")
        }
        return cls(files=tuple(files), valid_transactions=batch.valid_transactions, **values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (date as ISO string, tuples as lists)."""
        out = dataclasses.asdict(self)
        out["date"] = self.date.isoformat()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def to_json(self) -> str:
        """Deterministic JSON text, newline-terminated."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DayManifest:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["date"] = datetime.date.fromisoformat(values["date"])
        for f in dataclasses.fields(cls):
            if isinstance(values.get(f.name), list):
                values[f.name] = tuple(values[f.name])
        return cls(**values)

    @classmethod
    def read(cls, path: Path | str) -> DayManifest:
        """Load a manifest JSON file."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _atomic_write(path: Path, content: bytes) -> None:
    """Write via a temp file in the same directory so readers never see partial files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(content)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale(directory: Path, prefix: str, keep: set[str]) -> None:
    pattern = re.compile(re.escape(prefix) + r"_\d{3,}\.csv")
    for candidate in directory.glob(f"{prefix}_*.csv"):
        if pattern.fullmatch(candidate.name) and candidate.name not in keep:
            candidate.unlink()


def write_day(batch: DayBatch, landing_root: Path | str) -> DayManifest:
    """Write one generated day into the landing zone and return its manifest.

    Data files go first and the manifest last, so a manifest only exists for complete days.
    Part files left over from an earlier run with more ``files_per_day`` are removed.

    Args:
        batch: The generated day.
        landing_root: Root directory of the landing zone.

    Returns:
        The manifest that was written to ``_manifests/{date}.json``.
    """
    root = Path(landing_root)
    iso = batch.date.isoformat()
    tx_paths = [transaction_file(batch.date, p) for p in range(len(batch.transaction_files))]
    for rel, content in zip(tx_paths, batch.transaction_files, strict=True):
        _atomic_write(root / rel, content)
    labels_path = label_file(batch.date)
    _atomic_write(root / labels_path, batch.label_file)
    _remove_stale(
        root / TRANSACTIONS_DIR / iso, f"transactions_{iso}", {Path(p).name for p in tx_paths}
    )
    _remove_stale(root / LABELS_DIR / iso, f"labels_{iso}", {Path(labels_path).name})
    manifest = DayManifest.from_batch(batch, [*tx_paths, labels_path])
    _atomic_write(root / manifest_file(batch.date), manifest.to_json().encode("utf-8"))
    return manifest


def simulate(
    scenario: Scenario, landing_root: Path | str, days: Sequence[int] | None = None
) -> list[DayManifest]:
    """Generate and write days of the scenario into the landing zone.

    Args:
        scenario: The simulation settings.
        landing_root: Root directory of the landing zone.
        days: Day indices to write (in this order); all days when None.

    Returns:
        One manifest per day written, in the order written.

    Raises:
        ValueError: If a day index is outside the scenario.
    """
    indices = list(range(scenario.days)) if days is None else [int(d) for d in days]
    for day in indices:
        if not 0 <= day < scenario.days:
            raise ValueError(f"day index {day} outside 0..{scenario.days - 1}")
    return [write_day(generate_day(scenario, day), landing_root) for day in indices]
