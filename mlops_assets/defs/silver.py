"""Silver assets: typed, validated, deduplicated transactions and labels, with blocking checks."""

import datetime
from dataclasses import dataclass
from typing import Any

import dagster as dg
import narwhals as nw
import polars as pl

from mlops_assets.defs.metadata import table_metadata
from mlops_assets.defs.partitions import daily_partitions, partition_day
from mlops_assets.defs.resources import LakehouseResource, engine_kinds
from mlops_assets.lakehouse import handoff
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import WriteResult
from mlops_assets.lakehouse.store import DeltaRsStore, Frame, TableStore
from mlops_assets.settings import Settings
from mlops_assets.transforms.bronze import INGESTED_AT, LINE_NUMBER, REASON, SOURCE_FILE
from mlops_assets.transforms.quarantine import to_quarantine
from mlops_assets.transforms.silver import (
    LABELS,
    MAX_AMOUNT,
    MAX_LATENESS_DAYS,
    MAX_SKEW_HOURS,
    RESCUED_DATA,
    TRANSACTIONS,
    Contract,
    published_columns,
    rescued_names,
    resolve_versions,
    validate,
    with_event_date,
)

OWNERS = ["team:data-engineering"]
CODE_VERSION = "silver-2"
ENGINE_GROUP = "silver"
# A day's feed is fresh when its latest event is this close to the end of the landing day.
FRESHNESS_HOURS = 6
# Above this share of rejected records, the source is probably broken: warn.
MAX_REJECT_SHARE = 0.02


@dataclass(frozen=True)
class SilverTable:
    """How one silver table is built from its bronze table."""

    source: str
    contract: Contract
    time_column: str
    date_column: str
    description: str
    prune_by_date: bool
    references: TableRef | None = None


SILVER_TABLES = (
    SilverTable(
        source="transactions",
        contract=TRANSACTIONS,
        time_column="event_time",
        date_column="event_date",
        prune_by_date=True,
        description=(
            "Card transactions, typed and validated against the transactions contract, one row "
            "per transaction id: an event re-sent identical on the same or another day lands "
            "once (the first copy seen); records of one id with different payloads are "
            "conflicts. Invalid and conflicting records go to quarantine/silver_transactions "
            "with the reason and column. Times are UTC instants (offsets converted, times "
            "without one read in the source's declared zone). Partitioned by landing day; "
            "`event_date` is the UTC event day."
        ),
    ),
    SilverTable(
        source="labels",
        contract=LABELS,
        time_column="reported_at",
        date_column="reported_date",
        prune_by_date=False,
        references=TableRef("silver", "transactions"),
        description=(
            "Chargeback label reports, typed and validated, one row per (transaction_id, "
            "reported_at): `is_fraud` with the time it became known. A report with the same "
            "`is_fraud` as the transaction's latest earlier report is a re-send (dropped, the "
            "earliest report kept); a reversal is a new row, so the label of a transaction at "
            "time t is its latest report with reported_at <= t. Two reports of one "
            "transaction at one time that differ are conflicts (quarantined). Partitioned by "
            "landing day."
        ),
    ),
)


def published_versions(
    store: TableStore, table: TableRef, spec: SilverTable, day: datetime.date, batch: Frame
) -> Frame:
    """Rows of the table's other partitions with a key of the batch (to compare with it).

    A re-sent transaction keeps its event time, so only rows of the batch's event days can
    repeat it, and the filter lets Delta skip the other files by their statistics. A label can
    be reported again at another time, so labels are checked against the whole table (it is
    small: one row per report). The keys are found first, reading the key column only; the
    full rows are read for the (few) keys found.
    """
    contract = spec.contract
    key = contract.key
    columns = published_columns(contract)
    if not store.exists(table):
        return store.empty({c: pl.String for c in columns}).select(columns)
    others = store.scan(table).filter(nw.col("landing_date") != day)
    if spec.prune_by_date:
        days = store.to_polars(batch.select(spec.date_column).unique())
        others = others.filter(nw.col(spec.date_column).is_in(days.to_series().to_list()))
    batch_keys = store.lazy(batch.select(key).unique())
    found = store.to_polars(others.select(key).join(batch_keys, on=key, how="inner").unique())
    return store.materialize(
        others.filter(nw.col(key).is_in(found.get_column(key).to_list())).select(columns)
    )


def read_bronze(store: TableStore, table: TableRef, partition: dict[str, datetime.date]) -> Frame:
    """The bronze partition of a silver day, without reading it again when bronze just wrote it.

    When bronze ran in this process and the table is still at its write's version, the rows it
    wrote are taken (`lakehouse.handoff`); otherwise the partition is read from the table.
    """
    if isinstance(store, DeltaRsStore):
        kept = handoff.take(store.uri(table), store.version(table), partition)
        if kept is not None:
            return store.from_polars(kept)
    return store.read_partition(table, partition)


