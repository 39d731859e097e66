"""Feature assets: card behaviour and merchant risk tables, written by merge, with lineage."""

import datetime
from typing import Any

import dagster as dg
import polars as pl

from mlops_assets.defs.metadata import table_metadata
from mlops_assets.defs.partitions import DAILY, LATE_DAYS, days_around, partition_day
from mlops_assets.defs.resources import LakehouseResource, SparkResource, engine_kinds
from mlops_assets.features.registry import CARD_BEHAVIOUR, MERCHANT_RISK, FeatureTable
from mlops_assets.lakehouse import spark_io
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import (
    WriteResult,
    merge_partition,
    scan_table,
    table_exists,
    table_version,
)
from mlops_assets.settings import Engine
from mlops_assets.transforms.features import (
    CARD_LOOKBACK_DAYS,
    MERCHANT_WINDOW_DAYS,
    card_behaviour,
    merchant_daily,
    merchant_risk,
)

CODE_VERSION = "features-1"
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


def _read_window(
    lakehouse: LakehouseResource,
    table: TableRef,
    column: str,
    start: datetime.date,
    end: datetime.date,
    columns: list[str],
) -> tuple[pl.DataFrame, int | None]:
    """Rows of `table` with `column` in `[start, end]`, at one pinned version."""
    uri = lakehouse.read_uri(table)
    version = table_version(uri)
    if version is None:
        raise dg.Failure(f"{table} does not exist yet: materialize it first")
    frame = (
        scan_table(uri, version=version)
        .filter(pl.col(column).is_between(start, end))
        .select(columns)
        .collect()
    )
    return frame, version


def _read_window_spark(
    spark: Any,
    lakehouse: LakehouseResource,
    table: TableRef,
    column: str,
    start: datetime.date,
    end: datetime.date,
    columns: list[str],
) -> tuple[Any, int]:
    """`_read_window` on Spark: a lazy frame of the rows, at one pinned version."""
    from pyspark.sql import functions as F

    uri = lakehouse.read_uri(table)
    version = spark_io.table_version(spark, uri)
    if version is None:
        raise dg.Failure(f"{table} does not exist yet: materialize it first")
    frame = (
        spark_io.read_table(spark, uri, version)
        .filter(F.col(column).between(F.lit(start), F.lit(end)))
        .select(*columns)
    )
    return frame, version


def _on_spark(lakehouse: LakehouseResource) -> bool:
    return lakehouse.engine_for(ENGINE_GROUP) is Engine.SPARK


def merge_feature_day(
    lakehouse: LakehouseResource,
    table: FeatureTable,
    rows: Any,
    day: datetime.date,
    lineage: dict[str, Any],
    spark: Any = None,
) -> WriteResult:
    """Merge a day's rows into a feature table on its row keys, within the day's partition.

    `rows` is a polars frame, or a Spark frame when `spark` (the session) is given.
    """
    if spark is not None:
        return spark_io.merge_partition(
            spark,
            lakehouse.write_uri(table.ref),
            rows,
            {table.partition_column: day},
            keys=list(table.row_keys),
            table=str(table.ref),
            lineage=lineage,
        )
    return merge_partition(
        lakehouse.write_uri(table.ref),
        rows,
        {table.partition_column: day},
        keys=list(table.row_keys),
        table=str(table.ref),
        lineage=lineage,
    )


def _lineage(day: datetime.date, sources: dict[str, int | None], lookback: int) -> dict[str, Any]:
    return {
        "day": day.isoformat(),
        "sources": sources,
        "lookback_days": lookback,
        "code_version": CODE_VERSION,
        "computed_at": datetime.datetime.now(datetime.UTC).isoformat(),
    }


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
    kinds=engine_kinds(ENGINE_GROUP),
    code_version=CODE_VERSION,
    # One writer of the table at a time (a manual run beside a scheduled refresh).
    pool="features_card_behaviour",
    partitions_def=DAILY,
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
def card_behaviour_features(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource, spark: SparkResource
):
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
    if _on_spark(lakehouse):
        session = spark.session
        window, version = _read_window_spark(
            session, lakehouse, SILVER_TRANSACTIONS, "event_date", start, day, columns
        )
        window = window.cache()
        try:
            rows = card_behaviour(window, day)
            lineage = _lineage(day, {str(SILVER_TRANSACTIONS): version}, CARD_LOOKBACK_DAYS)
            written = merge_feature_day(lakehouse, CARD_BEHAVIOUR, rows, day, lineage, session)
            window_rows, day_transactions = _counts_spark(window, day)
        finally:
            window.unpersist()
        stored = _stored_rows_spark(session, written, day)
    else:
        window, version = _read_window(
            lakehouse, SILVER_TRANSACTIONS, "event_date", start, day, columns
        )
        rows = card_behaviour(window, day)
        lineage = _lineage(day, {str(SILVER_TRANSACTIONS): version}, CARD_LOOKBACK_DAYS)
        written = merge_feature_day(lakehouse, CARD_BEHAVIOUR, rows, day, lineage)
        window_rows = window.height
        day_transactions = window.filter(pl.col("event_date") == day).height
        # Read the merged partition back: the table, not the computation, must hold one row
        # per transaction of the day.
        stored = (
            scan_table(written.uri, version=written.version)
            .filter(pl.col("event_date") == day)
            .select(pl.len(), pl.col("transaction_id").n_unique(), pl.col("card_id").n_unique())
            .collect()
            .row(0)
        )
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


