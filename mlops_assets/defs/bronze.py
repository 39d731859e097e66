"""Bronze assets: landing files ingested into a bounded schema, unusable lines quarantined."""

import datetime
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import narwhals as nw
import polars as pl

from mlops_assets.defs.metadata import table_metadata
from mlops_assets.defs.partitions import daily_partitions, partition_day
from mlops_assets.defs.resources import LakehouseResource, engine_kinds
from mlops_assets.lakehouse import handoff
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import SchemaPolicy, WriteResult
from mlops_assets.lakehouse.landing import LandingFile, day_files, day_folder, read_landing_file
from mlops_assets.lakehouse.store import DeltaRsStore, Frame, SparkStore, TableStore
from mlops_assets.settings import Settings
from mlops_assets.transforms.bronze import (
    INGESTED_AT,
    LINE_NUMBER,
    RAW,
    REASON,
    RESCUED,
    SOURCE_FILE,
    rescued_names,
    split_records,
)
from mlops_assets.transforms.quarantine import to_quarantine
from mlops_assets.transforms.silver import LABELS, TRANSACTIONS

if TYPE_CHECKING:
    from mlops_assets.lakehouse.spark_landing import SparkLandingFile

SOURCES = ("transactions", "labels")
OWNERS = ["team:data-engineering"]
CODE_VERSION = "bronze-2"
ENGINE_GROUP = "bronze"


CONTRACTS = {"transactions": TRANSACTIONS, "labels": LABELS}


def bronze_schema(source: str) -> dict[str, pl.DataType]:
    """Bronze's bounded schema for a source: contract columns, rescued data, lineage."""
    return {
        **dict.fromkeys(CONTRACTS[source].columns, pl.String()),
        RESCUED: pl.String(),
        SOURCE_FILE: pl.String(),
        LINE_NUMBER: pl.Int64(),
        INGESTED_AT: pl.Datetime("us", "UTC"),
    }


@dataclass
class Ingested:
    """One source's landing day, ingested.

    Attributes:
        records: Bronze rows (bounded schema, with `landing_date`).
        quarantine: Quarantine rows of the records that could not be used.
        files: Landing files read.
        lines: Landing records read (a quoted record over several lines counts once; a file
            quarantined whole counts each physical line).
        folder: The day's landing folder.
        rescued: Per landing file, the columns outside the contract it brought.
    """

    records: Frame
    quarantine: Frame
    files: int
    lines: int
    folder: Path
    rescued: dict[str, tuple[str, ...]] = field(default_factory=dict)


def ingest_day(
    store: TableStore,
    landing_root: Path,
    source: str,
    day: datetime.date,
    ingested_at: datetime.datetime,
) -> Ingested:
    """Read one source's landing files of a day into bronze records and quarantine rows.

    On polars the process reads the day's landing files (their bytes decide UTF-8 validity,
    record boundaries and line numbers, and records holding quotes are parsed there); on
    Spark the executors read them with the same function (`defs.spark_bronze`). Splitting,
    rejecting and shaping run on the store's engine with the portable transforms. A day
    without files gives empty frames.

    Raises:
        LandingFileChangedError: A file changed while it was read (still being written).
    """
    contract = CONTRACTS[source]
    files = day_files(landing_root, source, day)
    landings: Iterable[tuple[LandingFile | SparkLandingFile, int, Frame]]
    if isinstance(store, SparkStore):
        from mlops_assets.defs.spark_bronze import spark_landings

        landings = spark_landings(store, files, landing_root, ingested_at, contract.required)
    else:
        landings = _landings(store, files, landing_root, ingested_at, contract.required)
    records: list[Frame] = []
    rejects: list[Frame] = []
    rescued: dict[str, tuple[str, ...]] = {}
    lines = 0
    for landing, count, frame in landings:
        lines += count
        if landing.header_problem:
            # A file the project cannot read goes to quarantine whole, with the reason.
            rejects.append(
                frame.select(
                    SOURCE_FILE,
                    LINE_NUMBER,
                    INGESTED_AT,
                    RAW,
                    nw.lit(landing.header_problem).alias(REASON),
                )
            )
            continue
        extras = tuple(rescued_names(landing.header, contract.columns).values())
        if extras:
            rescued[landing.relative] = extras
        good, bad = split_records(frame, landing.header, contract.columns)
        records.append(good)
        rejects.append(bad)
    empty_rejects = {
        SOURCE_FILE: pl.String,
        LINE_NUMBER: pl.Int64,
        RAW: pl.String,
        REASON: pl.String,
    }
    bronze = (
        store.concat(records) if records else store.empty(bronze_schema(source))
    ).with_columns(nw.lit(day).alias("landing_date"))
    quarantine = to_quarantine(
        store.concat(rejects) if rejects else store.empty(empty_rejects),
        stage="bronze",
        landing_date=day,
        quarantined_at=ingested_at,
    )
    return Ingested(
        bronze, quarantine, len(files), lines, day_folder(landing_root, source, day), rescued
    )


