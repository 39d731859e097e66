"""Silver: type and validate bronze records, reject the invalid with a reason, drop re-sends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import narwhals as nw
from narwhals.typing import FrameT

if TYPE_CHECKING:
    import polars as pl

from mlops_assets.transforms import SPARK_LIKE
from mlops_assets.transforms.bronze import INGESTED_AT, LINE_NUMBER, REASON, SOURCE_FILE

# ISO-8601 timestamps as sources send them: date, time, optional fraction, optional UTC offset
# (`Z`, `+02:00`, `-0530`, `+05`). A time without an offset is read in the source's declared
# time zone, or refused.
TIMESTAMP_PATTERN = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[T ]([01]\d|2[0-3]):[0-5]\d:[0-5]\d"
    r"(\.\d{1,9})?(Z|[+-](0\d|1[0-8])(:?[0-5]\d)?)?$"
)
# The offset of a timestamp that matches the pattern: sign, hours, optional minutes.
OFFSET_PATTERN = r"([+-])(\d\d):?(\d\d)?$"
# RFC 3339 (`T` or space, `Z` or an offset with minutes): the fast parse of most timestamps.
RFC3339_FORMAT = "%+"
# A timestamp with `T` and a numeric offset (`+05`, `-0530` or `+02:00`), fraction optional.
OFFSET_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%#z"
# A matching timestamp brought to its local date and time, the fraction cut to microseconds
# (digits below the microsecond are truncated, never rounded).
LOCAL_PATTERN = r"^(.{10})[T ](.{8})(\.\d{1,6})?\d*(Z|[+-].*)?$"
DECIMAL_PATTERN = r"^[+-]?(\d+(\.\d*)?|\.\d+)$"
BOOLEAN_VALUES = ("0", "1", "true", "false")
# A text of spaces only: missing (other white space is a control character).
BLANK = r"^ +$"
# Control characters (C0 and DEL) that no text field may hold.
CONTROL_PATTERN = r"[\x00-\x1f\x7f]"

MAX_AMOUNT = 1_000_000.0
# Events older than this many days before their landing day are refused as implausible.
MAX_LATENESS_DAYS = 30
# Clock skew allowed for events stamped after their landing day.
MAX_SKEW_HOURS = 2

LINEAGE_COLUMNS = (SOURCE_FILE, LINE_NUMBER, INGESTED_AT)
# Bronze's JSON object of the source columns outside the contract (absent from older bronze).
RESCUED_DATA = "_rescued_data"
RULE = "__rule"


@dataclass(frozen=True)
class TextRule:
    """The form a text field must have.

    Attributes:
        max_length: Most characters the value may have.
        pattern: Regular expression the whole value must match (anchored).
        description: The pattern in words, for reasons (`3 upper-case letters`).
    """

    max_length: int
    pattern: str
    description: str

    @property
    def bounded(self) -> str:
        """The pattern with the length bound, so that one match checks both."""
        return rf"^(?:{self.pattern})$"


IDENTIFIER = TextRule(64, r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", "letters, digits and _.:-")
TOKEN = TextRule(64, r"[a-z][a-z0-9_]{0,63}", "lower-case letters, digits and _")
CURRENCY = TextRule(3, r"[A-Z]{3}", "3 upper-case letters (ISO 4217)")
COUNTRY = TextRule(2, r"[A-Z]{2}", "2 upper-case letters (ISO 3166-1 alpha-2)")


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
        texts: Column to the form its text must have (length, characters, pattern).
        source: The landing source the table's records come from (its declared time zone
            reads times without an offset).
        version: Column whose values tell successive reports of one key apart (labels:
            `reported_at`); the table is unique by `(key, version)`. None: unique by `key`.
        state: Columns a later report must change to be kept: a report with the same state
            as the key's latest earlier report is a re-send.
    """

    key: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    decimals: tuple[str, ...] = ()
    timestamps: tuple[str, ...] = ()
    booleans: tuple[str, ...] = ()
    allowed: tuple[tuple[str, tuple[str, ...]], ...] = ()
    texts: tuple[tuple[str, TextRule], ...] = ()
    source: str = ""
    version: str | None = None
    state: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """Every contract column, required first."""
        return self.required + self.optional

    @property
    def unique_key(self) -> tuple[str, ...]:
        """The columns no two rows of the table share."""
        return (self.key,) if self.version is None else (self.key, self.version)


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
    texts=(
        ("transaction_id", IDENTIFIER),
        ("card_id", IDENTIFIER),
        ("merchant_id", IDENTIFIER),
        ("merchant_category", TOKEN),
        ("currency", CURRENCY),
        ("country", COUNTRY),
        ("card_country", COUNTRY),
        ("entry_mode", TOKEN),
        ("device_type", TOKEN),
        ("device_id", IDENTIFIER),
        ("terminal_id", IDENTIFIER),
    ),
    source="transactions",
)

