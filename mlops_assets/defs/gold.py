"""Gold assets: business tables for analysts."""

import datetime
from typing import Any

import dagster as dg
import narwhals as nw
import polars as pl

from mlops_assets.defs.metadata import table_metadata
from mlops_assets.defs.partitions import DAILY, LATE_DAYS, days_around, partition_day
from mlops_assets.defs.resources import LakehouseResource, SparkResource, engine_kinds
from mlops_assets.lakehouse import spark_io
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import (
    WriteResult,
    scan_table,
    table_exists,
    write_partition,
)
from mlops_assets.settings import Engine
from mlops_assets.transforms.gold import merchant_category_daily

OWNERS = ["team:analytics"]
CODE_VERSION = "gold-1"
ENGINE_GROUP = "gold"
MERCHANT_CATEGORY_DAILY = TableRef("gold", "merchant_category_daily")
TRANSACTION_COLUMNS = ["transaction_id", "event_time", "card_id", "merchant_category", "amount"]


def build_day_polars(
    lakehouse: LakehouseResource, day: datetime.date
) -> tuple[WriteResult, dict[str, int]]:
    """Aggregate one event day of silver into gold on polars; the write and its totals."""
    transactions = (
        scan_table(lakehouse.read_uri(TableRef("silver", "transactions")))
        .filter(pl.col("event_date") == day)
        .select(TRANSACTION_COLUMNS)
        .collect()
    )
    labels_uri = lakehouse.read_uri(TableRef("silver", "labels"))
    labels = (
        scan_table(labels_uri).select("transaction_id", "is_fraud").collect()
        if table_exists(labels_uri)
        else pl.DataFrame(schema={"transaction_id": pl.String, "is_fraud": pl.Boolean})
    )
    daily = merchant_category_daily(
        nw.from_native(transactions), nw.from_native(labels)
    ).to_native()
    written = write_partition(
        lakehouse.write_uri(MERCHANT_CATEGORY_DAILY),
        daily,
        {"event_date": day},
        table=str(MERCHANT_CATEGORY_DAILY),
    )
    return written, {
        "transactions": int(daily.get_column("transactions").sum() or 0),
        "fraud_transactions": int(daily.get_column("fraud_transactions").sum() or 0),
        "categories": daily.height,
    }


def build_day_spark(
    spark: Any, lakehouse: LakehouseResource, day: datetime.date
) -> tuple[WriteResult, dict[str, int]]:
    """`build_day_polars` on Spark: the same narwhals aggregation on Spark frames."""
    from pyspark.sql import functions as F

    transactions = (
        spark_io.read_table(spark, lakehouse.read_uri(TableRef("silver", "transactions")))
        .filter(F.col("event_date") == F.lit(day))
        .select(*TRANSACTION_COLUMNS)
    )
    labels_uri = lakehouse.read_uri(TableRef("silver", "labels"))
    labels = (
        spark_io.read_table(spark, labels_uri).select("transaction_id", "is_fraud")
        if spark_io.table_exists(spark, labels_uri)
        else spark.createDataFrame([], "transaction_id string, is_fraud boolean")
    )
    daily = merchant_category_daily(
        nw.from_native(transactions), nw.from_native(labels)
    ).to_native()
    written = spark_io.write_partition(
        spark,
        lakehouse.write_uri(MERCHANT_CATEGORY_DAILY),
        daily,
        {"event_date": day},
        table=str(MERCHANT_CATEGORY_DAILY),
    )
    totals = (
        spark_io.read_table(spark, written.uri)
        .filter(F.col("event_date") == F.lit(day))
        .select(
            F.coalesce(F.sum("transactions"), F.lit(0)).alias("transactions"),
            F.coalesce(F.sum("fraud_transactions"), F.lit(0)).alias("fraud_transactions"),
            F.count(F.lit(1)).alias("categories"),
        )
        .collect()[0]
    )
    return written, {
        k: int(totals[k]) for k in ("transactions", "fraud_transactions", "categories")
    }


@dg.asset(
    key=["gold", "merchant_category_daily"],
    deps=[
        # A day's events keep landing for a few days after it (late events).
        dg.AssetDep(
            ["silver", "transactions"],
            partition_mapping=days_around(0, LATE_DAYS),
        ),
        # Chargebacks for a day arrive on later days: the fraud rate reads all labels known.
        dg.AssetDep(["silver", "labels"], partition_mapping=dg.AllPartitionMapping()),
    ],
    group_name="gold",
    owners=OWNERS,
    kinds=engine_kinds(ENGINE_GROUP),
    code_version=CODE_VERSION,
    # One writer of the table at a time (a manual run beside a scheduled refresh).
    pool="gold_merchant_category_daily",
    partitions_def=DAILY,
    metadata={"table": str(MERCHANT_CATEGORY_DAILY), "schema_policy": "strict"},
)
def merchant_category_daily_asset(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource, spark: SparkResource
) -> dg.MaterializeResult:
    """Daily card volume, amount and fraud rate per merchant category, for analysts.

    One row per event day (UTC) and merchant category: transactions, distinct cards, total,
    mean and median amount, how many transactions carry a chargeback label yet, fraud count,
    fraud amount and fraud rate. Late events and late chargebacks count once they are in
    silver: re-materialize a day to refresh it. Partitioned by event day.
    """
    day = partition_day(context)
    if lakehouse.engine_for(ENGINE_GROUP) is Engine.SPARK:
        written, totals = build_day_spark(spark.session, lakehouse, day)
    else:
        written, totals = build_day_polars(lakehouse, day)
    transactions_total, fraud_total = totals["transactions"], totals["fraud_transactions"]
    return dg.MaterializeResult(
        metadata={
            **table_metadata(written, str(MERCHANT_CATEGORY_DAILY)),
            "transactions": transactions_total,
            "fraud_transactions": fraud_total,
            "fraud_rate": fraud_total / transactions_total if transactions_total else 0.0,
            "categories": totals["categories"],
        }
    )


gold_assets = [merchant_category_daily_asset]
