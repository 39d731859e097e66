"""ML assets: the point-in-time training set built from the feature tables."""

import datetime

import dagster as dg
import polars as pl

from mlops_assets.defs.metadata import table_metadata
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import overwrite_table, scan_table, table_version

CODE_VERSION = "training-set-1"
TRAINING_SET = TableRef("ml", "training_set")


class TrainingSetConfig(dg.Config):
    """Which events a training set holds.

    Attributes:
        end_date: Last event day (ISO date); the latest day with mature labels when empty.
        days: Event days in the set, ending at `end_date`.
        label_cutoff: Labels reported up to this instant count (ISO 8601 with a time zone);
            now when empty.
        label_maturity_days: Only events at least this old at the cutoff are kept, so their
            chargebacks have had time to arrive (unlabelled recent fraud would be learnt as
            legitimate).
    """

    end_date: str = ""
    days: int = 28
    label_cutoff: str = ""
    label_maturity_days: int = 3


@dg.asset(
    key=["ml", "training_set"],
    deps=[
        dg.AssetDep(["silver", "transactions"], partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(["silver", "labels"], partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(["features", "card_behaviour"], partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(["features", "merchant_risk"], partition_mapping=dg.AllPartitionMapping()),
    ],
    group_name="ml",
    owners=["team:ml-platform"],
    kinds={"polars", "delta"},
    code_version=CODE_VERSION,
    metadata={"table": str(TRAINING_SET), "feature_spec": FRAUD_SPEC.to_json()},
)
def training_set(config: TrainingSetConfig, lakehouse: LakehouseResource) -> dg.MaterializeResult:
    """Labelled transactions joined to the features known strictly before each of them.

    Every transaction of the window gets `is_fraud` (a fraud chargeback reported by the label
    cutoff) and the features of the fraud detector's feature spec: card behaviour and merchant
    risk as of just before the transaction, and request-time features. The source versions
    read, the window, the cutoff and the spec are recorded as lineage; the same inputs give
    the same rows in the same order.
    """
    versions = {
        str(ref): table_version(lakehouse.read_uri(ref))
        for ref in (
            TableRef("silver", "transactions"),
            TableRef("silver", "labels"),
            TableRef("features", "card_behaviour"),
            TableRef("features", "merchant_risk"),
        )
    }
    missing = [name for name, version in versions.items() if version is None]
    if missing:
        raise dg.Failure(f"the training set needs {', '.join(missing)}: materialize them first")

    def scan(name: str) -> pl.LazyFrame:
        layer, table = name.split("/")
        return scan_table(lakehouse.read_uri(TableRef(layer, table)), version=versions[name])

    cutoff = (
        datetime.datetime.fromisoformat(config.label_cutoff)
        if config.label_cutoff
        else datetime.datetime.now(datetime.UTC)
    )
    if cutoff.tzinfo is None:
        raise dg.Failure(f"label_cutoff {config.label_cutoff!r} needs a time zone, e.g. +00:00")
    if config.days < 1 or config.label_maturity_days < 0:
        raise dg.Failure("days must be at least 1 and label_maturity_days at least 0")
    mature_until = cutoff - datetime.timedelta(days=config.label_maturity_days)
    latest = scan("silver/transactions").select(pl.col("event_date").max()).collect().item()
    end = (
        datetime.date.fromisoformat(config.end_date)
        if config.end_date
        else min(latest, mature_until.date())
    )
    if end > mature_until.date():
        raise dg.Failure(
            f"end_date {end} is after {mature_until.date()}, the last day whose labels are "
            f"{config.label_maturity_days} days mature at the cutoff {cutoff.isoformat()}"
        )
    start = end - datetime.timedelta(days=config.days - 1)
    fraud = (
        scan("silver/labels")
        .filter(pl.col("is_fraud"), pl.col("reported_at") <= cutoff)
        .select("transaction_id", pl.lit(True).alias("is_fraud"))
        .unique("transaction_id")
    )
    events = (
        scan("silver/transactions")
        .filter(pl.col("event_date").is_between(start, end), pl.col("event_time") <= mature_until)
        .select(*FRAUD_SPEC.request_fields, "event_date")
        .join(fraud, on="transaction_id", how="left")
        .with_columns(pl.col("is_fraud").fill_null(False))
        .sort("event_time", "transaction_id")
        .collect()
    )
    tables = {
        "card_behaviour": scan("features/card_behaviour")
        .filter(pl.col("event_date").is_between(start - datetime.timedelta(days=30), end))
        .collect(),
        "merchant_risk": scan("features/merchant_risk")
        .filter(pl.col("day").is_between(start - datetime.timedelta(days=4), end))
        .collect(),
    }
    rows = FRAUD_SPEC.training_set(events, tables)
    lineage = {
        "sources": versions,
        "window": [start.isoformat(), end.isoformat()],
        "label_cutoff": cutoff.isoformat(),
        "label_maturity_days": config.label_maturity_days,
        "feature_spec": FRAUD_SPEC.to_dict(),
        "code_version": CODE_VERSION,
    }
    written = overwrite_table(
        lakehouse.write_uri(TRAINING_SET), rows, table=str(TRAINING_SET), lineage=lineage
    )
    frauds = int(rows.get_column("is_fraud").sum())
    return dg.MaterializeResult(
        metadata={
            **table_metadata(written, str(TRAINING_SET)),
            "lineage": dg.MetadataValue.json(lineage),
            "events": rows.height,
            "fraud_events": frauds,
            "fraud_rate": frauds / rows.height if rows.height else 0.0,
            "window": f"{start} .. {end}",
            "events_without_card_history": int(
                rows.get_column("card_behaviour__feature_time").null_count()
            ),
        }
    )


class TrainingConfig(dg.Config):
    """Hyper-parameters and split of a training run.

    Attributes:
        seed: Random seed of the model (same data, seed and code give the same metrics).
        holdout_fraction: Share of the most recent events held out for evaluation.
        max_iter: Boosting iterations.
        learning_rate: Boosting learning rate.
    """

    seed: int = 7
    holdout_fraction: float = 0.2
    max_iter: int = 200
    learning_rate: float = 0.1


@dg.asset(
    key=["ml", "fraud_model"],
    deps=[dg.AssetDep(["ml", "training_set"])],
    group_name="ml",
    owners=["team:ml-platform"],
    kinds={"sklearn", "mlflow"},
    code_version="fraud-model-1",
)
def fraud_model(
    context: dg.AssetExecutionContext, config: TrainingConfig, lakehouse: LakehouseResource
) -> dg.MaterializeResult:
    """The fraud detector: gradient-boosted trees trained on the point-in-time training set.

    Trained on the earlier events and evaluated on the most recent ones (PR-AUC, recall at a
    1 % false-positive rate, ROC-AUC, Brier score). The MLflow run records the parameters,
    the metrics, the Delta version of the training set, the feature spec, the git commit and
    the Dagster run id; the model is logged with its signature, an input example and explicit
    requirements, and registered as a new version (stage None) of `<env>.fraud_detector`.
    """
    from mlops_assets.models.registry import log_and_register
    from mlops_assets.models.training import train

    uri = lakehouse.read_uri(TRAINING_SET)
    version = table_version(uri)
    if version is None:
        raise dg.Failure(f"{TRAINING_SET} does not exist yet: materialize it first")
    frame = scan_table(uri, version=version).collect()
    result = train(
        frame,
        FRAUD_SPEC,
        seed=config.seed,
        holdout_fraction=config.holdout_fraction,
        params={"max_iter": config.max_iter, "learning_rate": config.learning_rate},
    )
    registered = log_and_register(
        lakehouse.settings,
        result,
        FRAUD_SPEC,
        inputs={str(TRAINING_SET): version},
        example=frame.head(5),
        dagster_run_id=context.run_id,
    )
    return dg.MaterializeResult(
        metadata={
            "model": registered.name,
            "version": registered.version,
            "mlflow_run_id": registered.run_id,
            "mlflow_uri": lakehouse.settings.mlflow_uri,
            **{name: float(value) for name, value in result.metrics.items()},
            "train_rows": result.train_rows,
            "training_set_version": version,
        }
    )


ml_assets = [training_set, fraud_model]
