"""Silver: type and validate bronze records, reject the invalid with a reason, drop re-sends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import narwhals as nw
from narwhals.typing import FrameT

from mlops_assets.transforms.bronze import INGESTED_AT, LINE_NUMBER, REASON, SOURCE_FILE

# ISO-8601 UTC timestamps as sources send them: date, time, optional fraction, Z or +00:00.
TIMESTAMP_PATTERN = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[T ]([01]\d|2[0-3]):[0-5]\d:[0-5]\d"
    r"(\.\d{1,9})?(Z|\+00:?00)?$"
)
DECIMAL_PATTERN = r"^[+-]?(\d+(\.\d*)?|\.\d+)$"
BOOLEAN_VALUES = ("0", "1", "true", "false")

MAX_AMOUNT = 1_000_000.0
# Events older than this many days before their landing day are refused as implausible.
MAX_LATENESS_DAYS = 30
# Clock skew allowed for events stamped after their landing day.
MAX_SKEW_HOURS = 2

LINEAGE_COLUMNS = (SOURCE_FILE, LINE_NUMBER, INGESTED_AT)


@dataclass(frozen=True)
class Contract:
    """A silver table's contract: key, required and optional string columns, typed columns.

    Attributes:
        key: Column that identifies one event; a duplicate key is a re-sent event.
        required: Columns that must be present and non-empty.
        optional: Columns kept when present, null otherwise (including columns a source adds
            later, such as `terminal_id`).
        decimals: Columns parsed as Float64.
        timestamps: Columns parsed as UTC timestamps.
        booleans: Columns parsed as booleans (`0/1/true/false`).
        allowed: Column to the values it may take.
    """

    key: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    decimals: tuple[str, ...] = ()
    timestamps: tuple[str, ...] = ()
    booleans: tuple[str, ...] = ()
    allowed: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """Every contract column, required first."""
        return self.required + self.optional


TRANSACTIONS = Contract(
    key="transaction_id",
    required=(
        "transaction_id",
        "event_time",
        "card_id",
        "merchant_id",
        "merchant_category",
        "amount",
        "currency",
        "channel",
    ),
    optional=("country", "card_country", "entry_mode", "device_type", "device_id", "terminal_id"),
    decimals=("amount",),
    timestamps=("event_time",),
    allowed=(("channel", ("pos", "online", "atm")),),
)

LABELS = Contract(
    key="transaction_id",
    required=("transaction_id", "reported_at", "is_fraud"),
    optional=("card_id", "chargeback_reason"),
    timestamps=("reported_at",),
    booleans=("is_fraud",),
)


def _blank(name: str) -> nw.Expr:
    return nw.col(name).is_null() | (nw.col(name).str.strip_chars() == "")


def _first_reason(rules: Sequence[tuple[nw.Expr, nw.Expr]]) -> nw.Expr:
    # The first failing rule names the record's problem.
    expression: nw.Expr = nw.lit(None, dtype=nw.String)
    for condition, reason in reversed(rules):
        expression = nw.when(condition).then(reason).otherwise(expression)
    return expression


def _quoted(name: str) -> nw.Expr:
    return nw.concat_str(nw.lit("'"), nw.col(name), nw.lit("'"))


def validate(bronze: FrameT, contract: Contract, landing_day_column: str) -> tuple[FrameT, FrameT]:
    """Type bronze string records by a contract and split them into valid and rejected.

    Args:
        bronze: Bronze records: string columns as landed, lineage columns and the landing day.
        contract: The table's contract.
        landing_day_column: Date column holding the landing day (bounds event times).

    Returns:
        `(valid, rejected)`. `valid` has the contract's columns typed, then lineage and the
        landing day; `rejected` keeps the bronze columns plus `reason` and `column` naming the
        first problem found.
    """
    present = set(bronze.columns)
    filled = bronze.with_columns(
        *[nw.lit(None, dtype=nw.String).alias(c) for c in contract.columns if c not in present]
    )
    rules: list[tuple[nw.Expr, nw.Expr, str]] = []
    for name in contract.required:
        rules.append((_blank(name), nw.lit(f"missing required field {name}"), name))
    for name in contract.decimals:
        rules.append(
            (
                ~_blank(name) & ~nw.col(name).str.strip_chars().str.contains(DECIMAL_PATTERN),
                nw.concat_str(_quoted(name), nw.lit(f" in {name} is not a decimal number")),
                name,
            )
        )
    for name in contract.timestamps:
        rules.append(
            (
                ~_blank(name) & ~nw.col(name).str.strip_chars().str.contains(TIMESTAMP_PATTERN),
                nw.concat_str(
                    _quoted(name), nw.lit(f" in {name} is not an ISO-8601 UTC timestamp")
                ),
                name,
            )
        )
    for name in contract.booleans:
        rules.append(
            (
                ~_blank(name)
                & ~nw.col(name).str.strip_chars().str.to_lowercase().is_in(BOOLEAN_VALUES),
                nw.concat_str(_quoted(name), nw.lit(f" in {name} is not one of 0, 1, true, false")),
                name,
            )
        )
    for name, values in contract.allowed:
        rules.append(
            (
                ~_blank(name) & ~nw.col(name).is_in(values),
                nw.concat_str(
                    _quoted(name), nw.lit(f" in {name} is not one of {', '.join(values)}")
                ),
                name,
            )
        )
    checked = filled.with_columns(
        _first_reason([(c, r) for c, r, _ in rules]).alias(REASON),
        _first_reason([(c, nw.lit(n)) for c, _, n in rules]).alias("column"),
    )
    format_ok = checked.filter(nw.col(REASON).is_null()).drop(REASON, "column")
    typed = format_ok.with_columns(
        *[nw.col(c).str.strip_chars().cast(nw.Float64) for c in contract.decimals],
        *[_parse_timestamp(c) for c in contract.timestamps],
        *[
            nw.col(c).str.strip_chars().str.to_lowercase().is_in(("1", "true"))
            for c in contract.booleans
        ],
        *[
            nw.when(_blank(c)).then(nw.lit(None, dtype=nw.String)).otherwise(nw.col(c)).alias(c)
            for c in contract.optional
            if c not in contract.decimals + contract.timestamps + contract.booleans
        ],
    )
    range_rules = _range_rules(contract, landing_day_column)
    ranged = typed.with_columns(
        _first_reason([(c, r) for c, r, _ in range_rules]).alias(REASON),
        _first_reason([(c, nw.lit(n)) for c, _, n in range_rules]).alias("column"),
    )
    valid = ranged.filter(nw.col(REASON).is_null()).select(
        *contract.columns, *LINEAGE_COLUMNS, landing_day_column
    )
    bronze_columns = [c for c in bronze.columns]
    out_of_range = (
        ranged.filter(~nw.col(REASON).is_null())
        .select(LINE_NUMBER, SOURCE_FILE, REASON, "column")
        .join(
            filled.select(*bronze_columns),
            on=[SOURCE_FILE, LINE_NUMBER],
            how="inner",
        )
    )
    rejected = nw.concat(
        [
            checked.filter(~nw.col(REASON).is_null()).select(*bronze_columns, REASON, "column"),
            out_of_range.select(*bronze_columns, REASON, "column"),
        ],
        how="vertical",
    )
    return valid, rejected


def _parse_timestamp(name: str) -> nw.Expr:
    text = (
        nw.col(name)
        .str.strip_chars()
        .str.replace(" ", "T", literal=True)
        .str.replace("+00:00", "Z", literal=True)
        .str.replace("+0000", "Z", literal=True)
    )
    # A missing zone means UTC; a missing fraction means whole seconds.
    text = nw.when(text.str.ends_with("Z")).then(text).otherwise(nw.concat_str(text, nw.lit("Z")))
    text = (
        nw.when(text.str.len_chars() == 20)
        .then(nw.concat_str(text.str.slice(0, 19), nw.lit(".000000Z")))
        .otherwise(text)
    )
    return (
        text.str.to_datetime(format="%Y-%m-%dT%H:%M:%S%.fZ")
        .dt.replace_time_zone("UTC")
        .cast(nw.Datetime("us", "UTC"))
        .alias(name)
    )


def _range_rules(contract: Contract, landing_day: str) -> list[tuple[nw.Expr, nw.Expr, str]]:
    rules: list[tuple[nw.Expr, nw.Expr, str]] = []
    for name in contract.decimals:
        rules.append(
            (
                (nw.col(name) <= 0) | (nw.col(name) > MAX_AMOUNT) | ~nw.col(name).is_finite(),
                nw.concat_str(
                    nw.col(name).cast(nw.String),
                    nw.lit(f" in {name} is outside (0, {MAX_AMOUNT:.0f}]"),
                ),
                name,
            )
        )
    for name in contract.timestamps:
        too_early = (
            nw.col(landing_day).cast(nw.Datetime("us", "UTC")) - nw.col(name)
        ).dt.total_seconds() > MAX_LATENESS_DAYS * 86_400
        too_late = (
            nw.col(name) - nw.col(landing_day).cast(nw.Datetime("us", "UTC"))
        ).dt.total_seconds() > 86_400 + MAX_SKEW_HOURS * 3_600
        rules.append(
            (
                too_early | too_late,
                nw.concat_str(
                    nw.col(name).cast(nw.String),
                    nw.lit(
                        f" in {name} is not within {MAX_LATENESS_DAYS} days before its landing "
                        f"day or {MAX_SKEW_HOURS} h after it"
                    ),
                ),
                name,
            )
        )
    return rules


def deduplicate(valid: FrameT, key: str, known_keys: FrameT) -> tuple[FrameT, int, int]:
    """Keep each event once: the first line of a batch, and only if no other partition has it.

    Args:
        valid: Validated records of one landing day.
        key: The event key column.
        known_keys: Frame with the `key` column of events already in the table's other
            partitions.

    Returns:
        `(unique, duplicates_in_batch, duplicates_of_other_partitions)`.
    """
    first = valid.filter(nw.col(key).is_first_distinct().over(order_by=[SOURCE_FILE, LINE_NUMBER]))
    unique = first.join(known_keys.select(key).unique(), on=key, how="anti")
    in_batch = len(valid) - len(first)
    of_others = len(first) - len(unique)
    return unique.sort(SOURCE_FILE, LINE_NUMBER), in_batch, of_others


def with_event_date(records: FrameT, time_column: str, date_column: str) -> FrameT:
    """Add the UTC calendar day of a timestamp column (for partition pruning and gold)."""
    return records.with_columns(nw.col(time_column).dt.date().alias(date_column))