@dataclass(frozen=True)
class SilverDay:
    """What building one silver partition did."""

    written: WriteResult
    quarantined: WriteResult
    bronze_records: int
    in_batch: int
    of_others: int
    conflicts: int
    conflicting_keys: int
    unknown_references: int | None
    event_days: list[str]
    raw_fields: list[str]
    unmapped: list[str]
    figures: dict[str, Any]
    reasons: list[dict]


def build_day(
    store: TableStore,
    spec: SilverTable,
    day: datetime.date,
    now: datetime.datetime,
    timezone: str | None = None,
) -> SilverDay:
    """Validate, resolve re-sends and conflicts, write one day's silver partition and quarantine.

    Args:
        store: The silver group's table store.
        spec: The silver table.
        day: The landing day (partition).
        now: The quarantine time.
        timezone: The source's declared time zone (`Settings.source_timezones`), if any.
    """
    contract = spec.contract
    table = TableRef("silver", spec.source)
    quarantine_table = TableRef("quarantine", f"silver_{spec.source}")
    partition = {"landing_date": day}
    bronze = read_bronze(store, TableRef("bronze", spec.source), partition)
    valid, rejected = validate(bronze, contract, "landing_date", timezone=timezone)
    # Resolution compares, then the write reads the validated records again: keep them.
    with store.kept(with_event_date(valid, spec.time_column, spec.date_column)) as valid:
        published = published_versions(store, table, spec, day, valid)
        resolved = resolve_versions(valid, contract, published)
        written = store.replace_partition(table, resolved.unique, partition)
    silver = store.written(resolved.unique, written)
    raw_fields = [
        c
        for c in bronze.columns
        if c not in (SOURCE_FILE, LINE_NUMBER, INGESTED_AT, "landing_date")
    ]
    if resolved.conflicts.height:
        # A conflicting record is quarantined as it landed (its bronze fields).
        conflicting = store.lazy(bronze).join(
            store.lazy(store.from_polars(resolved.conflicts)),
            on=[SOURCE_FILE, LINE_NUMBER],
            how="inner",
        )
        rejected = store.concat([store.lazy(rejected), conflicting.select(*rejected.columns)])
    quarantine = to_quarantine(
        rejected, stage="silver", landing_date=day, quarantined_at=now, raw_fields=raw_fields
    )
    quarantined = store.replace_partition(quarantine_table, quarantine, partition)
    reasons = store.to_polars(
        store.written(quarantine, quarantined).group_by("column", REASON).agg(nw.len())
    )
    event_days = store.to_polars(silver.select(spec.date_column).unique())
    unmapped = set(raw_fields) - set(contract.columns) - {RESCUED_DATA}
    return SilverDay(
        written=written,
        quarantined=quarantined,
        bronze_records=store.count(bronze),
        in_batch=resolved.in_batch,
        of_others=resolved.of_others,
        conflicts=resolved.conflicts.height,
        conflicting_keys=resolved.conflicting_keys,
        unknown_references=unknown_references(store, spec, silver),
        event_days=sorted(str(d) for d in event_days.to_series()),
        raw_fields=raw_fields,
        unmapped=sorted(unmapped | set(rescued_names(bronze))),
        figures=check_figures(store, spec, table, silver, day),
        reasons=reasons.sort(["len", "column", REASON], descending=[True, False, False])
        .head(10)
        .to_dicts(),
    )


def unknown_references(store: TableStore, spec: SilverTable, silver: Frame) -> int | None:
    """Rows of the partition whose key is not (yet) in the referenced table.

    Labels whose transaction has not landed (yet); None when the table references none.
    """
    if spec.references is None:
        return None
    key = spec.contract.key
    rows = store.count(silver)
    if not rows:
        return 0
    if not store.exists(spec.references):
        return rows
    keys = store.to_polars(silver.select(key).unique()).get_column(key).to_list()
    known = store.to_polars(
        store.scan(spec.references).select(key).filter(nw.col(key).is_in(keys)).unique()
    )
    known_keys = set(known.get_column(key).to_list())
    labelled = store.to_polars(silver.select(key))
    return int((~labelled.get_column(key).is_in(list(known_keys))).sum())


