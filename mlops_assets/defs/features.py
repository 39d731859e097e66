"""Feature assets: card behaviour and merchant risk tables, written by merge, with lineage."""

import datetime
from typing import Any

import dagster as dg
import narwhals as nw
import polars as pl

from mlops_assets.defs.metadata import table_metadata
from mlops_assets.defs.partitions import LATE_DAYS, daily_partitions, days_around, partition_day
from mlops_assets.defs.resources import LakehouseResource, engine_kinds
from mlops_assets.features.registry import CARD_BEHAVIOUR, MERCHANT_RISK, FeatureTable
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import WriteResult
from mlops_assets.lakehouse.store import Frame, TableMissingError, TableStore
from mlops_assets.settings import Settings
from mlops_assets.transforms.features import (
    CARD_LOOKBACK_DAYS,
    MERCHANT_WINDOW_DAYS,
    card_behaviour,
    merchant_daily,
    merchant_risk,
)
from mlops_assets.transforms.labels import day_reports

CODE_VERSION = "features-2"
ENGINE_GROUP = "features"
OWNERS = ["team:ml-platform"]
SILVER_TRANSACTIONS = TableRef("silver", "transactions")
SILVER_LABELS = TableRef("silver", "labels")
MERCHANT_DAILY = TableRef("features", "merchant_daily")
CHARGEBACK_WINDOW_DAYS = 120


def feature_table_metadata(table: FeatureTable) -> dict[str, Any]:
    """What the UI shows of a feature table before and after it is built."""
    return {
        "table": str(table.ref),
        "entity_keys": dg.MetadataValue.json(list(table.entity_keys)),
        "timestamp_key": table.timestamp_key,
        "lookback_days": table.lookback_days,
        "sources": dg.MetadataValue.json(list(table.sources)),
        "features": dg.MetadataValue.table_schema(
            dg.TableSchema(
                columns=[
                    dg.TableColumn(
                        f.name, f.dtype, description=f"{f.description} Default {f.default}."
                    )
                    for f in table.features
                ]
            )
        ),
    }


def merge_feature_day(
    store: TableStore,
    table: FeatureTable,
    rows: Frame,
    day: datetime.date,
    lineage: dict[str, Any],
) -> WriteResult:
    """Merge a day's rows into a feature table on its row keys, within the day's partition."""
    return store.merge_partition(
        table.ref, rows, {table.partition_column: day}, keys=list(table.row_keys), lineage=lineage
    )


def _read_window(
    store: TableStore,
    table: TableRef,
    column: str,
    start: datetime.date,
    end: datetime.date,
    columns: list[str],
) -> tuple[Frame, int]:
    """Rows of `table` with `column` in `[start, end]` at one pinned version, and the version."""
    try:
        return store.read_window(table, column, start, end, columns)
    except TableMissingError as missing:
        raise dg.Failure(str(missing)) from None


def _lineage(day: datetime.date, sources: dict[str, int | None], lookback: int) -> dict[str, Any]:
    return {
        "day": day.isoformat(),
        "sources": sources,
        "lookback_days": lookback,
        "code_version": CODE_VERSION,
        "computed_at": datetime.datetime.now(datetime.UTC).isoformat(),
    }


