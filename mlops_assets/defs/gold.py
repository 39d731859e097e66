"""Gold assets: business tables for analysts."""

import datetime

import dagster as dg
import narwhals as nw
import polars as pl

from mlops_assets.defs.metadata import table_metadata
from mlops_assets.defs.partitions import LATE_DAYS, daily_partitions, days_around, partition_day
from mlops_assets.defs.resources import LakehouseResource, engine_kinds
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import WriteResult
from mlops_assets.lakehouse.store import TableStore
from mlops_assets.settings import Settings
from mlops_assets.transforms.gold import merchant_category_daily

OWNERS = ["team:analytics"]
CODE_VERSION = "gold-2"
ENGINE_GROUP = "gold"
MERCHANT_CATEGORY_DAILY = TableRef("gold", "merchant_category_daily")
SILVER_TRANSACTIONS = TableRef("silver", "transactions")
SILVER_LABELS = TableRef("silver", "labels")
TRANSACTION_COLUMNS = ["transaction_id", "event_time", "card_id", "merchant_category", "amount"]


def build_day(store: TableStore, day: datetime.date) -> tuple[WriteResult, dict[str, int]]:
    """Aggregate one event day of silver into gold; the write and its totals."""
    transactions = (
        store.scan(SILVER_TRANSACTIONS)
        .filter(nw.col("event_date") == day)
        .select(*TRANSACTION_COLUMNS)
    )
    labels = (
        store.scan(SILVER_LABELS).select("transaction_id", "is_fraud", "reported_at")
        if store.exists(SILVER_LABELS)
        else store.empty(
            {
                "transaction_id": pl.String,
                "is_fraud": pl.Boolean,
                "reported_at": pl.Datetime("us", "UTC"),
            }
        )
    )
    daily = merchant_category_daily(store.materialize(transactions), store.materialize(labels))
    written = store.replace_partition(MERCHANT_CATEGORY_DAILY, daily, {"event_date": day})
    totals = store.to_polars(
        store.written(daily, written).select(
            nw.col("transactions").sum().fill_null(0),
            nw.col("fraud_transactions").sum().fill_null(0),
            nw.len().alias("categories"),
        )
    ).row(0, named=True)
    return written, {name: int(value or 0) for name, value in totals.items()}


def merchant_category_daily_spec(settings: Settings) -> dg.AssetsDefinition:
    """The gold merchant-category table of an environment."""

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
        kinds=engine_kinds(settings, ENGINE_GROUP),
        code_version=CODE_VERSION,
        # One writer of the table at a time (a manual run beside a scheduled refresh).
        pool="gold_merchant_category_daily",
        partitions_def=daily_partitions(settings),
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
        written, totals = build_day(lakehouse.store(ENGINE_GROUP), partition_day(context))
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

    return merchant_category_daily_asset


def gold_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    """The gold assets of an environment."""
    return [merchant_category_daily_spec(settings)]
