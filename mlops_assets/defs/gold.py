"""Gold assets: business tables for analysts."""

import dagster as dg
import narwhals as nw
import polars as pl

from mlops_assets.defs.metadata import table_metadata
from mlops_assets.defs.partitions import DAILY, LATE_DAYS, days_around, partition_day
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import scan_table, table_exists, write_partition
from mlops_assets.transforms.gold import merchant_category_daily

OWNERS = ["team:analytics"]
CODE_VERSION = "gold-1"
MERCHANT_CATEGORY_DAILY = TableRef("gold", "merchant_category_daily")
TRANSACTION_COLUMNS = ["transaction_id", "event_time", "card_id", "merchant_category", "amount"]


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
    kinds={"polars", "delta"},
    code_version=CODE_VERSION,
    partitions_def=DAILY,
    metadata={"table": str(MERCHANT_CATEGORY_DAILY), "schema_policy": "strict"},
)
def merchant_category_daily_asset(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource
) -> dg.MaterializeResult:
    """Daily card volume, amount and fraud rate per merchant category, for analysts.

    One row per event day (UTC) and merchant category: transactions, distinct cards, total,
    mean and median amount, how many transactions carry a chargeback label yet, fraud count,
    fraud amount and fraud rate. Late events and late chargebacks count once they are in
    silver: re-materialize a day to refresh it. Partitioned by event day.
    """
    day = partition_day(context)
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
    transactions_total = int(daily.get_column("transactions").sum() or 0)
    fraud_total = int(daily.get_column("fraud_transactions").sum() or 0)
    return dg.MaterializeResult(
        metadata={
            **table_metadata(written, str(MERCHANT_CATEGORY_DAILY)),
            "transactions": transactions_total,
            "fraud_transactions": fraud_total,
            "fraud_rate": fraud_total / transactions_total if transactions_total else 0.0,
            "categories": daily.height,
        }
    )


gold_assets = [merchant_category_daily_asset]