@dg.asset(
    key=["features", "merchant_daily"],
    deps=[
        dg.AssetDep(["silver", "transactions"], partition_mapping=days_around(0, LATE_DAYS)),
        dg.AssetDep(["silver", "labels"]),
    ],
    group_name="features",
    owners=OWNERS,
    kinds=engine_kinds(ENGINE_GROUP),
    code_version=CODE_VERSION,
    # One writer of the table at a time (a manual run beside a scheduled refresh).
    pool="features_merchant_daily",
    partitions_def=DAILY,
    metadata={"table": str(MERCHANT_DAILY), "entity_keys": dg.MetadataValue.json(["merchant_id"])},
)
def merchant_daily_features(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource, spark: SparkResource
):
    """Per merchant and day: transactions, amount, and chargebacks reported that day.

    The daily building block of merchant risk, so that a 30-day window costs 30 small rows per
    merchant instead of 30 days of transactions. Chargebacks are counted on the day they are
    reported (when they became known), joined to their transaction's merchant; chargebacks
    whose transaction is not in silver (or is older than 120 days) are counted as
    `unmatched_chargebacks`.
    """
    day = partition_day(context)
    if _on_spark(lakehouse):
        rows, tx_version, label_version, chargebacks, unmatched = _merchant_day_spark(
            spark.session, lakehouse, day
        )
    else:
        rows, tx_version, label_version, chargebacks, unmatched = _merchant_day_polars(
            lakehouse, day
        )
    lineage = _lineage(
        day, {str(SILVER_TRANSACTIONS): tx_version, str(SILVER_LABELS): label_version}, 0
    )
    if _on_spark(lakehouse):
        written = spark_io.merge_partition(
            spark.session,
            lakehouse.write_uri(MERCHANT_DAILY),
            rows,
            {"day": day},
            keys=["merchant_id"],
            table=str(MERCHANT_DAILY),
            lineage=lineage,
        )
    else:
        written = merge_partition(
            lakehouse.write_uri(MERCHANT_DAILY),
            rows,
            {"day": day},
            keys=["merchant_id"],
            table=str(MERCHANT_DAILY),
            lineage=lineage,
        )
    return dg.MaterializeResult(
        metadata={
            **table_metadata(written, str(MERCHANT_DAILY)),
            "lineage": dg.MetadataValue.json(lineage),
            "chargebacks_reported": chargebacks,
            "unmatched_chargebacks": unmatched,
        }
    )


def _merchant_day_polars(lakehouse: LakehouseResource, day: datetime.date):
    """The day's merchant rows on polars, the versions read, chargebacks and unmatched ones."""
    transactions, tx_version = _read_window(
        lakehouse, SILVER_TRANSACTIONS, "event_date", day, day, ["merchant_id", "amount"]
    )
    labels, label_version = _read_window(
        lakehouse, SILVER_LABELS, "reported_date", day, day, ["transaction_id", "is_fraud"]
    )
    ids = labels.get_column("transaction_id")
    # A chargeback refers to a transaction of the last CHARGEBACK_WINDOW_DAYS (card networks'
    # time limit), so only those days are searched: the cost does not grow with history.
    earliest = day - datetime.timedelta(days=CHARGEBACK_WINDOW_DAYS)
    merchants = (
        scan_table(lakehouse.read_uri(SILVER_TRANSACTIONS), version=tx_version)
        .filter(
            pl.col("event_date").is_between(earliest, day),
            pl.col("transaction_id").is_in(ids.implode()),
        )
        .select("transaction_id", "merchant_id")
        .collect()
    )
    reported = labels.join(merchants, on="transaction_id", how="inner")
    rows = merchant_daily(transactions, reported, day)
    return rows, tx_version, label_version, labels.height, labels.height - reported.height


