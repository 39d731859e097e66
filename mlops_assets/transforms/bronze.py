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
REASON = "reason"
COLUMN = "column"


def split_lines(
    lines: FrameT, header: Sequence[str], separator: str = ","
) -> tuple[FrameT, FrameT]:
    """Split landing lines into one string column per header field.

    A line is rejected, with a reason, when it is not valid UTF-8 (`raw` is null), is empty,
    holds a quote character (quoted CSV is not accepted from landing sources), or has a field
    count other than the header's. Values are kept exactly as they arrived, as strings.

    Args:
        lines: Frame with `raw` (the decoded line, null when not UTF-8), `raw_text` (the line
            as text, with undecodable bytes replaced), and ingestion metadata columns.
        header: Field names from the file's first line.
        separator: Field separator.

    Returns:
        `(records, rejects)`: records have the header's columns plus the ingestion metadata;
        rejects keep the metadata, `raw_text` and a `reason`.
    """
    expected = len(header)
    fields = nw.col(RAW).str.split(separator)
    count = fields.list.len()
    reason = (
        nw.when(nw.col(RAW).is_null())
        .then(nw.lit("line is not valid UTF-8"))
        .otherwise(
            nw.when(nw.col(RAW) == "")
            .then(nw.lit("empty line"))
            .otherwise(
                nw.when(nw.col(RAW).str.contains('"', literal=True))
                .then(nw.lit("line holds a quote character; quoted CSV fields are not accepted"))
                .otherwise(
                    nw.when(count != expected).then(
                        nw.concat_str(
                            nw.lit(f"expected {expected} fields, found "),
                            count.cast(nw.String),
                        )
                    )
                )
            )
        )
    )
    checked = lines.with_columns(reason.alias(REASON))
    metadata = [c for c in lines.columns if c not in (RAW, "raw_text")]
    records = checked.filter(nw.col(REASON).is_null()).select(
        *[fields.list.get(index).alias(name) for index, name in enumerate(header)],
        *metadata,
    )
    rejects = checked.filter(~nw.col(REASON).is_null()).select(
        *metadata, nw.col("raw_text").alias(RAW), REASON
    )
    return records, rejects