LABELS = Contract(
    key="transaction_id",
    required=("transaction_id", "reported_at", "is_fraud"),
    optional=("card_id", "chargeback_reason"),
    timestamps=("reported_at",),
    booleans=("is_fraud",),
    texts=(
        ("transaction_id", IDENTIFIER),
        ("card_id", IDENTIFIER),
        ("chargeback_reason", TOKEN),
    ),
    source="labels",
    version="reported_at",
    state=("is_fraud",),
)


def _blank(name: str) -> nw.Expr:
    return nw.col(name).is_null() | (nw.col(name).str.strip_chars() == "")


def _empty(name: str) -> nw.Expr:
    return nw.col(name).is_null() | (nw.col(name).str.len_chars() == 0)


def _checked_by_form(name: str, contract: Contract) -> bool:
    # A column whose value must take a form (text pattern, number, timestamp, allowed value)
    # refuses white space by that form: only emptiness is missing, and the check skips
    # stripping every value.
    return name in (
        *dict(contract.texts),
        *contract.decimals,
        *contract.timestamps,
        *dict(contract.allowed),
    )


def _missing(name: str, contract: Contract) -> nw.Expr:
    return _empty(name) if _checked_by_form(name, contract) else _blank(name)


def _missing_valid(name: str, contract: Contract) -> nw.Expr:
    # In a valid record, a text that passed its pattern starts with no space unless it is
    # blank: the first character tells.
    if name in dict(contract.texts):
        return _empty(name) | nw.col(name).str.starts_with(" ")
    return _blank(name)


def _first_reason(rules: Sequence[tuple[nw.Expr, nw.Expr]]) -> nw.Expr:
    # The value of the first rule whose condition holds, null when none does.
    expression: nw.Expr = nw.lit(None)
    for condition, reason in reversed(rules):
        expression = nw.when(condition).then(reason).otherwise(expression)
    return expression


# Longest part of a value a reason quotes.
QUOTED_CHARS = 100


def _quoted(name: str) -> nw.Expr:
    return nw.concat_str(nw.lit("'"), nw.col(name).str.slice(0, QUOTED_CHARS), nw.lit("'"))


def _typed(name: str) -> str:
    return f"__typed_{name}"


def _local(name: str) -> str:
    return f"__local_{name}"


def _offset(name: str) -> str:
    return f"__has_offset_{name}"


# A local date and time with an optional fraction (up to microseconds), in Spark's datetime
# pattern syntax.
SPARK_LOCAL_FORMAT = "yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]"


