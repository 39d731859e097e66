"""Bronze: split raw landing records into the contract's string fields, or reject them.

Bronze has a bounded schema: exactly the source contract's columns (as strings, null when a
file lacks an optional one), `_rescued_data` (the file's columns outside the contract, as one
JSON object, null when it has none) and the lineage columns. A file's extra columns never widen
the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import narwhals as nw
from narwhals.typing import FrameT

from mlops_assets.transforms import SPARK_LIKE

# Ingestion metadata every bronze record carries.
SOURCE_FILE = "_source_file"
LINE_NUMBER = "_line_number"
INGESTED_AT = "_ingested_at"
RAW = "raw"
UTF8 = "_utf8"
# Fields of a record holding a quote, parsed when the file was read (null on other records).
FIELDS = "_fields"
# Why the reader could not use a record (malformed quoting, too long), null otherwise.
PROBLEM = "_problem"
RESCUED = "_rescued_data"
REASON = "reason"
COLUMN = "column"
LINEAGE = (SOURCE_FILE, LINE_NUMBER, INGESTED_AT)
_READER_COLUMNS = (RAW, UTF8, FIELDS, PROBLEM)


def _reason(utf8, raw, count, expected_fields: int, when, lit, concat, problem, unparsed):
    # Written once for both expression APIs (narwhals and polars share these method names).
    return (
        when(~utf8)
        .then(lit("line is not valid UTF-8"))
        .otherwise(
            when(~problem.is_null())
            .then(problem)
            .otherwise(
                when(raw == "")
                .then(lit("empty line"))
                .otherwise(
                    when(unparsed)
                    .then(lit("line holds a quote character but was not parsed as CSV"))
                    .otherwise(
                        when(count != expected_fields).then(
                            concat(lit(f"expected {expected_fields} fields, found "), count)
                        )
                    )
                )
            )
        )
    )


def split_lines(
    lines: FrameT, header: Sequence[str], separator: str = ",", *, portable: bool = False
) -> tuple[FrameT, FrameT]:
    """Split landing records into one string column per header field.

    Records without a quote are split on the separator here, by the engine; records holding a
    quote were parsed when the file was read and carry their fields in `_fields`. A record is
    rejected, with a reason, when it is not valid UTF-8, the reader found it unusable
    (`_problem`), it is empty, it holds a quote but was not parsed, or its field count differs
    from the header's. Values are kept exactly as they arrived, as strings.

    Args:
        lines: Frame with `raw` (the record as text), `_utf8` (whether its bytes were valid
            UTF-8), optionally `_fields` and `_problem`, and ingestion metadata columns.
        header: Field names from the file's first line.
        separator: Field separator (one character).
        portable: Use the engine-neutral narwhals path even on polars (for parity tests).

    Returns:
        `(records, rejects)`: records have the header's columns plus the ingestion metadata;
        rejects keep the metadata, `raw` and a `reason`.
    """
    metadata = [c for c in lines.columns if c not in _READER_COLUMNS]
    if lines.implementation is nw.Implementation.POLARS and not portable:
        return _split_polars(lines, header, separator, metadata)
    raw = nw.col(RAW)
    parsed = FIELDS in lines.columns
    count = raw.str.len_chars() - raw.str.replace_all(separator, "", literal=True).str.len_chars()
    count = (count + 1).cast(nw.Int64)
    if parsed:
        count = (
            nw.when(nw.col(FIELDS).is_null())
            .then(count)
            .otherwise(nw.col(FIELDS).list.len().cast(nw.Int64))
        )
    reason = _reason(
        nw.col(UTF8),
        raw,
        count,
        len(header),
        nw.when,
        nw.lit,
        lambda text, number: nw.concat_str(text, number.cast(nw.String)),
        nw.col(PROBLEM) if PROBLEM in lines.columns else nw.lit(None, dtype=nw.String),
        _unparsed(raw.str.contains('"', literal=True), parsed, nw.col),
    )
    checked = lines.with_columns(reason.alias(REASON))
    fields = raw.str.split(separator)
    if parsed:
        fields = nw.when(nw.col(FIELDS).is_null()).then(fields).otherwise(nw.col(FIELDS))
    records = checked.filter(nw.col(REASON).is_null()).select(
        *[fields.list.get(index).alias(name) for index, name in enumerate(header)],
        *metadata,
    )
    rejects = checked.filter(~nw.col(REASON).is_null()).select(*metadata, RAW, REASON)
    return records, rejects


def _unparsed(has_quote, parsed: bool, col):
    """A record holding a quote that the reader did not parse (no `_fields`)."""
    return has_quote & col(FIELDS).is_null() if parsed else has_quote


def _split_polars(lines, header: Sequence[str], separator: str, metadata: list[str]):
    # polars splits every record into a struct of one field more than the header holds,
    # without building per-row lists: a record has the header's field count exactly when
    # its last expected field is present and the extra one is not, so one pass splits and
    # counts. Reasons (and the separator count they quote) are built for the rejected
    # records only. Several times faster than the portable path, with the same result (a
    # parity test holds them equal). Records parsed by the reader (few) take their fields
    # from `_fields`.
    import polars as pl

    native = lines.to_native()
    parsed = FIELDS in native.columns
    raw = pl.col(RAW)
    width = len(header)
    parts = [f"__field_{i}" for i in range(width + 1)]
    split = native.with_columns(
        raw.str.split_exact(separator, width).struct.rename_fields(parts).alias("__parts")
    ).unnest("__parts")
    counted = pl.col(parts[width - 1]).is_not_null() & pl.col(parts[width]).is_null()
    if parsed:
        counted = (
            pl.when(pl.col(FIELDS).is_null())
            .then(counted)
            .otherwise(pl.col(FIELDS).list.len() == width)
        )
    problem = pl.col(PROBLEM) if PROBLEM in native.columns else pl.lit(None, dtype=pl.String)
    has_quote = raw.str.contains('"', literal=True)
    # Exactly the records `_reason` finds nothing against.
    usable = (
        pl.col(UTF8)
        & problem.is_null()
        & (raw != "")
        & ~_unparsed(has_quote, parsed, pl.col)
        & counted
    )
    split = split.with_columns(usable.alias("__usable"))
    good = split.filter(pl.col("__usable"))
    plain = good.filter(pl.col(FIELDS).is_null()) if parsed else good
    records = plain.select(
        *[pl.col(part).alias(name) for part, name in zip(parts, header, strict=False)],
        *metadata,
    )
    if parsed:
        quoted = good.filter(pl.col(FIELDS).is_not_null()).select(
            *[pl.col(FIELDS).list.get(i).alias(name) for i, name in enumerate(header)],
            *metadata,
        )
        if quoted.height:
            records = pl.concat([records, quoted]).sort(LINE_NUMBER, maintain_order=True)
    bad = split.filter(~pl.col("__usable"))
    count = raw.str.count_matches(separator, literal=True).cast(pl.Int64) + 1
    if parsed:
        count = (
            pl.when(pl.col(FIELDS).is_null())
            .then(count)
            .otherwise(pl.col(FIELDS).list.len().cast(pl.Int64))
        )
    reason = _reason(
        pl.col(UTF8),
        raw,
        count,
        width,
        pl.when,
        pl.lit,
        lambda text, number: pl.concat_str(text, number.cast(pl.String)),
        problem,
        _unparsed(has_quote, parsed, pl.col),
    )
    rejects = bad.select(*metadata, RAW, reason.alias(REASON))
    return nw.from_native(records), nw.from_native(rejects)


def rescued_names(header: Sequence[str], columns: Sequence[str]) -> dict[str, str]:
    """The header's columns outside the contract, by the internal name bronze splits them to.

    Internal names are positional (`_rescued_<i>`), so a source column can never collide with
    a contract or lineage column (Spark, for one, does not tell names apart by case).
    """
    return {f"_rescued_{i}": name for i, name in enumerate(header) if name not in columns}


def split_records(
    lines: FrameT,
    header: Sequence[str],
    columns: Sequence[str],
    separator: str = ",",
    *,
    portable: bool = False,
) -> tuple[FrameT, FrameT]:
    """Split one file's records into bronze's bounded schema.

    Args:
        lines: The file's records (see `split_lines`).
        header: The file's column names, in its order.
        columns: The source contract's columns (required and optional), bronze's columns.
        separator: Field separator (one character).
        portable: Use the engine-neutral narwhals path even on polars (for parity tests).

    Returns:
        `(records, rejects)`: records have exactly `columns` (strings; null for a column the
        file lacks), `_rescued_data` and the ingestion metadata; rejects as `split_lines`.
    """
    rescued = rescued_names(header, columns)
    internal = {original: key for key, original in rescued.items()}
    split_header = [internal.get(name, name) for name in header]
    records, rejects = split_lines(lines, split_header, separator, portable=portable)
    metadata = [c for c in records.columns if c not in split_header]
    present = set(header)
    records = _with_rescued(records, rescued)
    return (
        records.select(
            *[
                nw.col(name) if name in present else nw.lit(None, dtype=nw.String).alias(name)
                for name in columns
            ],
            nw.col(RESCUED),
            *metadata,
        ),
        rejects,
    )


def _with_rescued(records: FrameT, rescued: Mapping[str, str]) -> FrameT:
    """Add `_rescued_data`: the rescued fields as one JSON object, null without any."""
    if not rescued:
        return records.with_columns(nw.lit(None, dtype=nw.String).alias(RESCUED))
    import polars as pl

    native = records.to_native()
    if isinstance(native, pl.DataFrame | pl.LazyFrame):
        encoded = pl.struct([pl.col(k).alias(v) for k, v in rescued.items()]).struct.json_encode()
        return nw.from_native(native.with_columns(encoded.alias(RESCUED)))
    if records.implementation in SPARK_LIKE:
        from pyspark.sql import functions as F

        fields = F.struct(*[F.col(k).alias(v) for k, v in rescued.items()])
        return nw.from_native(
            native.withColumn(RESCUED, F.to_json(fields, {"ignoreNullFields": "false"}))
        )
    raise NotImplementedError(
        f"rescued columns are encoded from polars or Spark frames; got {records.implementation}"
    )
