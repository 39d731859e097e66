"""The prediction summary for analysts: `gold/prediction_summary`, a day's predictions in figures.

The table is built by `transforms.prediction_summary` from the inference log and silver
(transactions for merchant category, channel and amount; label reports as of the run). It is
rebuilt whenever a day's labels may have changed: the serve run of a landing day builds the
day it just scored, and the refresh runs after each landing day (`refresh_event_days`, the
event day and the `LATE_DAYS` before it) rebuild the earlier days with the chargebacks that
landed. Any day can be materialized again by hand to count later chargebacks.
"""

import datetime
from typing import Any

import dagster as dg
import narwhals as nw
import polars as pl

from mlops_assets.defs.metadata import table_metadata
from mlops_assets.defs.partitions import LATE_DAYS, daily_partitions, days_around, partition_day
from mlops_assets.defs.resources import LakehouseResource, engine_kinds
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import WriteResult
from mlops_assets.lakehouse.store import Frame, TableStore
from mlops_assets.models.declaration import MODELS
from mlops_assets.serving.inference_log import BASE_SCHEMA, INFERENCE_LOG
from mlops_assets.settings import Settings
from mlops_assets.transforms.prediction_summary import (
    ATTRIBUTES,
    DESCRIPTIONS,
    LOG_COLUMNS,
    SCHEMA,
    TRANSACTION_COLUMNS,
    prediction_summary,
)

PREDICTION_SUMMARY = TableRef("gold", "prediction_summary")
KEY = dg.AssetKey(["gold", "prediction_summary"])
OWNERS = ["team:analytics"]
CODE_VERSION = "prediction-summary-1"
ENGINE_GROUP = "gold"
SILVER_TRANSACTIONS = TableRef("silver", "transactions")
SILVER_LABELS = TableRef("silver", "labels")
CHECK = "summary_matches_inference_log"
COUNTS = ("scored", "flagged", "labelled", "fraud_caught", "fraud_missed", "without_transaction")
AMOUNTS = ("amount_scored", "amount_flagged", "fraud_amount_caught", "fraud_amount_missed")
LABEL_SCHEMA = {
    "transaction_id": pl.String,
    "is_fraud": pl.Boolean,
    "reported_at": pl.Datetime("us", "UTC"),
}


def column_schema() -> dg.TableSchema:
    """The table's columns, with their types and meanings, for the UI's Columns panel."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, str(dtype), description=DESCRIPTIONS[name])
            for name, dtype in SCHEMA.items()
        ]
    )


def _log_of_day(store: TableStore, day: datetime.date) -> Frame:
    """The inference log's rows of an event day (none when nothing was scored yet)."""
    if not store.exists(INFERENCE_LOG):
        schema = {name: BASE_SCHEMA[name] for name in LOG_COLUMNS}
        return store.empty(schema)
    log = store.scan(INFERENCE_LOG)
    present = set(log.collect_schema().names())
    carried = [c for c in ATTRIBUTES if c in present]
    return log.filter(nw.col("day") == day).select(*LOG_COLUMNS, *carried)


def build_day(
    store: TableStore, day: datetime.date, at: datetime.datetime
) -> tuple[WriteResult, dict[str, Any]]:
    """Summarize one event day's predictions into `gold/prediction_summary`.

    Args:
        store: The gold group's table store.
        day: The event day (the partition).
        at: Labels reported by this instant count.

    Returns:
        The write, and the figures the metadata and the check report: totals of every count
        and amount, the model versions, and the log's own count of distinct predictions.
    """
    log = store.materialize(_log_of_day(store, day))
    transactions = (
        store.scan(SILVER_TRANSACTIONS)
        .filter(
            # Events of a day land on that day or up to LATE_DAYS later: the partitions read.
            nw.col("landing_date") >= day,
            nw.col("landing_date") <= day + datetime.timedelta(days=LATE_DAYS),
            nw.col("event_date") == day,
        )
        .select(*TRANSACTION_COLUMNS)
        if store.exists(SILVER_TRANSACTIONS)
        else store.empty(
            {
                "transaction_id": pl.String,
                "merchant_category": pl.String,
                "channel": pl.String,
                "amount": pl.Float64,
            }
        )
    )
    labels = (
        store.scan(SILVER_LABELS).select(*LABEL_SCHEMA)
        if store.exists(SILVER_LABELS)
        else store.empty(LABEL_SCHEMA)
    )
    summary = prediction_summary(
        log, store.materialize(transactions), store.materialize(labels), at
    )
    written = store.replace_partition(PREDICTION_SUMMARY, summary, {"day": day})
    stored = store.written(summary, written)
    totals = store.to_polars(
        stored.select(
            *(nw.col(c).sum().fill_null(0).alias(c) for c in (*COUNTS, *AMOUNTS)),
            (nw.col("fraud_caught") > nw.col("flagged")).cast(nw.Int64).sum().alias("_bad1"),
            (nw.col("fraud_caught") + nw.col("fraud_missed") > nw.col("labelled"))
            .cast(nw.Int64)
            .sum()
            .alias("_bad2"),
            (nw.col("labelled") > nw.col("scored")).cast(nw.Int64).sum().alias("_bad3"),
            (nw.col("flagged") > nw.col("scored")).cast(nw.Int64).sum().alias("_bad4"),
        )
    ).row(0, named=True)
    versions = store.to_polars(
        stored.group_by("model_name", "model_version").agg(nw.col("scored").sum())
    )
    # The log's own count, independent of the summary: distinct (model, version, transaction)
    # of the day's `ok` predictions.
    distinct = store.to_polars(
        log.filter(nw.col("status") == "ok")
        .with_columns(
            nw.when(nw.col("transaction_id").is_null())
            .then(nw.col("request_id"))
            .otherwise(nw.col("transaction_id"))
            .alias("_key")
        )
        .select("model_name", "model_version", "_key")
        .unique()
        .group_by("model_name", "model_version")
        .agg(nw.len().alias("predictions"))
    )
    figures: dict[str, Any] = {
        **{c: int(totals[c] or 0) for c in COUNTS},
        **{c: float(totals[c] or 0.0) for c in AMOUNTS},
        "inconsistent_rows": sum(int(totals[f"_bad{i}"] or 0) for i in range(1, 5)),
        "by_version": {
            f"{row['model_name']} v{row['model_version']}": int(row["scored"])
            for row in versions.sort("model_name", "model_version").iter_rows(named=True)
        },
        "log_predictions": {
            f"{row['model_name']} v{row['model_version']}": int(row["predictions"])
            for row in distinct.sort("model_name", "model_version").iter_rows(named=True)
        },
    }
    return written, figures


