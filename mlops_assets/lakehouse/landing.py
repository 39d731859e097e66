"""Read landing files as raw records with their ingestion metadata, losing none.

Files come as exporters write them: a UTF-8 byte-order mark is dropped, CRLF and LF both end
lines, gzip-compressed files (by their magic bytes) are read decompressed, and RFC 4180 quoting
is honoured (a quoted field may hold the separator, `""` for a quote and line breaks; such a
record spans several physical lines and is numbered by its first). Lines without a quote, the
vast majority, are kept as raw text and split later by the engine; only records holding a quote
are parsed here, with Python's csv module, into their fields.

A file the project cannot read (binary content, another separator, a header that is unusable or
lacks the contract's required columns, an unterminated quoted field) keeps every physical line,
each with the file's reason, so that it goes to quarantine whole.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import datetime
import gzip
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mlops_assets.transforms.bronze import (
    FIELDS,
    INGESTED_AT,
    LINE_NUMBER,
    PROBLEM,
    RAW,
    SOURCE_FILE,
    UTF8,
)

REPLACEMENT = "\ufffd"  # what an undecodable byte sequence reads as
SEPARATOR = ","
QUOTE = '"'
GZIP_MAGIC = b"\x1f\x8b"
# A record longer than this is quarantined whole, with its length.
MAX_LINE_BYTES = 1 << 20
# Content with more undecodable bytes than this share is binary, not text with a few bad bytes.
MAX_UNDECODABLE_SHARE = 0.25
# Separators of other CSV dialects, recognised in a header that reads as one column.
OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "pipes"}


class LandingFileChangedError(RuntimeError):
    """A landing file changed while it was read: a writer is still writing it."""


@dataclass(frozen=True)
class LandingFile:
    """One landing file split into its header and its data records.

    Attributes:
        path: The file.
        relative: Its path relative to the landing root (what lineage records).
        header: Field names from the first record (empty when the file is unusable).
        header_problem: Why the whole file is unusable, or None.
        lines: Frame with one row per record: `raw` (its text, undecodable bytes replaced),
            `_utf8` (whether its bytes are valid UTF-8), `_source_file`, `_line_number`
            (1-based number of its first physical line, the header is line 1) and
            `_ingested_at`. When records hold quotes, `_fields` has their parsed fields (null
            on the other records); when records cannot be used (malformed quoting, too long),
            `_problem` says why (null on the other records). An unusable file has one row per
            physical line, numbered from the header.
        compressed: Whether the file was gzip-compressed.
    """

    path: Path
    relative: str
    header: tuple[str, ...]
    header_problem: str | None
    lines: pl.DataFrame
    compressed: bool = False


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


def day_folder(landing_root: Path, source: str, day: datetime.date) -> Path:
    """The landing folder of one source for one day."""
    return landing_root / source / day.isoformat()


def day_files(landing_root: Path, source: str, day: datetime.date) -> list[Path]:
    """Complete landing files of one source for one day, in name order (no partial names)."""
    folder = day_folder(landing_root, source, day)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not is_partial(p.name))


def _read_whole(path: Path) -> bytes:
    """The file's bytes, refused when the file changed while it was read."""
    before = path.stat()
    data = path.read_bytes()
    after = path.stat()
    if (
        before.st_size != after.st_size
        or before.st_mtime_ns != after.st_mtime_ns
        or len(data) != after.st_size
    ):
        raise LandingFileChangedError(
            f"landing file {path} changed while it was read ({before.st_size} bytes before, "
            f"{len(data)} read, {after.st_size} after; modified "
            f"{datetime.datetime.fromtimestamp(after.st_mtime, datetime.UTC).isoformat()}): "
            "it is still being written. A feed writes a file under a partial name "
            "(e.g. `.part`) and renames it when whole; run again once it is complete."
        )
    return data


def _content(path: Path, data: bytes) -> tuple[bytes, bool, str | None]:
    """The file's text bytes (decompressed), whether it was compressed, and a problem."""
    compressed = data[:2] == GZIP_MAGIC
    if not compressed:
        if path.name.lower().endswith(".gz") and data:
            return data, False, "file is named .gz but is not gzip-compressed"
        return data, False, None
    try:
        return gzip.decompress(data), True, None
    except (OSError, EOFError, zlib.error) as error:
        return data, True, f"gzip-compressed file cannot be decompressed: {error}"


def _ends_in_quotes(line: str, in_quotes: bool) -> bool:
    """Whether a physical line ends inside a quoted field, given whether it starts inside one.

    A quote opens a quoted field only at the start of a field; inside one, `""` is a quote.
    """
    i, n = 0, len(line)
    while True:
        if in_quotes:
            j = line.find(QUOTE, i)
            if j < 0:
                return True
            if j + 1 < n and line[j + 1] == QUOTE:
                i = j + 2
                continue
            in_quotes = False
            i = j + 1
        elif i < n and line[i] == QUOTE:
            in_quotes = True
            i += 1
            continue
        k = line.find(SEPARATOR, i)
        if k < 0:
            return False
        i = k + 1