def _merchant_day_spark(spark: Any, lakehouse: LakehouseResource, day: datetime.date):
    """`_merchant_day_polars` on Spark (a semi join finds the chargebacks' merchants)."""
    from pyspark.sql import functions as F

    transactions, tx_version = _read_window_spark(
        spark, lakehouse, SILVER_TRANSACTIONS, "event_date", day, day, ["merchant_id", "amount"]
    )
    labels, label_version = _read_window_spark(
        spark, lakehouse, SILVER_LABELS, "reported_date", day, day, ["transaction_id", "is_fraud"]
    )
    labels = labels.cache()
    earliest = day - datetime.timedelta(days=CHARGEBACK_WINDOW_DAYS)
    merchants = (
        spark_io.read_table(spark, lakehouse.read_uri(SILVER_TRANSACTIONS), tx_version)
        .filter(F.col("event_date").between(F.lit(earliest), F.lit(day)))
        .join(labels.select("transaction_id"), on="transaction_id", how="left_semi")
        .select("transaction_id", "merchant_id")
    )
    reported = labels.join(merchants, on="transaction_id", how="inner")
    rows = merchant_daily(transactions, reported, day)
    chargebacks, matched = labels.count(), reported.count()
    return rows, tx_version, label_version, chargebacks, chargebacks - matched


def _counts_spark(window: Any, day: datetime.date) -> tuple[int, int]:
    """Rows of a look-back window, and those of its last day."""
    from pyspark.sql import functions as F

    row = window.select(F.count(F.lit(1)), F.count_if(F.col("event_date") == F.lit(day))).collect()[
        0
    ]
    return int(row[0]), int(row[1])


def _stored_rows_spark(spark: Any, written: WriteResult, day: datetime.date) -> tuple[int, ...]:
    """Rows, distinct transactions and cards of a day in the table version a merge made."""
    from pyspark.sql import functions as F

    row = (
        spark_io.read_table(spark, written.uri)
        .filter(F.col("event_date") == F.lit(day))
        .select(
            F.count(F.lit(1)),
            F.count_distinct("transaction_id"),
            F.count_distinct("card_id"),
        )
        .collect()[0]
    )
    return int(row[0]), int(row[1]), int(row[2])


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
    kinds=engine_kinds(ENGINE_GROUP),
    code_version=CODE_VERSION,
    # One writer of the table at a time (a manual run beside a scheduled refresh).
    pool="features_merchant_risk",
    partitions_def=DAILY,
    metadata=feature_table_metadata(MERCHANT_RISK),
)
def merchant_risk_features(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource, spark: SparkResource
):
    """Merchant risk features as known at the end of each day, keyed by merchant and `as_of`.

    Volume, fraud chargebacks and a smoothed fraud rate over the 30 days ending with the day,
    counting only chargebacks reported by its end; `as_of` is the following midnight, so a
    training event never sees a label reported after it. Merged into the table on merchant_id
    within the day's partition, which the daily run after midnight publishes.
    """
    day = partition_day(context)
    uri = lakehouse.read_uri(MERCHANT_DAILY)
    start = day - datetime.timedelta(days=MERCHANT_WINDOW_DAYS - 1)
    columns = ["merchant_id", "day", "transactions", "fraud_reported", "chargebacks_reported"]
    if _on_spark(lakehouse):
        from pyspark.sql import functions as F

        session = spark.session
        if spark_io.table_exists(session, uri):
            daily, version = _read_window_spark(
                session, lakehouse, MERCHANT_DAILY, "day", start, day, columns
            )
        else:
            daily, version = (
                session.createDataFrame(
                    [],
                    "merchant_id string, day date, transactions long, fraud_reported long, "
                    "chargebacks_reported long",
                ),
                None,
            )
        rows = merchant_risk(daily, day)
        lineage = _lineage(day, {str(MERCHANT_DAILY): version}, MERCHANT_WINDOW_DAYS)
        written = merge_feature_day(lakehouse, MERCHANT_RISK, rows, day, lineage, session)
        days_in_window = daily.select(F.count_distinct("day")).collect()[0][0]
    else:
        if table_exists(uri):
            daily, version = _read_window(lakehouse, MERCHANT_DAILY, "day", start, day, columns)
        else:
            daily, version = (
                pl.DataFrame(
                    schema={
                        "merchant_id": pl.String,
                        "day": pl.Date,
                        "transactions": pl.Int64,
                        "fraud_reported": pl.Int64,
                        "chargebacks_reported": pl.Int64,
                    }
                ),
                None,
            )
        rows = merchant_risk(daily, day)
        lineage = _lineage(day, {str(MERCHANT_DAILY): version}, MERCHANT_WINDOW_DAYS)
        written = merge_feature_day(lakehouse, MERCHANT_RISK, rows, day, lineage)
        days_in_window = daily.get_column("day").n_unique()
    return dg.MaterializeResult(
        metadata={
            **table_metadata(written, str(MERCHANT_RISK.ref)),
            "lineage": dg.MetadataValue.json(lineage),
            "merchants": written.rows_written,
            "days_in_window": days_in_window,
        }
    )


feature_assets = [card_behaviour_features, merchant_daily_features, merchant_risk_features]