def _with_parsed_values(frame: FrameT, contract: Contract, timezone: str | None) -> FrameT:
    """Add a typed twin of every decimal and timestamp column; unparseable values become null.

    A value must match the contract's pattern and then parse (so "2026-02-30" is refused). A
    timestamp also gets its local reading (`__local_`, null when it does not parse) and whether
    it carries an offset (`__has_offset_`): its typed twin is the UTC instant, null when it has
    no offset and no zone is declared, or when its local time does not exist in the zone.
    Parsing is engine code (lenient parses differ): polars here, Spark in
    `_with_parsed_values_spark`; the parity tests hold the two equal.

    Raises:
        NotImplementedError: The frame is neither a polars nor a Spark frame.
    """
    if frame.implementation in SPARK_LIKE:
        return _with_parsed_values_spark(frame, contract, timezone)
    if frame.implementation is not nw.Implementation.POLARS:
        raise NotImplementedError(
            f"silver validation runs on polars and Spark frames; got {frame.implementation}"
        )
    import polars as pl

    columns = []
    for c in contract.decimals:
        # The pattern keeps polars from accepting "inf", "nan" or "1e5" as amounts.
        value = pl.col(c).str.strip_chars()
        columns.append(
            pl.when(value.str.contains(DECIMAL_PATTERN))
            .then(value.cast(pl.Float64, strict=False))
            .alias(_typed(c))
        )
    for c in contract.timestamps:
        value = pl.col(c).str.strip_chars()
        # The fast parse takes RFC 3339 forms (`Z`, `+02:00`, `-0530`, `T` or space); it
        # truncates below the microsecond. Every value it reads carries an offset.
        matches = value.str.contains(TIMESTAMP_PATTERN)
        columns += [
            pl.when(matches)
            .then(value.str.to_datetime(RFC3339_FORMAT, time_unit="us", strict=False))
            .alias(_local(c)),
            matches.alias(f"__matches_{c}"),
        ]
    native = frame.to_native().with_columns(columns)
    lazy = isinstance(native, pl.LazyFrame)
    if lazy:
        native = native.collect()
    for c in contract.timestamps:
        value = pl.col(c).str.strip_chars()
        matches = pl.col(f"__matches_{c}")
        fast = pl.col(_local(c))
        if not native.select((fast.is_null() & matches).any()).item():
            native = native.with_columns(fast.is_not_null().alias(_offset(c)))
            continue
        # Some values need the slower parse (an hour-only offset, or none): `Z` becomes
        # `+00:00`, and a time without an offset is read at +00:00 (its local reading), to
        # be placed in its zone below. `%#z` takes `+05`, `-0530` and `+02:00`.
        has_offset = value.str.ends_with("Z") | value.str.contains(OFFSET_PATTERN)
        text = value.str.replace(" ", "T", literal=True, n=1).str.replace(
            "Z", "+00:00", literal=True, n=1
        )
        text = pl.when(has_offset).then(text).otherwise(pl.concat_str(text, pl.lit("+00:00")))
        native = native.with_columns(
            pl.when(fast.is_null() & matches)
            .then(text.str.to_datetime(OFFSET_FORMAT, time_unit="us", strict=False))
            .otherwise(fast)
            .alias(_local(c)),
            (fast.is_not_null() | has_offset).alias(_offset(c)),
        )
    if timezone is not None:
        # An ambiguous local time (clocks set back) takes the earlier instant; one that does
        # not exist (clocks set forward) becomes null and is refused.
        native = native.with_columns(
            pl.when(pl.col(_offset(c)))
            .then(pl.col(_local(c)))
            .otherwise(
                pl.col(_local(c))
                .dt.replace_time_zone(None)
                .dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
                .dt.convert_time_zone("UTC")
            )
            .alias(_typed(c))
            for c in contract.timestamps
        )
    else:
        native = native.with_columns(
            pl.when(pl.col(_offset(c))).then(pl.col(_local(c))).alias(_typed(c))
            for c in contract.timestamps
        )
    native = native.drop([f"__matches_{c}" for c in contract.timestamps])
    return nw.from_native(native.lazy() if lazy else native)


def _with_parsed_values_spark(frame: FrameT, contract: Contract, timezone: str | None) -> FrameT:
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
    native = frame.to_native()
    for c in contract.timestamps:
        value = stripped(c)
        local = F.when(
            value.rlike(TIMESTAMP_PATTERN),
            F.try_to_timestamp(
                F.regexp_replace(value, LOCAL_PATTERN, "$1T$2$3"), F.lit(SPARK_LOCAL_FORMAT)
            ),
        )
        sign = F.regexp_extract(value, OFFSET_PATTERN, 1)
        hours = F.regexp_extract(value, OFFSET_PATTERN, 2).try_cast("bigint")
        minutes_part = F.coalesce(
            F.regexp_extract(value, OFFSET_PATTERN, 3).try_cast("bigint"), F.lit(0)
        )
        minutes = (hours * 60 + minutes_part) * F.when(sign == "-", -1).otherwise(1)
        typed[_local(c)] = local
        typed[_offset(c)] = value.endswith("Z") | (sign != "")
        typed[f"__m_{c}"] = F.coalesce(minutes, F.lit(0))
    native = native.withColumns(typed)
    instants = {}
    for c in contract.timestamps:
        local = F.col(_local(c))
        with_offset = F.timestamp_micros(
            F.unix_micros(local) - F.col(f"__m_{c}") * F.lit(60_000_000)
        )
        if timezone is None:
            zoned = F.lit(None).cast("timestamp")
        else:
            # Java's zone rules take the earlier offset of an ambiguous time, and move a time
            # that does not exist forward: reading the instant back in the zone finds those.
            instant = F.to_utc_timestamp(local, timezone)
            zoned = F.when(F.from_utc_timestamp(instant, timezone) == local, instant)
        instants[_typed(c)] = F.when(F.col(_offset(c)), with_offset).otherwise(zoned)
    native = native.withColumns(instants).drop(*[f"__m_{c}" for c in contract.timestamps])
    return nw.from_native(native)


