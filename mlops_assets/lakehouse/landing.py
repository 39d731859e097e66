"""Read landing files as raw lines with their ingestion metadata, losing none."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mlops_assets.transforms.bronze import INGESTED_AT, LINE_NUMBER, SOURCE_FILE

REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class LandingFile:
    """One landing file split into its header and its data lines.

    Attributes:
        path: The file.
        relative: Its path relative to the landing root (what lineage records).
        header: Field names from the first line (empty when the file has no usable header).
        header_problem: Why the header is unusable, or None.
        lines: Frame with `raw` (null when not UTF-8), `raw_text`, `_source_file`,
            `_line_number` (1-based, the header is line 1) and `_ingested_at`.
    """

    path: Path
    relative: str
    header: tuple[str, ...]
    header_problem: str | None
    lines: pl.DataFrame


def day_files(landing_root: Path, source: str, day: datetime.date) -> list[Path]:
    """Landing files of one source for one day, in name order."""
    folder = landing_root / source / day.isoformat()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_landing_file(
    path: Path, landing_root: Path, ingested_at: datetime.datetime
) -> LandingFile:
    """Read a landing file into raw lines; undecodable lines are kept, marked by a null `raw`.

    Args:
        path: The file.
        landing_root: Root the recorded source path is relative to.
        ingested_at: Ingestion time stamped on every line.

    Returns:
        The file's header and lines.
    """
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    text_lines = text.split("\n")
    if text_lines and text_lines[-1] == "":
        text_lines.pop()  # the file's final newline ends the last line, it starts none
    raw_lines: list[str | None] = [line.removesuffix("\r") for line in text_lines]
    if REPLACEMENT in text:
        # Only lines showing a replacement character can be undecodable; check those bytes.
        byte_lines = data.split(b"\n")
        for index, line in enumerate(raw_lines):
            if line is not None and REPLACEMENT in line:
                try:
                    byte_lines[index].decode("utf-8")
                except UnicodeDecodeError:
                    raw_lines[index] = None
    relative = path.relative_to(landing_root).as_posix()
    header: tuple[str, ...] = ()
    problem: str | None = None
    if not raw_lines:
        problem = "file is empty"
    else:
        header_line = raw_lines[0]
        if header_line is None:
            problem = "header line is not valid UTF-8"
        else:
            header = tuple(name.strip() for name in header_line.split(","))
            if any(not name for name in header):
                problem = f"header {header_line!r} has an empty column name"
            elif len(set(header)) != len(header):
                problem = f"header {header_line!r} repeats a column name"
        if problem:
            header = ()
    first_data_line = 1 if problem else 2
    body = raw_lines if problem else raw_lines[1:]
    body_text = text_lines if problem else text_lines[1:]
    lines = pl.DataFrame(
        {
            "raw": pl.Series(body, dtype=pl.String),
            "raw_text": pl.Series(body_text, dtype=pl.String),
        }
    ).with_columns(
        pl.lit(relative).alias(SOURCE_FILE),
        (pl.int_range(pl.len(), dtype=pl.Int64) + first_data_line).alias(LINE_NUMBER),
        pl.lit(ingested_at).cast(pl.Datetime("us", "UTC")).alias(INGESTED_AT),
    )
    return LandingFile(path, relative, header, problem, lines)