def _landings(
    store: TableStore,
    files: Sequence[Path],
    landing_root: Path,
    ingested_at: datetime.datetime,
    required: Sequence[str],
) -> Iterator[tuple[LandingFile, int, Frame]]:
    """The files read in this process, one at a time as the loop reaches them.

    Yields:
        The file as read, its records read, and its records on the store's engine.
    """
    for path in files:
        landing = read_landing_file(path, landing_root, ingested_at, required=required)
        yield landing, landing.lines.height, store.from_polars(landing.lines)


@dataclass
class Written:
    """What a bronze run wrote, for the asset's metadata and checks."""

    bronze: WriteResult
    quarantine: WriteResult
    counts: dict[str, int]
    reasons: list[dict]
    folder: Path
    rescued_columns: dict[str, int]


def _ingest_and_write(
    store: TableStore,
    landing_root: Path,
    source: str,
    day: datetime.date,
    table: TableRef,
    quarantine_table: TableRef,
) -> Written:
    """Ingest a day and write the bronze and quarantine partitions."""
    ingested_at = datetime.datetime.now(datetime.UTC)
    partition = {"landing_date": day}
    day_in = ingest_day(store, landing_root, source, day, ingested_at)
    written = store.replace_partition(table, day_in.records, partition, policy=SchemaPolicy.STRICT)
    if isinstance(store, DeltaRsStore):
        # Silver reads this partition next: in this process, it takes these rows instead.
        handoff.keep(written, store.to_polars(day_in.records), partition)
    quarantined = store.replace_partition(quarantine_table, day_in.quarantine, partition)
    counts = {
        "files": day_in.files,
        "lines": day_in.lines,
        "records": written.rows_written,
        "quarantined": quarantined.rows_written,
    }
    reasons = store.to_polars(
        store.written(day_in.quarantine, quarantined).group_by(REASON).agg(nw.len())
    )
    rescued_columns: dict[str, int] = {}
    if day_in.rescued:
        # Records carrying each rescued column: the written records of the files that had it.
        per_file = store.to_polars(
            store.written(day_in.records, written)
            .filter(nw.col(SOURCE_FILE).is_in(list(day_in.rescued)))
            .group_by(SOURCE_FILE)
            .agg(nw.len())
        )
        for name, rows in per_file.iter_rows():
            for column in day_in.rescued[name]:
                rescued_columns[column] = rescued_columns.get(column, 0) + rows
    return Written(
        written,
        quarantined,
        counts,
        reasons.sort(["len", REASON], descending=[True, False]).head(10).to_dicts(),
        day_in.folder,
        dict(sorted(rescued_columns.items())),
    )


