"""Silver: type and validate bronze records, reject the invalid with a reason, drop re-sends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import narwhals as nw
from narwhals.typing import FrameT

from mlops_assets.transforms import SPARK_LIKE
from mlops_assets.transforms.bronze import INGESTED_AT, LINE_NUMBER, REASON, SOURCE_FILE

# ISO-8601 UTC timestamps as sources send them: date, time, optional fraction, Z or +00:00.
TIMESTAMP_PATTERN = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[T ]([01]\d|2[0-3]):[0-5]\d:[0-5]\d"
    r"(\.\d{1,9})?(Z|\+00:?00)?$"
)
DECIMAL_PATTERN = r"^[+-]?(\d+(\.\d*)?|\.\d+)$"
# Every accepted timestamp is brought to this form before parsing (the fraction is optional).
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.fZ"
BOOLEAN_VALUES = ("0", "1", "true", "false")

MAX_AMOUNT = 1_000_000.0
# Events older than this many days before their landing day are refused as implausible.
MAX_LATENESS_DAYS = 30
# Clock skew allowed for events stamped after their landing day.
MAX_SKEW_HOURS = 2

LINEAGE_COLUMNS = (SOURCE_FILE, LINE_NUMBER, INGESTED_AT)
RULE = "__rule"


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
    # The value of the first rule whose condition holds, null when none does.
    expression: nw.Expr = nw.lit(None)
    for condition, reason in reversed(rules):
        expression = nw.when(condition).then(reason).otherwise(expression)
    return expression


def _quoted(name: str) -> nw.Expr:
    return nw.concat_str(nw.lit("'"), nw.col(name), nw.lit("'"))


def _typed(name: str) -> str:
    return f"__typed_{name}"


# The timestamp pattern's forms, once brought to `T` and stripped of the UTC suffix, in Spark's
# datetime pattern syntax (the fraction is optional, up to nanoseconds).
SPARK_TIMESTAMP_FORMAT = "yyyy-MM-dd'T'HH:mm:ss[.SSSSSSSSS]"


def _with_parsed_values(frame: FrameT, contract: Contract) -> FrameT:
    """Add a typed twin of every decimal and timestamp column; unparseable values become null.

    A value must match the contract's pattern and then parse (so "2026-02-30" is refused).
    Parsing is engine code (lenient parses differ): polars here, Spark in
    `_with_parsed_values_spark`; the parity tests hold the two equal.

    Raises:
        NotImplementedError: The frame is neither a polars nor a Spark frame.
    """
    if frame.implementation in SPARK_LIKE:
        return _with_parsed_values_spark(frame, contract)
    if frame.implementation is not nw.Implementation.POLARS:
        raise NotImplementedError(
            f"silver validation runs on polars and Spark frames; got {frame.implementation}"
        )
    import polars as pl

    native = frame.to_native().with_columns(
        *[
            # The pattern keeps polars from accepting "inf", "nan" or "1e5" as amounts.
            pl.when(pl.col(c).str.strip_chars().str.contains(DECIMAL_PATTERN))
            .then(pl.col(c).str.strip_chars().cast(pl.Float64, strict=False))
            .alias(_typed(c))
            for c in contract.decimals
        ],
        *[
            pl.when(pl.col(c).str.strip_chars().str.contains(TIMESTAMP_PATTERN))
            .then(
                pl.col(c)
                .str.strip_chars()
                .str.replace(" ", "T", literal=True, n=1)
                .str.replace(r"(Z|\+00:?00)?$", "Z")
                .str.to_datetime(TIMESTAMP_FORMAT, time_unit="us", strict=False)
                .dt.replace_time_zone("UTC")
            )
            .alias(_typed(c))
            for c in contract.timestamps
        ],
    )
    return nw.from_native(native)


def _with_parsed_values_spark(frame: FrameT, contract: Contract) -> FrameT:
    # Spark's `try_` functions give null where a value does not parse (Spark 4 runs in ANSI
    # mode, where plain casts fail the query instead). The session clock is UTC.
    from pyspark.sql import functions as F

    def stripped(name: str):
        return F.regexp_replace(F.col(name), r"^\s+|\s+$", "")

    typed = {}
    for c in contract.decimals:
        typed[_typed(c)] = F.when(
            stripped(c).rlike(DECIMAL_PATTERN), stripped(c).try_cast("double")
        )
    for c in contract.timestamps:
        value = F.regexp_replace(
            F.regexp_replace(stripped(c), "^(.{10}) ", "$1T"), r"(Z|\+00:?00)$", ""
        )
        typed[_typed(c)] = F.when(
            stripped(c).rlike(TIMESTAMP_PATTERN),
            F.try_to_timestamp(value, F.lit(SPARK_TIMESTAMP_FORMAT)),
        )
    return nw.from_native(frame.to_native().withColumns(typed))


def _format_rules(contract: Contract) -> list[tuple[nw.Expr, nw.Expr, str]]:
    rules: list[tuple[nw.Expr, nw.Expr, str]] = []
    for name in contract.required:
        rules.append((_blank(name), nw.lit(f"missing required field {name}"), name))
    for name in contract.decimals:
        rules.append(
            (
                ~_blank(name) & nw.col(_typed(name)).is_null(),
                nw.concat_str(_quoted(name), nw.lit(f" in {name} is not a decimal number")),
                name,
            )
        )
    for name in contract.timestamps:
        rules.append(
            (
                ~_blank(name) & nw.col(_typed(name)).is_null(),
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
    return rules


def validate(bronze: FrameT, contract: Contract, landing_day_column: str) -> tuple[FrameT, FrameT]:
    """Type bronze string records by a contract and split them into valid and rejected.

    One pass finds, for every record, the first rule it breaks: a required field missing, a
    value of the wrong type, a value outside its allowed set, a value out of range.

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
    bronze_columns = list(bronze.columns)
    eager = isinstance(bronze, nw.DataFrame)
    # Lazily, polars evaluates the sub-expressions the rules share once.
    frame = bronze.lazy() if eager else bronze
    absent = [c for c in contract.columns if c not in present]
    if absent:
        frame = frame.with_columns(*[nw.lit(None, dtype=nw.String).alias(c) for c in absent])
    frame = _with_parsed_values(frame, contract)
    rules = _format_rules(contract) + _range_rules(contract, landing_day_column)
    # Find each record's first broken rule as a small integer; reason texts are built only for
    # the few rejected records.
    checked = frame.with_columns(
        _first_reason([(c, nw.lit(i, dtype=nw.Int16)) for i, (c, _, _) in enumerate(rules)]).alias(
            RULE
        )
    )
    if eager:
        checked = checked.collect()
    parsed = set(contract.decimals + contract.timestamps)
    valid = checked.filter(nw.col(RULE).is_null()).select(
        *[
            nw.col(_typed(c)).alias(c)
            if c in parsed
            else nw.col(c).str.strip_chars().str.to_lowercase().is_in(("1", "true")).alias(c)
            if c in contract.booleans
            else nw.when(_blank(c))
            .then(nw.lit(None, dtype=nw.String))
            .otherwise(nw.col(c))
            .alias(c)
            for c in contract.columns
        ],
        *LINEAGE_COLUMNS,
        landing_day_column,
    )
    rejected = checked.filter(~nw.col(RULE).is_null()).with_columns(
        _first_reason(
            [(nw.col(RULE) == i, reason) for i, (_, reason, _) in enumerate(rules)]
        ).alias(REASON),
        _first_reason(
            [(nw.col(RULE) == i, nw.lit(name)) for i, (_, _, name) in enumerate(rules)]
        ).alias("column"),
    )
    return valid, rejected.select(*bronze_columns, REASON, "column")


