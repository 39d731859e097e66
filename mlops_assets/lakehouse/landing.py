"""Read landing files as raw lines with their ingestion metadata, losing none."""

from __future__ import annotations

import codecs
import datetime
import threading
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mlops_assets.transforms.bronze import INGESTED_AT, LINE_NUMBER, RAW, SOURCE_FILE, UTF8

REPLACEMENT = "\ufffd"  # what an undecodable byte sequence reads as


@dataclass(frozen=True)
class LandingFile:
    """One landing file split into its header and its data lines.

    Attributes:
        path: The file.
        relative: Its path relative to the landing root (what lineage records).
        header: Field names from the first line (empty when the file has no usable header).
        header_problem: Why the header is unusable, or None.
        lines: Frame with `raw` (the line as text, undecodable bytes replaced), `_utf8` (whether
            the line's bytes are valid UTF-8), `_source_file`, `_line_number` (1-based, the
            header is line 1) and `_ingested_at`.
    """

    path: Path
    relative: str
    header: tuple[str, ...]
    header_problem: str | None
    lines: pl.DataFrame


_decode_errors = threading.local()


def _record_decode_error(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError)
    _decode_errors.offsets.append(error.start)
    return REPLACEMENT, error.end


codecs.register_error("mlops_landing_record", _record_decode_error)


def _decode(data: bytes) -> tuple[str, list[int]]:
    """Decode UTF-8, replacing bad bytes, and return where each bad sequence started."""
    # The error handler runs only for bad bytes, so clean files decode at C speed.
    _decode_errors.offsets = []
    text = data.decode("utf-8", errors="mlops_landing_record")
    return text, _decode_errors.offsets


def _lines_at(data: bytes, offsets: list[int]) -> set[int]:
    """0-based line numbers holding the given byte offsets."""
    lines: set[int] = set()
    line, previous = 0, 0
    for offset in sorted(offsets):
        line += data.count(b"\n", previous, offset)
        previous = offset
        lines.add(line)
    return lines


# Names a writer uses while a file is still being written (the landing contract: write under
# such a name, rename when whole); never read.
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".inprogress", ".filepart", ".crdownload")


def is_partial(name: str) -> bool:
    """Whether a landed name is one a writer is still writing (hidden or temporary)."""
    return name.startswith((".", "_", "~")) or name.lower().endswith(PARTIAL_SUFFIXES)


def day_files(landing_root: Path, source: str, day: datetime.date) -> list[Path]:
    """Complete landing files of one source for one day, in name order (no partial names)."""
    folder = landing_root / source / day.isoformat()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not is_partial(p.name))


def read_landing_file(
    path: Path, landing_root: Path, ingested_at: datetime.datetime
) -> LandingFile:
    """Read a landing file into raw lines; undecodable lines are kept, marked as not UTF-8.

    Args:
        path: The file.
        landing_root: Root the recorded source path is relative to.
        ingested_at: Ingestion time stamped on every line.

    Returns:
        The file's header and lines.
    """
    data = path.read_bytes()
    text, bad_offsets = _decode(data)
    text_lines = text.split("\n")
    if text_lines and text_lines[-1] == "":
        text_lines.pop()  # the file's final newline ends the last line, it starts none
    invalid = _lines_at(data, bad_offsets)
    relative = path.relative_to(landing_root).as_posix()
    header: tuple[str, ...] = ()
    problem: str | None = None
    if not text_lines:
        problem = "file is empty"
    elif 0 in invalid:
        problem = "header line is not valid UTF-8"
    else:
        header = tuple(name.strip() for name in text_lines[0].removesuffix("\r").split(","))
        if any(not name for name in header):
            problem = f"header {text_lines[0]!r} has an empty column name"
        elif len(set(header)) != len(header):
            problem = f"header {text_lines[0]!r} repeats a column name"
    if problem:
        header = ()
    first = 0 if problem else 1
    raw = pl.Series(RAW, text_lines[first:], dtype=pl.String).str.strip_suffix("\r")
    body_invalid = pl.Series([i - first for i in sorted(invalid) if i >= first], dtype=pl.Int64)
    lines = raw.to_frame().with_columns(
        ~pl.int_range(pl.len(), dtype=pl.Int64).is_in(body_invalid.implode()).alias(UTF8),
        pl.lit(relative).alias(SOURCE_FILE),
        (pl.int_range(pl.len(), dtype=pl.Int64) + first + 1).alias(LINE_NUMBER),
        pl.lit(ingested_at).cast(pl.Datetime("us", "UTC")).alias(INGESTED_AT),
    )
    return LandingFile(path, relative, header, problem, lines)


# The landing contract's completion marker: a feed writes a day's data files first (each under
# a temporary name, renamed when whole) and the day's manifest last, `_manifests/<day>.json`.
MANIFESTS_DIR = "_manifests"
SOURCES = ("transactions", "labels")


def complete_landing_days(
    landing_root: Path,
    now: datetime.datetime,
    quiet: datetime.timedelta = datetime.timedelta(minutes=30),
) -> list[datetime.date]:
    """Landing days that are complete, oldest first.

    A day is complete when its manifest exists (the feed says so), or, for feeds that write
    no manifest, once the day has ended (UTC) and none of its files changed for `quiet`: a
    file still being written or a late part file keeps the day open.

    Args:
        landing_root: The environment's landing folder.
        now: The current time (UTC), e.g. a schedule tick's time.
        quiet: How long a day without a manifest must be untouched after it ended.
    """
    days: dict[datetime.date, list[Path]] = {}
    for source in SOURCES:
        folder = landing_root / source
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            try:
                day = datetime.date.fromisoformat(entry.name)
            except ValueError:
                continue
            if entry.is_dir():
                days.setdefault(day, []).append(entry)
    manifests = landing_root / MANIFESTS_DIR
    complete = []
    for day, folders in sorted(days.items()):
        if (manifests / f"{day.isoformat()}.json").is_file():
            complete.append(day)
            continue
        ended = datetime.datetime.combine(
            day + datetime.timedelta(days=1), datetime.time(), datetime.UTC
        )
        if now < ended + quiet:
            continue
        changed = max(
            (p.stat().st_mtime for folder in folders for p in folder.iterdir()),
            default=0.0,
        )
        if changed <= (now - quiet).timestamp():
            complete.append(day)
    return complete