def _timestamp_reason(name: str, contract: Contract, timezone: str | None) -> nw.Expr:
    # Why a non-blank timestamp has no instant: it does not parse, it has no offset and no zone
    # is declared, or its local time does not exist in the declared zone.
    source = contract.source or "of this table"
    if timezone is None:
        no_instant = nw.lit(
            f" in {name} has no UTC offset and source {source} declares no time zone "
            "(MLOPS_SOURCE_TIMEZONES)"
        )
    else:
        no_instant = nw.lit(
            f" in {name} does not exist in time zone {timezone} (skipped by a clock change)"
        )
    return nw.concat_str(
        _quoted(name),
        nw.when(nw.col(_local(name)).is_null())
        .then(nw.lit(f" in {name} is not an ISO-8601 timestamp"))
        .otherwise(no_instant),
    )


def _text_reason(name: str, rule: TextRule) -> nw.Expr:
    # Why a non-blank text breaks its rule: too long, a control character, or another form.
    value = nw.col(name)
    return nw.concat_str(
        _quoted(name),
        nw.when(value.str.contains(BLANK))
        .then(nw.lit(f" in {name} is blank"))
        .when(value.str.len_chars() > rule.max_length)
        .then(nw.lit(f" in {name} is longer than {rule.max_length} characters"))
        .when(value.str.contains(CONTROL_PATTERN))
        .then(nw.lit(f" in {name} contains a control character"))
        .otherwise(nw.lit(f" in {name} is not {rule.description} (pattern {rule.bounded})")),
    )


def _format_rules(contract: Contract, timezone: str | None) -> list[tuple[nw.Expr, nw.Expr, str]]:
    rules: list[tuple[nw.Expr, nw.Expr, str]] = []
    for name in contract.required:
        rules.append((_missing(name, contract), nw.lit(f"missing required field {name}"), name))
    for name in contract.decimals:
        rules.append(
            (
                ~_empty(name) & nw.col(_typed(name)).is_null(),
                nw.concat_str(_quoted(name), nw.lit(f" in {name} is not a decimal number")),
                name,
            )
        )
    for name in contract.timestamps:
        rules.append(
            (
                ~_empty(name) & nw.col(_typed(name)).is_null(),
                _timestamp_reason(name, contract, timezone),
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
                ~_empty(name) & ~nw.col(name).is_in(values),
                nw.concat_str(
                    _quoted(name), nw.lit(f" in {name} is not one of {', '.join(values)}")
                ),
                name,
            )
        )
    for name, rule in contract.texts:
        # One anchored match checks length, characters and form (an optional field may also
        # be blank); the reason, built for rejected records only, tells which.
        pattern = rule.bounded if name in contract.required else rf"{rule.bounded}|{BLANK}"
        rules.append(
            (
                ~_empty(name) & ~nw.col(name).str.contains(pattern),
                _text_reason(name, rule),
                name,
            )
        )
    return rules