def build_silver_asset(spec: SilverTable, settings: Settings) -> dg.AssetsDefinition:
    """The silver asset of one source, with its quarantine table and checks."""
    source = spec.source
    contract = spec.contract
    table = TableRef("silver", source)
    bronze_table = TableRef("bronze", source)
    quarantine_table = TableRef("quarantine", f"silver_{source}")
    key = ["silver", source]
    unique_key = " and ".join(contract.unique_key)
    checks = [
        dg.AssetCheckSpec(
            unique_check_name(contract),
            asset=key,
            description=f"No {unique_key} appears twice anywhere in the table.",
            blocking=True,
        ),
        dg.AssetCheckSpec(
            "required_fields_present",
            asset=key,
            description="No required field of the contract is null in the partition.",
            blocking=True,
        ),
        dg.AssetCheckSpec(
            "values_in_range",
            asset=key,
            description=(
                f"Amounts in (0, {MAX_AMOUNT:.0f}]; times within {MAX_LATENESS_DAYS} days before "
                f"the landing day and {MAX_SKEW_HOURS} h after it."
            ),
            blocking=True,
        ),
        dg.AssetCheckSpec(
            "fresh",
            asset=key,
            description=(
                f"The latest {spec.time_column} of the partition is within {FRESHNESS_HOURS} h "
                "of the end of its landing day (the feed was not cut short)."
            ),
        ),
        dg.AssetCheckSpec(
            "reject_share_low",
            asset=key,
            description=f"At most {MAX_REJECT_SHARE:.0%} of the day's records are rejected.",
        ),
        dg.AssetCheckSpec(
            "no_conflicting_records",
            asset=key,
            description=(
                f"No two records of one {unique_key} differ (in the day's batch, or from the "
                f"published record of another partition); conflicts go to {quarantine_table}."
            ),
        ),
    ]
    if spec.references is not None:
        checks.append(
            dg.AssetCheckSpec(
                f"{spec.references.name}_known",
                asset=key,
                description=(
                    f"Every {contract.key} of the partition is in {spec.references} (labels "
                    f"may come before their transaction, which lands up to {MAX_LATENESS_DAYS} "
                    "days late: they are kept and counted)."
                ),
            )
        )

    @dg.multi_asset(
        name=f"silver_{source}",
        specs=[
            dg.AssetSpec(
                key=key,
                deps=[dg.AssetKey([bronze_table.layer, bronze_table.name])]
                + (
                    [dg.AssetKey([spec.references.layer, spec.references.name])]
                    if spec.references is not None
                    else []
                ),
                description=spec.description,
                group_name="silver",
                owners=OWNERS,
                kinds=engine_kinds(settings, ENGINE_GROUP),
                code_version=CODE_VERSION,
                metadata={
                    "table": str(table),
                    "schema_policy": "strict",
                    "key": ", ".join(contract.unique_key),
                },
            ),
            dg.AssetSpec(
                key=["quarantine", f"silver_{source}"],
                deps=[dg.AssetKey([bronze_table.layer, bronze_table.name])],
                description=(
                    f"Bronze {source} records that break the contract (missing required field, "
                    "value of the wrong type, time without an offset or zone, text too long or "
                    "of the wrong form, value out of range) or conflict with another version of "
                    "their key, with the reason, the column, the record's fields as JSON "
                    "(rescued source columns included), and its landing file and line."
                ),
                group_name="quarantine",
                owners=OWNERS,
                kinds=engine_kinds(settings, ENGINE_GROUP),
                code_version=CODE_VERSION,
                metadata={"table": str(quarantine_table)},
            ),
        ],
        check_specs=checks,
        partitions_def=daily_partitions(settings),
        # Deduplication reads the other partitions: one writer at a time keeps keys unique.
        pool=f"silver_{source}",
    )
    def _silver(context: dg.AssetExecutionContext, lakehouse: LakehouseResource):
        day = partition_day(context)
        now = datetime.datetime.now(datetime.UTC)
        store = lakehouse.store(ENGINE_GROUP)
        if not store.exists(bronze_table):
            raise dg.Failure(f"{bronze_table} does not exist yet: materialize it for {day} first")
        # A day may hold no records (no chargebacks reported that day): silver is empty.
        timezone = lakehouse.settings.source_timezones.get(source)
        built = build_day(store, spec, day, now, timezone)
        yield dg.MaterializeResult(
            asset_key=key,
            metadata={
                **table_metadata(built.written, str(table)),
                "bronze_records": built.bronze_records,
                "rejected_records": built.quarantined.rows_written,
                "duplicates_within_day": built.in_batch,
                "duplicates_of_other_days": built.of_others,
                "conflicts": built.conflicts,
                "conflicting_keys": built.conflicting_keys,
                **(
                    {"labels_for_unknown_transactions": built.unknown_references}
                    if built.unknown_references is not None
                    else {}
                ),
                "source_timezone": timezone or "",
                "event_days": dg.MetadataValue.json(built.event_days),
                "unmapped_source_columns": dg.MetadataValue.json(built.unmapped),
            },
            check_results=_check_results(spec, built, day, key),
        )
        yield dg.MaterializeResult(
            asset_key=["quarantine", f"silver_{source}"],
            metadata={
                **table_metadata(built.quarantined, str(quarantine_table)),
                "top_reasons": dg.MetadataValue.json(built.reasons),
            },
        )

    return _silver