def _range_rules(contract: Contract, landing_day: str) -> list[tuple[nw.Expr, nw.Expr, str]]:
    rules: list[tuple[nw.Expr, nw.Expr, str]] = []
    for name in contract.decimals:
        value = nw.col(_typed(name))
        rules.append(
            (
                (value <= 0) | (value > MAX_AMOUNT),
                nw.concat_str(
                    _quoted(name), nw.lit(f" in {name} is outside (0, {MAX_AMOUNT:.0f}]")
                ),
                name,
            )
        )
    for name in contract.timestamps:
        value = nw.col(_typed(name))
        start = nw.col(landing_day).cast(nw.Datetime("us", "UTC"))
        # Bounds as timestamps (offsets run on every engine; durations do not on Spark).
        too_early = value < start.dt.offset_by(f"-{MAX_LATENESS_DAYS}d")
        too_late = value > start.dt.offset_by(f"{24 + MAX_SKEW_HOURS}h")
        rules.append(
            (
                too_early | too_late,
                nw.concat_str(
                    _quoted(name),
                    nw.lit(
                        f" in {name} is not within {MAX_LATENESS_DAYS} days before its landing "
                        f"day or {MAX_SKEW_HOURS} h after it"
                    ),
                ),
                name,
            )
        )
    return rules