def _record_spans(physical: pl.Series) -> tuple[list[tuple[int, int]], set[int], int | None]:
    """Multi-line records, records holding a quote, and an unterminated quote's line.

    Returns:
        `(spans, quoted, unterminated)`: spans are `(first, last)` 0-based physical lines of
        records that continue over several lines; `quoted` the first lines of records holding
        a quote; `unterminated` the line whose quoted field never closes, or None.
    """
    spans: list[tuple[int, int]] = []
    quoted: set[int] = set()
    in_quotes, opened = False, 0
    for index in physical.str.contains(QUOTE, literal=True).arg_true().to_list():
        line = physical[index]
        if not in_quotes:
            quoted.add(index)
        ends_in_quotes = _ends_in_quotes(line, in_quotes)
        if ends_in_quotes and not in_quotes:
            opened = index
        elif in_quotes and not ends_in_quotes:
            spans.append((opened, index))
        in_quotes = ends_in_quotes
    return spans, quoted, opened if in_quotes else None


def _join_spans(
    physical: list[str], spans: list[tuple[int, int]]
) -> tuple[list[str], list[int] | None]:
    """Records and their first physical line numbers (0-based), multi-line records joined.

    The numbers are None when no record spans several lines (record i is line i).
    """
    if not spans:
        return physical, None
    records: list[str] = []
    numbers: list[int] = []
    previous = 0
    for first, last in spans:
        records.extend(physical[previous:first])
        numbers.extend(range(previous, first))
        records.append("\n".join(physical[first : last + 1]))
        numbers.append(first)
        previous = last + 1
    records.extend(physical[previous:])
    numbers.extend(range(previous, len(physical)))
    return records, numbers


def _parse_quoted(record: str) -> tuple[list[str] | None, str | None]:
    """A record holding a quote parsed as RFC 4180 CSV: its fields, or why it cannot be."""
    try:
        rows = list(csv.reader([record], strict=True))
    except csv.Error as error:
        return None, f"malformed quoted field: {error}"
    if len(rows) != 1:
        return None, f"malformed quoted field: the record reads as {len(rows)} rows"
    return rows[0], None


def _header_problem(
    header: tuple[str, ...], header_text: str, required: Sequence[str]
) -> str | None:
    """Why a header cannot be used, or None."""
    if len(header) == 1:
        for separator, name in OTHER_SEPARATORS.items():
            if separator in header[0]:
                return (
                    f"header {header_text!r} is one column holding {separator!r}: the file is "
                    f"separated by {name}, not commas"
                )
    if any(not name for name in header):
        return f"header {header_text!r} has an empty column name"
    if len(set(header)) != len(header):
        return f"header {header_text!r} repeats a column name"
    missing = [name for name in required if name not in header]
    if missing:
        return f"header {header_text!r} lacks required columns {', '.join(missing)}"
    return None


