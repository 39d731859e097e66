"""Bronze assets: landing files ingested as they are, unparseable lines quarantined."""

import datetime
from pathlib import Path

import dagster as dg
import narwhals as nw
import polars as pl

from mlops_assets.defs.metadata import table_metadata
from mlops_assets.defs.partitions import daily_partitions, partition_day
from mlops_assets.defs.resources import LakehouseResource, engine_kinds
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import SchemaPolicy, WriteResult
from mlops_assets.lakehouse.landing import day_files, read_landing_file
from mlops_assets.lakehouse.store import Frame, TableStore
from mlops_assets.settings import Settings
from mlops_assets.transforms.bronze import LINE_NUMBER, REASON, SOURCE_FILE, UTF8, split_lines
from mlops_assets.transforms.quarantine import to_quarantine

SOURCES = ("transactions", "labels")
OWNERS = ["team:data-engineering"]
CODE_VERSION = "bronze-1"
ENGINE_GROUP = "bronze"


class MissingLandingFilesError(FileNotFoundError):
    """A day's landing folder holds no files for a source."""


def ingest_day(
    store: TableStore,
    landing_root: Path,
    source: str,
    day: datetime.date,
    ingested_at: datetime.datetime,
) -> tuple[Frame, Frame, dict[str, int]]:
    """Read one source's landing files of a day into bronze records and quarantine rows.

    The driver reads the day's landing files (their bytes decide UTF-8 validity and line
    numbers); splitting, rejecting and shaping run on the store's engine with the portable
    transforms.

    Returns:
        `(records, quarantine, counts)`; counts hold `files` and `lines`.

    Raises:
        MissingLandingFilesError: The day has no landing files for the source.
    """
    files = day_files(landing_root, source, day)
    if not files:
        folder = landing_root / source / day.isoformat()
        raise MissingLandingFilesError(f"no landing files for {source} on {day} under {folder}")
    records: list[Frame] = []
    rejects: list[Frame] = []
    lines = 0
    for path in files:
        landing = read_landing_file(path, landing_root, ingested_at)
        lines += landing.lines.height
        if landing.header_problem:
            # A file without a usable header cannot be split: every line goes to quarantine.
            rejects.append(
                store.from_polars(
                    landing.lines.select(
                        pl.exclude(UTF8), pl.lit(landing.header_problem).alias(REASON)
                    )
                )
            )
            continue
        good, bad = split_lines(store.from_polars(landing.lines), landing.header)
        records.append(good)
        rejects.append(bad)
    # Without a usable header in any file there are no records, only quarantined lines.
    bronze = (
        store.concat(records)
        if records
        else store.empty({SOURCE_FILE: pl.String, LINE_NUMBER: pl.Int64})
    ).with_columns(nw.lit(day).alias("landing_date"))
    quarantine = to_quarantine(
        store.concat(rejects), stage="bronze", landing_date=day, quarantined_at=ingested_at
    )
    return bronze, quarantine, {"files": len(files), "lines": lines}


def _ingest_and_write(
    store: TableStore,
    landing_root: Path,
    source: str,
    day: datetime.date,
    table: TableRef,
    quarantine_table: TableRef,
) -> tuple[WriteResult, WriteResult, dict[str, int], list[dict]]:
    """Ingest a day and write the bronze and quarantine partitions."""
    ingested_at = datetime.datetime.now(datetime.UTC)
    partition = {"landing_date": day}
    records, quarantine, counts = ingest_day(store, landing_root, source, day, ingested_at)
    written = store.replace_partition(table, records, partition, policy=SchemaPolicy.ADDITIVE)
    quarantined = store.replace_partition(quarantine_table, quarantine, partition)
    counts |= {"records": written.rows_written, "quarantined": quarantined.rows_written}
    reasons = store.to_polars(store.written(quarantine, quarantined).group_by(REASON).agg(nw.len()))
    return (
        written,
        quarantined,
        counts,
        reasons.sort(["len", REASON], descending=[True, False]).head(10).to_dicts(),
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
                description=(
                    f"Raw {source} exactly as they arrived in the day's landing files, one string "
                    "column per field of the file's header, with the source file, line number and "
                    "ingestion time of every record. New source columns are added to the table "
                    "(additive schema policy). Partitioned by landing day."
                ),
                group_name="bronze",
                owners=OWNERS,
                kinds=engine_kinds(settings, ENGINE_GROUP),
                code_version=CODE_VERSION,
                metadata={"table": str(table), "schema_policy": SchemaPolicy.ADDITIVE.value},
            ),
            dg.AssetSpec(
                key=["quarantine", f"bronze_{source}"],
                description=(
                    f"Landing lines of {source} that could not be parsed (not UTF-8, empty, "
                    "quoted, wrong field count, no usable header), with the raw text, the "
                    "reason, the file and the line. Nothing is dropped: every landing line "
                    "is in bronze or here."
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
            )
        ],
        partitions_def=daily_partitions(settings),
    )
    def _bronze(context: dg.AssetExecutionContext, lakehouse: LakehouseResource):
        day = partition_day(context)
        written, quarantined, counts, reasons = _ingest_and_write(
            lakehouse.store(ENGINE_GROUP),
            lakehouse.landing_root,
            source,
            day,
            table,
            quarantine_table,
        )
        accounted = counts["records"] + counts["quarantined"] == counts["lines"]
        yield dg.MaterializeResult(
            asset_key=["bronze", source],
            metadata={
                **table_metadata(written, str(table)),
                "landing_files": counts["files"],
                "landing_lines": counts["lines"],
                "quarantined_lines": counts["quarantined"],
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="every_landing_line_accounted_for",
                    asset_key=["bronze", source],
                    passed=accounted,
                    metadata=counts,
                )
            ],
        )
        yield dg.MaterializeResult(
            asset_key=["quarantine", f"bronze_{source}"],
            metadata={
                **table_metadata(quarantined, str(quarantine_table)),
                "top_reasons": dg.MetadataValue.json(reasons),
            },
        )

    return _bronze


def bronze_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    """The bronze assets of an environment, one per landing source."""
    return [build_bronze_asset(source, settings) for source in SOURCES]