def build_bronze_asset(source: str, settings: Settings) -> dg.AssetsDefinition:
    """The bronze asset of one landing source, with its quarantine table."""
    table = TableRef("bronze", source)
    quarantine_table = TableRef("quarantine", f"bronze_{source}")

    @dg.multi_asset(
        name=f"bronze_{source}",
        specs=[
            dg.AssetSpec(
                key=["bronze", source],
                # The feed's files (an observable source asset, defs/sources.py).
                deps=[dg.AssetKey(["landing", source])],
                description=(
                    f"Raw {source} exactly as they arrived in the day's landing files: one string "
                    "column per contract column (null when a file lacks an optional one), the "
                    "file's other columns as one JSON object in `_rescued_data`, and the source "
                    "file, line number and ingestion time of every record. The schema is bounded "
                    "(strict policy): a file's extra columns never widen it. Partitioned by "
                    "landing day."
                ),
                group_name="bronze",
                owners=OWNERS,
                kinds=engine_kinds(settings, ENGINE_GROUP),
                code_version=CODE_VERSION,
                metadata={"table": str(table), "schema_policy": SchemaPolicy.STRICT.value},
            ),
            dg.AssetSpec(
                key=["quarantine", f"bronze_{source}"],
                description=(
                    f"Landing records of {source} that could not be parsed (not UTF-8, empty, "
                    "malformed quoting, too long, wrong field count) and every line of files "
                    "that cannot be read (binary, another separator, unusable header or one "
                    "lacking required columns, unterminated quote, corrupt gzip), with the raw "
                    "text, the reason, the file and the line. Nothing is dropped: every "
                    "landing record is in bronze or here."
                ),
                group_name="quarantine",
                owners=OWNERS,
                kinds=engine_kinds(settings, ENGINE_GROUP),
                code_version=CODE_VERSION,
                metadata={"table": str(quarantine_table)},
            ),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                "every_landing_line_accounted_for",
                asset=["bronze", source],
                description="Landing lines = bronze records + quarantined lines.",
                blocking=True,
            ),
            dg.AssetCheckSpec(
                "landing_files_present",
                asset=["bronze", source],
                description=(
                    "The day's landing folder holds files for the source (warns; an empty day "
                    "builds empty partitions)."
                ),
            ),
        ],
        partitions_def=daily_partitions(settings),
    )
    def _bronze(context: dg.AssetExecutionContext, lakehouse: LakehouseResource):
        day = partition_day(context)
        done = _ingest_and_write(
            lakehouse.store(ENGINE_GROUP),
            lakehouse.landing_root,
            source,
            day,
            table,
            quarantine_table,
        )
        counts = done.counts
        if not counts["files"]:
            context.log.warning(
                f"no landing files for {source} on {day} under {done.folder}: "
                "empty bronze and quarantine partitions written"
            )
        accounted = counts["records"] + counts["quarantined"] == counts["lines"]
        yield dg.MaterializeResult(
            asset_key=["bronze", source],
            metadata={
                **table_metadata(done.bronze, str(table)),
                "landing_files": counts["files"],
                "landing_lines": counts["lines"],
                "quarantined_lines": counts["quarantined"],
                "rescued_columns": dg.MetadataValue.json(done.rescued_columns),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="every_landing_line_accounted_for",
                    asset_key=["bronze", source],
                    passed=accounted,
                    metadata=counts,
                ),
                dg.AssetCheckResult(
                    check_name="landing_files_present",
                    asset_key=["bronze", source],
                    passed=counts["files"] > 0,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"folder": str(done.folder), "files": counts["files"]},
                ),
            ],
        )
        yield dg.MaterializeResult(
            asset_key=["quarantine", f"bronze_{source}"],
            metadata={
                **table_metadata(done.quarantine, str(quarantine_table)),
                "top_reasons": dg.MetadataValue.json(done.reasons),
            },
        )

    return _bronze


def bronze_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    """The bronze assets of an environment, one per landing source."""
    return [build_bronze_asset(source, settings) for source in SOURCES]