def deduplicate(
    valid: FrameT, key: str, known_keys: FrameT, *, portable: bool = False
) -> tuple[FrameT, int, int]:
    """Keep each event once: the first line of a batch, and only if no other partition has it.

    Args:
        valid: Validated records of one landing day (an eager frame).
        key: The event key column.
        known_keys: Frame with the `key` column of events already in the table's other
            partitions.
        portable: Use the engine-neutral narwhals path even on polars (for parity tests).

    Returns:
        `(unique, duplicates_in_batch, duplicates_of_other_partitions)`, `unique` in file and
        line order.
    """
    if valid.implementation is nw.Implementation.POLARS and not portable:
        import polars as pl

        first = _first_copies_polars(valid.to_native(), key)
        known = known_keys.to_native().get_column(key)
        unique = first.filter(~pl.col(key).is_in(known.implode()))
        in_batch, of_others = len(valid) - first.height, first.height - unique.height
        return nw.from_native(unique), in_batch, of_others
    if valid.implementation in SPARK_LIKE:
        return _deduplicate_spark(valid, key, known_keys)
    first = valid.filter(nw.col(key).is_first_distinct().over(order_by=[SOURCE_FILE, LINE_NUMBER]))
    unique = first.join(known_keys.select(key).unique(), on=key, how="anti")
    in_batch = len(valid) - len(first)
    of_others = len(first) - len(unique)
    return unique.sort(SOURCE_FILE, LINE_NUMBER), in_batch, of_others


def _deduplicate_spark(valid: FrameT, key: str, known_keys: FrameT) -> tuple[FrameT, int, int]:
    # One pass marks each record: first copy of its key in the batch (by file and line), and
    # whether another partition holds the key; one aggregation counts both kinds of duplicate.
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy(key).orderBy(SOURCE_FILE, LINE_NUMBER)
    known = known_keys.to_native().select(key).distinct().withColumn("__known", F.lit(True))
    marked = (
        valid.to_native()
        .withColumn("__first", F.row_number().over(order) == 1)
        .join(known, on=key, how="left")
        .withColumn("__known", F.coalesce(F.col("__known"), F.lit(False)))
    )
    counts = marked.select(
        F.count(F.lit(1)).alias("rows"),
        F.count_if("__first").alias("first"),
        F.count_if(F.col("__first") & ~F.col("__known")).alias("unique"),
    ).collect()[0]
    unique = marked.filter(F.col("__first") & ~F.col("__known")).select(*valid.columns)
    in_batch = counts["rows"] - counts["first"]
    of_others = counts["first"] - counts["unique"]
    return nw.from_native(unique), in_batch, of_others


def _first_copies_polars(valid, key: str):
    # Records arrive in file and line order; sort only when they do not, then keep the first
    # row per key with a hash-based pass (the portable window route sorts every time).
    import polars as pl

    file, line = pl.col(SOURCE_FILE), pl.col(LINE_NUMBER)
    in_order = valid.select(
        ((file > file.shift()) | ((file == file.shift()) & (line > line.shift())))
        .fill_null(True)
        .all()
    ).item()
    ordered = valid if in_order else valid.sort(SOURCE_FILE, LINE_NUMBER)
    return ordered.unique(subset=[key], keep="first", maintain_order=True)


def with_event_date(records: FrameT, time_column: str, date_column: str) -> FrameT:
    """Add the UTC calendar day of a timestamp column (for partition pruning and gold)."""
    return records.with_columns(nw.col(time_column).dt.date().alias(date_column))