def read_landing_file(
    path: Path,
    landing_root: Path,
    ingested_at: datetime.datetime,
    *,
    required: Sequence[str] = (),
    max_line_bytes: int = MAX_LINE_BYTES,
) -> LandingFile:
    """Read a landing file into raw records; bad records are kept, with their problem.

    Args:
        path: The file.
        landing_root: Root the recorded source path is relative to.
        ingested_at: Ingestion time stamped on every record.
        required: Columns the header must name (the source's contract); a header lacking one
            makes the whole file unusable.
        max_line_bytes: Longest record accepted, in bytes (UTF-8).

    Returns:
        The file's header and records.

    Raises:
        LandingFileChangedError: The file's size or modification time changed while it was
            read.
    """
    relative = path.relative_to(landing_root).as_posix()
    data, compressed, problem = _content(path, _read_whole(path))
    if problem is None and b"\x00" in data:
        problem = "file is binary: it holds NUL bytes"
    data = data.removeprefix(codecs.BOM_UTF8)
    text, bad_offsets = _decode(data)
    if problem is None and len(bad_offsets) > MAX_UNDECODABLE_SHARE * len(data):
        problem = (
            f"file is binary: {len(bad_offsets)} of its {len(data)} bytes start invalid UTF-8 "
            "sequences"
        )
    invalid = _lines_at(data, bad_offsets)
    # The bytes, then the whole text, are let go as soon as they are not needed: a day's file
    # is not held three times over while it is split into lines.
    size = len(data)
    del data
    has_quote, carriage_returns = QUOTE in text, "\r" in text
    physical = text.split("\n")
    del text
    if physical and physical[-1] == "":
        physical.pop()  # the file's final newline ends the last line, it starts none
    if problem is None and not physical:
        problem = "file is empty"
    spans: list[tuple[int, int]] = []
    quoted: set[int] = set()
    # The physical lines as one polars column, built once (the records are these lines
    # unless a quoted record spans several).
    lines_column = pl.Series(RAW, physical, dtype=pl.String)
    if problem is None and has_quote:
        spans, quoted, unterminated = _record_spans(lines_column)
        if unterminated is not None:
            problem = (
                f"unterminated quoted field: the quote opened on line {unterminated + 1} "
                "is never closed"
            )
    header: tuple[str, ...] = ()
    if problem is None:
        records, numbers = _join_spans(physical, spans)
        header_text = records[0].removesuffix("\r")
        if 0 in invalid:
            problem = "header line is not valid UTF-8"
        elif 0 in quoted:
            fields, problem = _parse_quoted(header_text)
            header = tuple(name.strip() for name in fields or ())
        else:
            header = tuple(name.strip() for name in header_text.split(SEPARATOR))
        problem = problem or _header_problem(header, header_text, required)
    if problem:
        # The whole file goes to quarantine: one row per physical line, the header included.
        frame = _frame(lines_column, None, 0, carriage_returns)
        lines = _stamp(frame, invalid, relative, ingested_at)
        return LandingFile(path, relative, (), problem, lines, compressed)
    raw = lines_column.slice(1) if numbers is None else pl.Series(RAW, records[1:], dtype=pl.String)
    frame = _frame(raw, None if numbers is None else numbers[1:], 1, carriage_returns)
    if quoted:
        # Records holding a quote (few) are parsed here; the others are split by the engine.
        fields_of: list[list[str] | None] = [None] * len(raw)
        problems: list[str | None] = [None] * len(raw)
        for number in quoted - {0}:
            i = number - 1 if numbers is None else bisect.bisect_left(numbers, number) - 1
            fields_of[i], problems[i] = _parse_quoted(records[i + 1].removesuffix("\r"))
        frame = frame.with_columns(
            pl.Series(FIELDS, fields_of, dtype=pl.List(pl.String)),
            pl.Series(PROBLEM, problems, dtype=pl.String),
        )
    if size > max_line_bytes:
        frame = _bound_lengths(frame, max_line_bytes)
    lines = _stamp(frame, invalid, relative, ingested_at)
    return LandingFile(path, relative, header, None, lines, compressed)


def _bound_lengths(frame: pl.DataFrame, max_line_bytes: int) -> pl.DataFrame:
    """Records longer than the bound get a problem (their whole text is kept, for quarantine)."""
    length = pl.col(RAW).str.len_bytes()
    if not frame.select((length > max_line_bytes).any()).item():
        return frame
    too_long = pl.when(length > max_line_bytes).then(
        pl.format("line is {} bytes long, over the {}-byte limit", length, pl.lit(max_line_bytes))
    )
    if PROBLEM in frame.columns:
        too_long = pl.coalesce(pl.col(PROBLEM), too_long)
    return frame.with_columns(too_long.alias(PROBLEM))


def _frame(
    raw: pl.Series, numbers: list[int] | None, start: int, carriage_returns: bool = True
) -> pl.DataFrame:
    """Records with their 0-based first physical line, CR line ends dropped.

    `numbers` are the records' first lines; None when records are consecutive lines from
    `start`. `carriage_returns` says whether the text holds any CR (without one, there is
    none to drop).
    """
    first = (
        pl.int_range(start, start + len(raw), dtype=pl.Int64, eager=True)
        if numbers is None
        else pl.Series(numbers, dtype=pl.Int64)
    )
    text = raw.str.strip_suffix("\r") if carriage_returns else raw
    return pl.DataFrame([text.alias(RAW), first.alias("_first")])


def _stamp(
    frame: pl.DataFrame, invalid: set[int], relative: str, ingested_at: datetime.datetime
) -> pl.DataFrame:
    """Records with their UTF-8 validity, source file, line number and ingestion time.

    A record is invalid UTF-8 when any of its physical lines is.
    """
    first = frame.get_column("_first")
    if invalid:
        # Map each invalid physical line to the record it belongs to (the last record whose
        # first line is not after it); `first` is ascending.
        lines = pl.Series(sorted(line for line in invalid if frame.height and line >= first[0]))
        records = first.search_sorted(lines.cast(pl.Int64), side="right") - 1
        bad = first.gather(records) if len(lines) else pl.Series([], dtype=pl.Int64)
        utf8 = ~first.is_in(bad.implode())
    else:
        utf8 = pl.repeat(True, frame.height, eager=True, dtype=pl.Boolean)
    return frame.select(
        RAW,
        *[c for c in (FIELDS, PROBLEM) if c in frame.columns],
        utf8.alias(UTF8),
        pl.lit(relative).alias(SOURCE_FILE),
        (first + 1).alias(LINE_NUMBER),
        pl.lit(ingested_at).cast(pl.Datetime("us", "UTC")).alias(INGESTED_AT),
    )


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