def prediction_summary_spec(settings: Settings) -> dg.AssetsDefinition:
    """The gold prediction summary of an environment, partitioned by event day."""
    from mlops_assets.defs.ml import keys

    @dg.asset(
        key=KEY,
        deps=[
            *(dg.AssetDep(keys(model).batch_predictions) for model in MODELS.values()),
            dg.AssetDep(["serving", "stream_predictions"]),
            # A day's events keep landing for a few days after it (late events).
            dg.AssetDep(["silver", "transactions"], partition_mapping=days_around(0, LATE_DAYS)),
            # Chargebacks of a day arrive on later days: every report known counts.
            dg.AssetDep(["silver", "labels"], partition_mapping=dg.AllPartitionMapping()),
        ],
        group_name="gold",
        owners=OWNERS,
        kinds=engine_kinds(settings, ENGINE_GROUP),
        code_version=CODE_VERSION,
        # One writer of the table at a time (a refresh beside a serve run of the same day).
        pool="gold_prediction_summary",
        partitions_def=daily_partitions(settings),
        metadata={
            "table": str(PREDICTION_SUMMARY),
            "schema_policy": "strict",
            "dagster/column_schema": column_schema(),
        },
        check_specs=[
            dg.AssetCheckSpec(
                CHECK,
                asset=KEY,
                description=(
                    "Each model version's scored count equals its distinct predictions in the "
                    "inference log for the day, and every row holds caught <= flagged <= "
                    "scored and caught + missed <= labelled <= scored."
                ),
            )
        ],
    )
    def prediction_summary_asset(context: dg.AssetExecutionContext, lakehouse: LakehouseResource):
        """What the models did with a day's transactions, for analysts.

        One row per event day (UTC), model, model version, merchant category and channel:
        transactions scored, flagged, labelled, confirmed frauds caught and missed, and their
        amounts (scored, flagged, fraud caught, fraud missed), with the mean score. A fraud is
        confirmed by its label as of the run (its latest chargeback report by then; a
        reversed fraud is not fraud), so materializing a day again after more chargebacks
        landed updates it; the refresh runs after each landing day do so for the days it
        touched. Reads `serving/inference_log` and silver transactions and labels.
        """
        day = partition_day(context)
        at = datetime.datetime.now(datetime.UTC)
        written, figures = build_day(lakehouse.store(ENGINE_GROUP), day, at)
        if figures["scored"] == 0:
            context.log.info(f"no predictions for {day} in serving/inference_log yet")
        scored = figures["scored"]
        frauds = figures["fraud_caught"] + figures["fraud_missed"]
        yield dg.MaterializeResult(
            metadata={
                **table_metadata(written, str(PREDICTION_SUMMARY)),
                "dagster/column_schema": column_schema(),
                "labels_as_of": at.isoformat(),
                **{name: figures[name] for name in (*COUNTS, *AMOUNTS)},
                "flagged_share": figures["flagged"] / scored if scored else 0.0,
                "fraud_caught_share": figures["fraud_caught"] / frauds if frauds else 0.0,
                "by_version": dg.MetadataValue.json(figures["by_version"]),
            }
        )
        matches = figures["by_version"] == figures["log_predictions"]
        yield dg.AssetCheckResult(
            check_name=CHECK,
            asset_key=KEY,
            passed=matches and figures["inconsistent_rows"] == 0,
            metadata={
                "summary_scored": dg.MetadataValue.json(figures["by_version"]),
                "log_predictions": dg.MetadataValue.json(figures["log_predictions"]),
                "inconsistent_rows": figures["inconsistent_rows"],
            },
        )

    return prediction_summary_asset


def prediction_summary_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    """The prediction summary assets of an environment."""
    return [prediction_summary_spec(settings)]
