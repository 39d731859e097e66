"""Bronze assets: landing files ingested as they are, unparseable lines quarantined."""

import datetime
from typing import Any

import dagster as dg
import narwhals as nw
import polars as pl

from mlops_assets.defs.metadata import table_metadata
from mlops_assets.defs.partitions import DAILY, partition_day
from mlops_assets.defs.resources import LakehouseResource, SparkResource, engine_kinds
from mlops_assets.lakehouse import spark_io
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import SchemaPolicy, WriteResult, write_partition
from mlops_assets.lakehouse.landing import day_files, read_landing_file
from mlops_assets.settings import Engine
from mlops_assets.transforms.bronze import LINE_NUMBER, REASON, SOURCE_FILE, UTF8, split_lines
from mlops_assets.transforms.quarantine import to_quarantine

SOURCES = ("transactions", "labels")
OWNERS = ["team:data-engineering"]
CODE_VERSION = "bronze-1"
ENGINE_GROUP = "bronze"


class MissingLandingFilesError(FileNotFoundError):
    """A day's landing folder holds no files for a source."""


def ingest_day(
    lakehouse: LakehouseResource, source: str, day: datetime.date, ingested_at: datetime.datetime
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """Read one source's landing files of a day into bronze records and quarantine rows.

    Returns:
        `(records, quarantine, counts)`; counts hold `files`, `lines`, `records`, `quarantined`.

    Raises:
        MissingLandingFilesError: The day has no landing files for the source.
    """
    files = day_files(lakehouse.landing_root, source, day)
    if not files:
        raise MissingLandingFilesError(
            f"no landing files for {source} on {day} under "
            f"{lakehouse.landing_root / source / day.isoformat()}"
        )
    records: list[pl.DataFrame] = []
    rejects: list[pl.DataFrame] = []
    lines = 0
    for path in files:
        landing = read_landing_file(path, lakehouse.landing_root, ingested_at)
        lines += landing.lines.height
        if landing.header_problem:
            # A file without a usable header cannot be split: every line goes to quarantine.
            rejects.append(
                landing.lines.select(pl.exclude(UTF8), pl.lit(landing.header_problem).alias(REASON))
            )
            continue
        good, bad = split_lines(nw.from_native(landing.lines), landing.header)
        records.append(good.to_native())
        rejects.append(bad.to_native())
    # Without a usable header in any file there are no records, only quarantined lines.
    bronze = (
        pl.concat(records, how="diagonal_relaxed")
        if records
        else pl.DataFrame(schema={SOURCE_FILE: pl.String, LINE_NUMBER: pl.Int64})
    ).with_columns(pl.lit(day).alias("landing_date"))
    quarantine = to_quarantine(
        nw.from_native(pl.concat(rejects, how="diagonal_relaxed")),
        stage="bronze",
        landing_date=day,
        quarantined_at=ingested_at,
    ).to_native()
    counts = {
        "files": len(files),
        "lines": lines,
        "records": bronze.height,
        "quarantined": quarantine.height,
    }
    return bronze, quarantine, counts


def ingest_day_spark(
    spark: Any,
    lakehouse: LakehouseResource,
    source: str,
    day: datetime.date,
    ingested_at: datetime.datetime,
) -> tuple[Any, Any, dict[str, int]]:
    """`ingest_day` on Spark: the same records and quarantine rows, as Spark frames.

    The driver reads the day's landing files (their bytes decide UTF-8 validity and line
    numbers, as on polars); splitting, rejecting and shaping run on Spark with the portable
    narwhals transforms.

    Returns:
        `(records, quarantine, counts)`; counts hold `files` and `lines`.

    Raises:
        MissingLandingFilesError: The day has no landing files for the source.
    """
    from pyspark.sql import functions as F

    files = day_files(lakehouse.landing_root, source, day)
    if not files:
        raise MissingLandingFilesError(
            f"no landing files for {source} on {day} under "
            f"{lakehouse.landing_root / source / day.isoformat()}"
        )
    records: list[Any] = []
    rejects: list[Any] = []
    lines = 0
    for path in files:
        landing = read_landing_file(path, lakehouse.landing_root, ingested_at)
        lines += landing.lines.height
        frame = landing.lines
        if landing.header_problem:
            frame = frame.select(pl.exclude(UTF8), pl.lit(landing.header_problem).alias(REASON))
            rejects.append(spark.createDataFrame(frame.to_arrow()))
            continue
        good, bad = split_lines(
            nw.from_native(spark.createDataFrame(frame.to_arrow())), landing.header
        )
        records.append(good.to_native())
        rejects.append(bad.to_native())
    if records:
        bronze = records[0]
        for more in records[1:]:
            bronze = bronze.unionByName(more, allowMissingColumns=True)
    else:
        bronze = spark.createDataFrame([], f"{SOURCE_FILE} string, {LINE_NUMBER} long")
    bronze = bronze.withColumn("landing_date", F.lit(day))
    rejected = rejects[0]
    for more in rejects[1:]:
        rejected = rejected.unionByName(more, allowMissingColumns=True)
    quarantine = to_quarantine(
        nw.from_native(rejected), stage="bronze", landing_date=day, quarantined_at=ingested_at
    ).to_native()
    return bronze, quarantine, {"files": len(files), "lines": lines}


def _ingest_and_write(
    lakehouse: LakehouseResource,
    spark: SparkResource,
    source: str,
    day: datetime.date,
    table: TableRef,
    quarantine_table: TableRef,
) -> tuple[WriteResult, WriteResult, dict[str, int], list[dict]]:
    """Ingest a day on the group's engine and write bronze and quarantine partitions."""
    ingested_at = datetime.datetime.now(datetime.UTC)
    if lakehouse.engine_for(ENGINE_GROUP) is Engine.SPARK:
        session = spark.session
        records, quarantine, counts = ingest_day_spark(session, lakehouse, source, day, ingested_at)
        written = spark_io.write_partition(
            session,
            lakehouse.write_uri(table),
            records,
            {"landing_date": day},
            policy=SchemaPolicy.ADDITIVE,
            table=str(table),
        )
        quarantined = spark_io.write_partition(
            session,
            lakehouse.write_uri(quarantine_table),
            quarantine,
            {"landing_date": day},
            table=str(quarantine_table),
        )
        counts |= {"records": written.rows_written, "quarantined": quarantined.rows_written}
        reasons = [
            {REASON: row[REASON], "len": row["len"]}
            for row in spark_io.read_partition(
                session, quarantined.uri, {"landing_date": day}, [REASON]
            )
            .groupBy(REASON)
            .count()
            .withColumnRenamed("count", "len")
            .orderBy("len", REASON, ascending=[False, True])
            .limit(10)
            .collect()
        ]
        return written, quarantined, counts, reasons
    records, quarantine, counts = ingest_day(lakehouse, source, day, ingested_at)
    written = write_partition(
        lakehouse.write_uri(table),
        records,
        {"landing_date": day},
        policy=SchemaPolicy.ADDITIVE,
        table=str(table),
    )
    quarantined = write_partition(
        lakehouse.write_uri(quarantine_table),
        quarantine,
        {"landing_date": day},
        table=str(quarantine_table),
    )
    reasons = (
        quarantine.group_by(REASON).len().sort("len", descending=True).head(10).to_dicts()
        if quarantine.height
        else []
    )
    return written, quarantined, counts, reasons


def build_bronze_asset(source: str) -> dg.AssetsDefinition:
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
                kinds=engine_kinds(ENGINE_GROUP),
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
                kinds=engine_kinds(ENGINE_GROUP),
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
        partitions_def=DAILY,
    )
    def _bronze(
        context: dg.AssetExecutionContext, lakehouse: LakehouseResource, spark: SparkResource
    ):
        day = partition_day(context)
        written, quarantined, counts, reasons = _ingest_and_write(
            lakehouse, spark, source, day, table, quarantine_table
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


bronze_assets = [build_bronze_asset(source) for source in SOURCES]