def card_behaviour_asset(settings: Settings) -> dg.AssetsDefinition:
    """The card behaviour feature table of an environment."""

    @dg.asset(
        key=["features", "card_behaviour"],
        deps=[
            dg.AssetDep(
                ["silver", "transactions"],
                # The look-back, plus the landing days after D where D's late events land.
                partition_mapping=days_around(-CARD_LOOKBACK_DAYS, LATE_DAYS),
            )
        ],
        group_name="features",
        owners=OWNERS,
        kinds=engine_kinds(settings, ENGINE_GROUP),
        code_version=CODE_VERSION,
        # One writer of the table at a time (a manual run beside a scheduled refresh).
        pool="features_card_behaviour",
        partitions_def=daily_partitions(settings),
        metadata=feature_table_metadata(CARD_BEHAVIOUR),
        check_specs=[
            dg.AssetCheckSpec(
                "one_row_per_transaction",
                asset=["features", "card_behaviour"],
                description="The day's rows match the day's silver transactions one to one.",
                blocking=True,
            )
        ],
    )
    def card_behaviour_features(context: dg.AssetExecutionContext, lakehouse: LakehouseResource):
        """Card behaviour features: one row per card per transaction, keyed by card and time.

        Counts and amounts over 1 h, 24 h and 7 days, spending statistics, and shares of online,
        foreign and night transactions, each as of just after a transaction. A day is recomputed
        from its own transactions and the 7 days before (bounded look-back, whatever the history)
        and merged into the table on (card_id, transaction_id). Lineage (silver version read, code
        version) is stored in the Delta commit and shown here.
        """
        day = partition_day(context)
        start = day - datetime.timedelta(days=CARD_LOOKBACK_DAYS)
        columns = [
            "transaction_id",
            "card_id",
            "event_time",
            "amount",
            "channel",
            "country",
            "card_country",
            "event_date",
        ]
        store = lakehouse.store(ENGINE_GROUP)
        window, version = _read_window(
            store, SILVER_TRANSACTIONS, "event_date", start, day, columns
        )
        with store.kept(window) as window:
            rows = nw.from_native(card_behaviour(window.to_native(), day))
            lineage = _lineage(day, {str(SILVER_TRANSACTIONS): version}, CARD_LOOKBACK_DAYS)
            written = merge_feature_day(store, CARD_BEHAVIOUR, rows, day, lineage)
            window_rows, day_transactions = store.to_polars(
                window.select(
                    nw.len().alias("rows"),
                    (nw.col("event_date") == day).cast(nw.Int64).sum().alias("day_rows"),
                )
            ).row(0)
        # Read the merged partition back: the table, not the computation, must hold one row per
        # transaction of the day.
        stored = store.to_polars(
            store.read_written(written).select(
                nw.len(),
                nw.col("transaction_id").n_unique().alias("transactions"),
                nw.col("card_id").n_unique().alias("cards"),
            )
        ).row(0)
        stored_rows, stored_ids, cards = stored
        return dg.MaterializeResult(
            metadata={
                **table_metadata(written, str(CARD_BEHAVIOUR.ref)),
                "lineage": dg.MetadataValue.json(lineage),
                "cards": cards,
                "lookback_rows_read": window_rows,
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="one_row_per_transaction",
                    passed=stored_rows == stored_ids == day_transactions,
                    metadata={
                        "table_rows": stored_rows,
                        "distinct_transactions": stored_ids,
                        "silver_transactions": day_transactions,
                    },
                )
            ],
        )

    return card_behaviour_features


def merchant_daily_asset(settings: Settings) -> dg.AssetsDefinition:
    """The merchant daily building-block table of an environment."""

    @dg.asset(
        key=["features", "merchant_daily"],
        deps=[
            dg.AssetDep(["silver", "transactions"], partition_mapping=days_around(0, LATE_DAYS)),
            dg.AssetDep(["silver", "labels"]),
        ],
        group_name="features",
        owners=OWNERS,
        kinds=engine_kinds(settings, ENGINE_GROUP),
        code_version=CODE_VERSION,
        # One writer of the table at a time (a manual run beside a scheduled refresh).
        pool="features_merchant_daily",
        partitions_def=daily_partitions(settings),
        metadata={
            "table": str(MERCHANT_DAILY),
            "entity_keys": dg.MetadataValue.json(["merchant_id"]),
        },
    )
    def merchant_daily_features(context: dg.AssetExecutionContext, lakehouse: LakehouseResource):
        """Per merchant and day: transactions, amount, and chargebacks reported that day.

        The daily building block of merchant risk, so that a 30-day window costs 30 small rows per
        merchant instead of 30 days of transactions. Label reports are counted on the day they are
        reported (when they became known), joined to their transaction's merchant; a re-send
        counts nothing, and a reversal of a fraud is also counted against the day that fraud was
        reported (rows with an earlier `fraud_day`), so that merchant risk takes back exactly
        the frauds it counted. Reports whose transaction is not in silver (or is older than 120
        days) are counted as `unmatched_chargebacks`.
        """
        day = partition_day(context)
        store = lakehouse.store(ENGINE_GROUP)
        rows, tx_version, label_version, chargebacks, unmatched = _merchant_day(store, day)
        lineage = _lineage(
            day, {str(SILVER_TRANSACTIONS): tx_version, str(SILVER_LABELS): label_version}, 0
        )
        written = store.merge_partition(
            MERCHANT_DAILY, rows, {"day": day}, keys=["merchant_id", "fraud_day"], lineage=lineage
        )
        return dg.MaterializeResult(
            metadata={
                **table_metadata(written, str(MERCHANT_DAILY)),
                "lineage": dg.MetadataValue.json(lineage),
                "chargebacks_reported": chargebacks,
                "unmatched_chargebacks": unmatched,
            }
        )

    return merchant_daily_features