def check_figures(
    store: TableStore, spec: SilverTable, table: TableRef, silver: Frame, day: datetime.date
) -> dict[str, Any]:
    """What the checks judge: key counts of the whole table, the partition's figures.

    The table is read at its latest version, which is the write's (one writer at a time).
    """
    contract = spec.contract
    scan = store.scan(table)
    if len(contract.unique_key) == 1:
        rows, unique = store.to_polars(
            scan.select(nw.len().alias("rows"), nw.col(contract.key).n_unique().alias("unique"))
        ).row(0)
    else:
        rows = store.to_polars(scan.select(nw.len())).item()
        unique = store.to_polars(scan.select(*contract.unique_key).unique().select(nw.len())).item()
    earliest_allowed, latest_allowed = _allowed_times(day)
    time = nw.col(spec.time_column)
    out_of_range = (time < earliest_allowed) | (time > latest_allowed)
    for name in contract.decimals:
        out_of_range = out_of_range | (nw.col(name) <= 0) | (nw.col(name) > MAX_AMOUNT)
    figures = store.to_polars(
        silver.select(
            *[nw.col(n).is_null().cast(nw.Int64).sum().alias(n) for n in contract.required],
            out_of_range.fill_null(False).cast(nw.Int64).sum().alias("__out_of_range"),
            time.max().alias("__latest"),
        )
    ).row(0, named=True)
    return {
        "rows": int(rows or 0),
        "unique": int(unique or 0),
        "nulls": {n: int(figures[n]) for n in contract.required if figures[n]},
        "out_of_range": int(figures["__out_of_range"] or 0),
        "latest": figures["__latest"],
    }


def _allowed_times(day: datetime.date) -> tuple[datetime.datetime, datetime.datetime]:
    landing_start = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
    return (
        landing_start - datetime.timedelta(days=MAX_LATENESS_DAYS),
        landing_start + datetime.timedelta(days=1, hours=MAX_SKEW_HOURS),
    )


def unique_check_name(contract: Contract) -> str:
    """The blocking uniqueness check of a contract's table (`transaction_id_unique`)."""
    return "_".join(contract.unique_key) + "_unique"


def _check_results(
    spec: SilverTable, built: SilverDay, day: datetime.date, key: list[str]
) -> list[dg.AssetCheckResult]:
    contract = spec.contract
    figures = built.figures
    bronze_records, rejected = built.bronze_records, built.quarantined.rows_written
    rows, unique, nulls = figures["rows"], figures["unique"], figures["nulls"]
    out_of_range, latest = figures["out_of_range"], figures["latest"]
    landing_start = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
    fresh_after = landing_start + datetime.timedelta(days=1, hours=-FRESHNESS_HOURS)
    share = rejected / bronze_records if bronze_records else 0.0
    results = [
        dg.AssetCheckResult(
            check_name=unique_check_name(contract),
            asset_key=key,
            passed=rows == unique,
            metadata={"rows": rows, "unique_keys": unique, "duplicates": rows - unique},
        ),
        dg.AssetCheckResult(
            check_name="required_fields_present",
            asset_key=key,
            passed=not nulls,
            metadata={"null_counts": dg.MetadataValue.json(nulls)},
        ),
        dg.AssetCheckResult(
            check_name="values_in_range",
            asset_key=key,
            passed=out_of_range == 0,
            metadata={"rows_out_of_range": out_of_range},
        ),
        dg.AssetCheckResult(
            check_name="fresh",
            asset_key=key,
            passed=latest is not None and latest >= fresh_after,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "latest": str(latest),
                "expected_after": fresh_after.isoformat(),
            },
        ),
        dg.AssetCheckResult(
            check_name="reject_share_low",
            asset_key=key,
            passed=share <= MAX_REJECT_SHARE,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "reject_share": share,
                "rejected": rejected,
                "bronze_records": bronze_records,
            },
        ),
        dg.AssetCheckResult(
            check_name="no_conflicting_records",
            asset_key=key,
            passed=built.conflicts == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "conflicts": built.conflicts,
                "conflicting_keys": built.conflicting_keys,
                "quarantine": f"quarantine/silver_{spec.source}",
            },
        ),
    ]
    if spec.references is not None:
        unknown = built.unknown_references or 0
        results.append(
            dg.AssetCheckResult(
                check_name=f"{spec.references.name}_known",
                asset_key=key,
                passed=unknown == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "labels_for_unknown_transactions": unknown,
                    "references": str(spec.references),
                },
            )
        )
    return results


def silver_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    """The silver assets of an environment, one per source."""
    return [build_silver_asset(spec, settings) for spec in SILVER_TABLES]
