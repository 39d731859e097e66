"""Bronze: split raw landing lines into string fields by the file's header, or reject them."""

from __future__ import annotations

from collections.abc import Sequence

import narwhals as nw
from narwhals.typing import FrameT

# Ingestion metadata every bronze record carries.
SOURCE_FILE = "_source_file"
LINE_NUMBER = "_line_number"
INGESTED_AT = "_ingested_at"
RAW = "raw"
UTF8 = "_utf8"
REASON = "reason"
COLUMN = "column"


def _reason(utf8, raw, count, expected_fields: int, when, lit, concat):
    # Written once for both expression APIs (narwhals and polars share these method names).
    return (
        when(~utf8)
        .then(lit("line is not valid UTF-8"))
        .otherwise(
            when(raw == "")
            .then(lit("empty line"))
            .otherwise(
                when(raw.str.contains('"', literal=True))
                .then(lit("line holds a quote character; quoted CSV fields are not accepted"))
                .otherwise(
                    when(count != expected_fields).then(
                        concat(lit(f"expected {expected_fields} fields, found "), count)
                    )
                )
            )
        )
    )


def split_lines(
    lines: FrameT, header: Sequence[str], separator: str = ",", *, portable: bool = False
) -> tuple[FrameT, FrameT]:
    """Split landing lines into one string column per header field.

    A line is rejected, with a reason, when it is not valid UTF-8, is empty, holds a quote
    character (quoted CSV is not accepted from landing sources), or has a field count other
    than the header's. Values are kept exactly as they arrived, as strings.

    Args:
        lines: Frame with `raw` (the line as text), `_utf8` (whether its bytes were valid
            UTF-8) and ingestion metadata columns.
        header: Field names from the file's first line.
        separator: Field separator (one character).
        portable: Use the engine-neutral narwhals path even on polars (for parity tests).

    Returns:
        `(records, rejects)`: records have the header's columns plus the ingestion metadata;
        rejects keep the metadata, `raw` and a `reason`.
    """
    metadata = [c for c in lines.columns if c not in (RAW, UTF8)]
    if lines.implementation is nw.Implementation.POLARS and not portable:
        return _split_polars(lines, header, separator, metadata)
    raw = nw.col(RAW)
    count = raw.str.len_chars() - raw.str.replace_all(separator, "", literal=True).str.len_chars()
    reason = _reason(
        nw.col(UTF8),
        raw,
        (count + 1).cast(nw.Int64),
        len(header),
        nw.when,
        nw.lit,
        lambda text, number: nw.concat_str(text, number.cast(nw.String)),
    )
    checked = lines.with_columns(reason.alias(REASON))
    fields = raw.str.split(separator)
    records = checked.filter(nw.col(REASON).is_null()).select(
        *[fields.list.get(index).alias(name) for index, name in enumerate(header)],
        *metadata,
    )
    rejects = checked.filter(~nw.col(REASON).is_null()).select(*metadata, RAW, REASON)
    return records, rejects


def _split_polars(lines, header: Sequence[str], separator: str, metadata: list[str]):
    # polars counts separators and splits into a struct without building per-row lists:
    # several times faster than the portable path, with the same result (a parity test holds
    # them equal).
    import polars as pl

    raw = pl.col(RAW)
    count = raw.str.count_matches(separator, literal=True).cast(pl.Int64) + 1
    reason = _reason(
        pl.col(UTF8),
        raw,
        count,
        len(header),
        pl.when,
        pl.lit,
        lambda text, number: pl.concat_str(text, number.cast(pl.String)),
    )
    checked = lines.to_native().with_columns(reason.alias(REASON))
    records = (
        checked.filter(pl.col(REASON).is_null())
        .select(
            raw.str.split_exact(separator, len(header) - 1).struct.rename_fields(list(header)),
            *metadata,
        )
        .unnest(RAW)
    )
    rejects = checked.filter(pl.col(REASON).is_not_null()).select(*metadata, RAW, REASON)
    return nw.from_native(records), nw.from_native(rejects)