def _merchant_day(store: TableStore, day: datetime.date):
    """The day's merchant rows, the versions read, chargebacks and unmatched ones."""
    transactions, tx_version = _read_window(
        store, SILVER_TRANSACTIONS, "event_date", day, day, ["merchant_id", "amount"]
    )
    # A chargeback refers to a transaction of the last CHARGEBACK_WINDOW_DAYS (card networks'
    # time limit), so only those days are searched: the cost does not grow with history.
    earliest = day - datetime.timedelta(days=CHARGEBACK_WINDOW_DAYS)
    day_labels, label_version = _read_window(
        store, SILVER_LABELS, "reported_date", day, day, ["transaction_id"]
    )
    # The day's reports are few: their ids filter the scans themselves, so only matching rows
    # are kept while reading (a join would read the whole window first).
    ids = store.to_polars(day_labels.select("transaction_id").unique()).to_series().to_list()
    # What a day's report changes depends on the transaction's earlier reports (a reversal of
    # a fraud, a re-send), all reported since the transaction, within the window.
    history = store.scan(SILVER_LABELS, version=label_version).filter(
        nw.col("reported_date") >= earliest,
        nw.col("reported_date") <= day,
        nw.col("transaction_id").is_in(ids),
    )
    labels = store.materialize(
        day_reports(
            history.select("transaction_id", "is_fraud", "reported_at", "reported_date"), day
        )
    )
    with store.kept(labels) as labels:
        merchants = store.materialize(
            store.scan(SILVER_TRANSACTIONS, version=tx_version)
            .filter(
                nw.col("event_date") >= earliest,
                nw.col("event_date") <= day,
                nw.col("transaction_id").is_in(ids),
            )
            .select("transaction_id", "merchant_id")
        )
        reported = labels.join(merchants, on="transaction_id", how="inner")
        rows = nw.from_native(merchant_daily(transactions.to_native(), reported.to_native(), day))
        chargebacks, matched = store.count(labels), store.count(reported)
    return rows, tx_version, label_version, chargebacks, chargebacks - matched


def merchant_risk_asset(settings: Settings) -> dg.AssetsDefinition:
    """The merchant risk feature table of an environment."""

    @dg.asset(
        key=["features", "merchant_risk"],
        deps=[
            dg.AssetDep(
                ["features", "merchant_daily"],
                partition_mapping=days_around(-(MERCHANT_WINDOW_DAYS - 1), 0),
            )
        ],
        group_name="features",
        owners=OWNERS,
        kinds=engine_kinds(settings, ENGINE_GROUP),
        code_version=CODE_VERSION,
        # One writer of the table at a time (a manual run beside a scheduled refresh).
        pool="features_merchant_risk",
        partitions_def=daily_partitions(settings),
        metadata=feature_table_metadata(MERCHANT_RISK),
    )
    def merchant_risk_features(context: dg.AssetExecutionContext, lakehouse: LakehouseResource):
        """Merchant risk features as known at the end of each day, keyed by merchant and `as_of`.

        Volume, fraud chargebacks and a smoothed fraud rate over the 30 days ending with the day,
        counting only chargebacks reported by its end, each transaction by its label then (a
        fraud reversed by then is taken back); `as_of` is the following midnight, so a
        training event never sees a label reported after it. Merged into the table on merchant_id
        within the day's partition, which the daily run after midnight publishes.
        """
        day = partition_day(context)
        start = day - datetime.timedelta(days=MERCHANT_WINDOW_DAYS - 1)
        columns = [
            "merchant_id",
            "day",
            "fraud_day",
            "transactions",
            "fraud_reported",
            "chargebacks_reported",
            "fraud_reversed",
        ]
        store = lakehouse.store(ENGINE_GROUP)
        if store.exists(MERCHANT_DAILY):
            daily, version = _read_window(store, MERCHANT_DAILY, "day", start, day, columns)
        else:
            daily, version = (
                store.empty(
                    {
                        "merchant_id": pl.String,
                        "day": pl.Date,
                        "fraud_day": pl.Date,
                        "transactions": pl.Int64,
                        "fraud_reported": pl.Int64,
                        "chargebacks_reported": pl.Int64,
                        "fraud_reversed": pl.Int64,
                    }
                ),
                None,
            )
        rows = nw.from_native(merchant_risk(daily.to_native(), day))
        lineage = _lineage(day, {str(MERCHANT_DAILY): version}, MERCHANT_WINDOW_DAYS)
        written = merge_feature_day(store, MERCHANT_RISK, rows, day, lineage)
        days_in_window = int(store.to_polars(daily.select(nw.col("day").n_unique())).item())
        return dg.MaterializeResult(
            metadata={
                **table_metadata(written, str(MERCHANT_RISK.ref)),
                "lineage": dg.MetadataValue.json(lineage),
                "merchants": written.rows_written,
                "days_in_window": days_in_window,
            }
        )

    return merchant_risk_features


def feature_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    """The feature assets of an environment."""
    return [
        card_behaviour_asset(settings),
        merchant_daily_asset(settings),
        merchant_risk_asset(settings),
    ]