def validate(
    bronze: FrameT, contract: Contract, landing_day_column: str, *, timezone: str | None = None
) -> tuple[FrameT, FrameT]:
    """Type bronze string records by a contract and split them into valid and rejected.

    One pass finds, for every record, the first rule it breaks: a required field missing, a
    value of the wrong type, a time without an offset in a source without a declared zone, a
    text too long, holding a control character or of the wrong form, a value outside its
    allowed set, a value out of range.

    Args:
        bronze: Bronze records: string columns as landed, lineage columns and the landing day
            (and bronze's `_rescued_data`, kept out of the typed records).
        contract: The table's contract.
        landing_day_column: Date column holding the landing day (bounds event times).
        timezone: IANA zone the source's times without an offset are in
            (`Settings.source_timezones`); None refuses such times.

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
    frame = _with_parsed_values(frame, contract, timezone)
    rules = _format_rules(contract, timezone) + _range_rules(contract, landing_day_column)
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
            # A valid record's required text is present as it came.
            else nw.col(c)
            if c in contract.required
            else nw.when(_missing_valid(c, contract))
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


@dataclass(frozen=True)
class Resolved:
    """What comparing a batch's records with each other and with the published table did.

    Attributes:
        unique: The records to publish, in file and line order on polars.
        conflicts: Records quarantined as conflicts (a polars frame of `_source_file`,
            `_line_number`, `reason`, `column`).
        in_batch: Re-sends dropped because an identical record (or, for versioned
            contracts, the key's latest earlier report with the same state) is in the batch.
        of_others: Re-sends dropped because it is in another partition of the table.
        conflicting_keys: Keys (unique keys) whose records went to quarantine as conflicts.
    """

    unique: FrameT
    conflicts: pl.DataFrame
    in_batch: int
    of_others: int
    conflicting_keys: int


ROW = "__row"
PUBLISHED_PARTITION = "landing_date"


def published_columns(contract: Contract) -> tuple[str, ...]:
    """Columns of the published rows `resolve_versions` compares a batch with."""
    return (*contract.columns, SOURCE_FILE, LINE_NUMBER, PUBLISHED_PARTITION)


def resolve_versions(valid: FrameT, contract: Contract, published: FrameT) -> Resolved:
    """Tell re-sends from conflicts, within a batch and against the published table.

    A record identical to an earlier one of its unique key (contract columns, typed) is a
    re-send: the first copy is kept, the others dropped and counted. Records of one unique key
    with different payloads are a conflict: every version in the batch goes to quarantine,
    with a reason naming the key, the other version's file and line and the differing fields.
    A batch record that differs from the published record of its key in another partition is
    quarantined too (the published one stays), its reason naming that partition. For a
    versioned contract (labels), a report whose state equals the key's latest earlier report
    (batch or published) is a re-send, and a change of state (a reversal) is kept.

    Only the records whose key repeats (in the batch or the published rows) are compared, on
    the driver with polars; the engine applies the outcome to the batch.

    Args:
        valid: Validated records of one landing day (eager polars, or Spark).
        contract: The table's contract.
        published: Rows of the table's other partitions whose key is in the batch, with
            `published_columns(contract)`.

    Returns:
        The records to publish, the conflicts and the counts.

    Raises:
        NotImplementedError: The frame is neither a polars nor a Spark frame.
    """
    import polars as pl

    key = contract.key
    if valid.implementation in SPARK_LIKE:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        native = valid.to_native()
        known = published.to_native().select(key).distinct().withColumn("__known", F.lit(True))
        marked = native.withColumn(
            "__copies", F.count(F.lit(1)).over(Window.partitionBy(key))
        ).join(known, on=key, how="left")
        suspects_native = marked.filter(
            (F.col("__copies") > 1) | F.col("__known").isNotNull()
        ).select(*valid.columns)
        suspects = pl.from_arrow(suspects_native.toArrow())
        published_pl = pl.from_arrow(
            published.to_native().select(*published_columns(contract)).toArrow()
        )
    elif valid.implementation is nw.Implementation.POLARS:
        native = valid.to_native()
        published_pl = published.to_native()
        if isinstance(published_pl, pl.LazyFrame):
            published_pl = published_pl.collect()
        if not _in_file_order(native):
            native = native.sort(SOURCE_FILE, LINE_NUMBER)
        # Row positions let the outcome be applied by position, without a join.
        suspects = native.with_row_index(ROW).filter(
            pl.col(key).is_duplicated() | pl.col(key).is_in(published_pl.get_column(key).implode())
        )
    else:
        raise NotImplementedError(
            f"silver deduplication runs on polars and Spark frames; got {valid.implementation}"
        )
    assert isinstance(suspects, pl.DataFrame) and isinstance(published_pl, pl.DataFrame)
    removed, conflicts, in_batch, of_others, conflicting = _decide(
        suspects.drop(ROW, strict=False), published_pl.select(published_columns(contract)), contract
    )
    lines = [SOURCE_FILE, LINE_NUMBER]
    if valid.implementation in SPARK_LIKE:
        unique_native = native
        if removed.height:
            removed_spark = native.sparkSession.createDataFrame(removed.to_arrow())
            unique_native = native.join(
                F.broadcast(removed_spark), on=lines, how="left_anti"
            ).select(*native.columns)
        unique: FrameT = nw.from_native(unique_native)
    else:
        if removed.height:
            rows = suspects.join(removed, on=lines, how="semi").get_column(ROW)
            native = native.filter(~pl.int_range(pl.len(), dtype=pl.UInt32).is_in(rows.implode()))
        unique = nw.from_native(native)
    return Resolved(unique, conflicts, in_batch, of_others, conflicting)


def _in_file_order(frame) -> bool:
    # Records arrive in file and line order; sort only when they do not.
    import polars as pl

    file, line = pl.col(SOURCE_FILE), pl.col(LINE_NUMBER)
    return bool(
        frame.select(
            ((file > file.shift()) | ((file == file.shift()) & (line > line.shift())))
            .fill_null(True)
            .all()
        ).item()
    )


def _describe_key(contract: Contract, row: dict) -> str:
    text = f"{contract.key} '{row[contract.key]}'"
    if contract.version is not None:
        version = row[contract.version]
        shown = version.isoformat() if hasattr(version, "isoformat") else version
        text += f" {contract.version} {shown}"
    return text


def _differing(contract: Contract, a: dict, b: dict) -> list[str]:
    return [c for c in contract.columns if a[c] != b[c]]


def _decide(suspects, published, contract: Contract):
    """The outcome for the records whose key repeats: removals, conflicts and counts.

    Returns:
        `(removed, conflicts, in_batch, of_others, conflicting_keys)`: `removed` lists the
        `_source_file`/`_line_number` of every record leaving the batch (re-sends and
        conflicts), `conflicts` the quarantined ones with `reason` and `column`.
    """
    import polars as pl

    lines = [SOURCE_FILE, LINE_NUMBER]
    unique_key = list(contract.unique_key)
    payload = list(contract.columns)
    batch_rows = suspects.sort(lines).to_dicts()
    published_rows = published.sort(PUBLISHED_PARTITION, *lines).to_dicts()
    by_key: dict[tuple, list[dict]] = {}
    for row in batch_rows:
        by_key.setdefault(tuple(row[c] for c in unique_key), []).append(row)
    published_by_key: dict[tuple, list[dict]] = {}
    for row in published_rows:
        published_by_key.setdefault(tuple(row[c] for c in unique_key), []).append(row)

    removed: list[tuple[str, int]] = []
    conflicts: list[tuple[str, int, str, str]] = []
    in_batch = of_others = conflicting = 0
    kept: list[dict] = []
    for unique, rows in by_key.items():
        versions = {tuple(r[c] for c in payload) for r in rows}
        if len(versions) > 1:
            conflicting += 1
            for row in rows:
                other = next(o for o in rows if _differing(contract, row, o))
                fields = _differing(contract, row, other)
                conflicts.append(
                    (
                        row[SOURCE_FILE],
                        row[LINE_NUMBER],
                        f"conflicting versions of {_describe_key(contract, row)}: "
                        f"{other[SOURCE_FILE]}:{other[LINE_NUMBER]} differs in "
                        f"{', '.join(fields)}",
                        fields[0],
                    )
                )
            continue
        first, copies = rows[0], rows[1:]
        others = published_by_key.get(unique, [])
        if not others or any(not _differing(contract, first, o) for o in others):
            in_batch += len(copies)
            removed += [(r[SOURCE_FILE], r[LINE_NUMBER]) for r in copies]
            if others:
                of_others += 1
                removed.append((first[SOURCE_FILE], first[LINE_NUMBER]))
            else:
                kept.append(first)
            continue
        # Every copy of the record is quarantined, the published record stays.
        other = others[0]
        fields = _differing(contract, first, other)
        conflicting += 1
        for row in rows:
            conflicts.append(
                (
                    row[SOURCE_FILE],
                    row[LINE_NUMBER],
                    f"{_describe_key(contract, row)} conflicts with the published record of "
                    f"partition {PUBLISHED_PARTITION}={other[PUBLISHED_PARTITION]} "
                    f"({other[SOURCE_FILE]}:{other[LINE_NUMBER]}), which stays: it differs in "
                    f"{', '.join(fields)}",
                    fields[0],
                )
            )
    if contract.version is not None and contract.state:
        drops = _resent_reports(contract, kept, published_rows)
        for row, earlier_published in drops:
            removed.append((row[SOURCE_FILE], row[LINE_NUMBER]))
            if earlier_published:
                of_others += 1
            else:
                in_batch += 1
    removed += [(f, n) for f, n, _, _ in conflicts]
    schema = {SOURCE_FILE: pl.String, LINE_NUMBER: pl.Int64}
    return (
        pl.DataFrame(removed, schema=schema, orient="row").unique(maintain_order=True),
        pl.DataFrame(
            conflicts, schema={**schema, REASON: pl.String, "column": pl.String}, orient="row"
        ),
        in_batch,
        of_others,
        conflicting,
    )


def _resent_reports(
    contract: Contract, kept: list[dict], published_rows: list[dict]
) -> list[tuple[dict, bool]]:
    """Batch reports whose state equals their key's latest earlier report (re-sends).

    Returns:
        Each re-sent report with whether the earlier report is published (another partition).
    """
    version = contract.version
    assert version is not None
    timelines: dict[object, list[tuple[object, int, dict]]] = {}
    for row in published_rows:
        timelines.setdefault(row[contract.key], []).append((row[version], 0, row))
    for row in kept:
        timelines.setdefault(row[contract.key], []).append((row[version], 1, row))
    drops = []
    for reports in timelines.values():
        reports.sort(key=lambda r: (r[0], r[1], r[2][SOURCE_FILE], r[2][LINE_NUMBER]))
        previous: tuple[int, dict] | None = None
        for _, origin, row in reports:
            state = tuple(row[c] for c in contract.state)
            if (
                previous is not None
                and origin == 1
                and tuple(previous[1][c] for c in contract.state) == state
            ):
                # The earliest report of the state stays the latest earlier one.
                drops.append((row, previous[0] == 0))
                continue
            previous = (origin, row)
    return drops


def with_event_date(records: FrameT, time_column: str, date_column: str) -> FrameT:
    """Add the UTC calendar day of a timestamp column (for partition pruning and gold)."""
    return records.with_columns(nw.col(time_column).dt.date().alias(date_column))


def rescued_names(bronze: FrameT) -> list[str]:
    """Names of the source columns bronze rescued (`_rescued_data`'s keys), sorted.

    Args:
        bronze: Bronze records; without `_rescued_data` (older bronze) there are none.

    Returns:
        Every key of the partition's rescued JSON objects, once.

    Raises:
        NotImplementedError: The frame is neither a polars nor a Spark frame.
    """
    if RESCUED_DATA not in bronze.columns:
        return []
    if bronze.implementation in SPARK_LIKE:
        from pyspark.sql import functions as F

        keys = (
            bronze.to_native()
            .select(F.explode(F.map_keys(F.from_json(RESCUED_DATA, "map<string,string>"))))
            .distinct()
            .collect()
        )
        return sorted(row[0] for row in keys)
    if bronze.implementation is not nw.Implementation.POLARS:
        raise NotImplementedError(
            f"silver validation runs on polars and Spark frames; got {bronze.implementation}"
        )
    import polars as pl

    native = bronze.to_native()
    if isinstance(native, pl.LazyFrame):
        native = native.select(RESCUED_DATA).collect()
    texts = native.get_column(RESCUED_DATA).drop_nulls().unique()
    if texts.is_empty():
        return []
    decoded = texts.str.json_decode(infer_schema_length=None)
    return sorted(field.name for field in decoded.dtype.fields)  # type: ignore[attr-defined]
