"""ML assets: training set, model training, validation against the champion, promotion."""

import datetime
from collections.abc import Callable

import dagster as dg
import polars as pl

from mlops_assets.defs.metadata import table_metadata
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import overwrite_table, scan_table, table_exists, table_version
from mlops_assets.models.deploy import VALIDATED_IN_RUN_TAG

CODE_VERSION = "training-set-1"
TRAINING_SET = TableRef("ml", "training_set")
VALIDATION_KEY = dg.AssetKey(["ml", "model_validation"])


def feature_rows(
    scan: Callable[[str], pl.LazyFrame], start: datetime.date, end: datetime.date
) -> dict[str, pl.DataFrame]:
    """The feature rows a point-in-time join of events from `start` to `end` can use.

    Card behaviour rows back to the oldest a join may take (30 days: beyond the table's
    staleness limit), merchant risk rows back to four days before.
    """
    return {
        "card_behaviour": scan("features/card_behaviour")
        .filter(pl.col("event_date").is_between(start - datetime.timedelta(days=30), end))
        .collect(),
        "merchant_risk": scan("features/merchant_risk")
        .filter(pl.col("day").is_between(start - datetime.timedelta(days=4), end))
        .collect(),
    }


def label_horizon(lakehouse: LakehouseResource) -> datetime.datetime:
    """What is known about labels: the end of the latest landing day of chargebacks (or now)."""
    uri = lakehouse.read_uri(TableRef("silver", "labels"))
    now = datetime.datetime.now(datetime.UTC)
    if not table_exists(uri):
        return now
    latest = scan_table(uri).select(pl.col("landing_date").max()).collect().item()
    if latest is None:
        return now
    end = datetime.datetime.combine(
        latest + datetime.timedelta(days=1), datetime.time(), datetime.UTC
    )
    return min(now, end)


class TrainingSetConfig(dg.Config):
    """Which events a training set holds.

    Attributes:
        end_date: Last event day (ISO date); the latest day with mature labels when empty.
        days: Event days in the set, ending at `end_date`.
        label_cutoff: Labels reported up to this instant count (ISO 8601 with a time zone);
            when empty, the label horizon: the end of the latest landing day of chargebacks
            (or now, if earlier), what is known about labels.
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
        else label_horizon(lakehouse)
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
    tables = feature_rows(scan, start, end)
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
    # When this run validates the new version itself, the CD sensor must not do it again.
    validated_here = VALIDATION_KEY in context.selected_asset_keys
    registered = log_and_register(
        lakehouse.settings,
        result,
        FRAUD_SPEC,
        inputs={str(TRAINING_SET): version},
        example=frame.head(5),
        dagster_run_id=context.run.run_id,
        tags={VALIDATED_IN_RUN_TAG: context.run.run_id} if validated_here else None,
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
            "decision_threshold": registered.decision_threshold,
            "logging_seconds": registered.logging_seconds,
            "registering_seconds": registered.registering_seconds,
        }
    )


class ValidationConfig(dg.Config):
    """Which version to validate and the thresholds it must clear.

    Attributes:
        version: Registered version to validate; the newest one when empty.
        mode: `enabled` (failures block promotion), `dry_run` (failures are reported only),
            `disabled` (nothing is checked).
        min_pr_auc: Lowest acceptable PR-AUC on the hold-out.
        min_recall_at_1pct_fpr: Lowest acceptable recall at a 1 % false-positive rate.
        max_pr_auc_drop: How far below the champion's PR-AUC the challenger may be.
        max_latency_ms: Slowest acceptable median single-row prediction time.
    """

    version: str = ""
    mode: str = "enabled"
    min_pr_auc: float = 0.05
    min_recall_at_1pct_fpr: float = 0.1
    max_pr_auc_drop: float = 0.01
    max_latency_ms: float = 50.0


@dg.asset(
    key=VALIDATION_KEY,
    deps=[dg.AssetDep(["ml", "fraud_model"]), dg.AssetDep(["ml", "training_set"])],
    group_name="ml",
    owners=["team:ml-platform"],
    kinds={"mlflow", "sklearn", "delta"},
    code_version="model-validation-1",
    # One validation or promotion at a time: the champion a verdict compares with must stay.
    pool="model_registry",
    check_specs=[
        dg.AssetCheckSpec(
            "passes_validation",
            asset=VALIDATION_KEY,
            blocking=True,
            description="The challenger cleared every validation check under the mode in force.",
        )
    ],
)
def model_validation(
    context: dg.AssetExecutionContext, config: ValidationConfig, lakehouse: LakehouseResource
) -> dg.MaterializeResult:
    """The challenger validated against the champion on the same, most recent labelled hold-out.

    The version (the newest by default) becomes the challenger (Staging). It must take exactly
    the inputs of its feature spec, with a logged signature serving can feed, clear minimum
    PR-AUC and recall at a 1 % false-positive rate, not fall behind the champion's PR-AUC by
    more than a margin on the same events, and predict one row fast enough. The verdict is a
    blocking check (promotion in the same run waits on it), a tag on the version and a row in
    the `ml/model_audit` Delta table.
    """
    from mlops_assets.models.deploy import (
        lifecycle,
        newest_version,
        validate_version,
        version_trained_in_run,
    )
    from mlops_assets.models.validation import ValidationPolicy

    settings = lakehouse.settings
    try:
        policy = ValidationPolicy(
            mode=config.mode,
            min_pr_auc=config.min_pr_auc,
            min_recall_at_1pct_fpr=config.min_recall_at_1pct_fpr,
            max_pr_auc_drop=config.max_pr_auc_drop,
            max_latency_ms=config.max_latency_ms,
        )
    except ValueError as error:
        raise dg.Failure(str(error)) from error
    cycle = lifecycle(settings)
    # The version this run trained, when it trained one; else the newest.
    version = (
        config.version or version_trained_in_run(cycle, context.run.run_id) or newest_version(cycle)
    )
    if version is None:
        raise dg.Failure(f"no version of {settings.env}.fraud_detector is registered yet")
    uri = lakehouse.read_uri(TRAINING_SET)
    if table_version(uri) is None:
        raise dg.Failure(f"{TRAINING_SET} does not exist yet: materialize it first")
    result = validate_version(
        settings,
        version,
        scan_table(uri).collect(),
        policy,
        who=f"dagster run {context.run.run_id[:8]}",
        dagster_run_id=context.run.run_id,
    )
    numbers = {
        **{f"challenger_{k}": float(v) for k, v in result.metrics.items()},
        **{f"champion_{k}": float(v) for k, v in (result.champion_metrics or {}).items()},
    }
    checks = {
        c.name: dg.MetadataValue.json(
            {"passed": c.passed, "detail": c.detail, "value": c.value, "threshold": c.threshold}
        )
        for c in result.checks
    }
    return dg.MaterializeResult(
        metadata={"version": version, "mode": result.mode, "passed": result.passed, **numbers},
        check_results=[
            dg.AssetCheckResult(
                check_name="passes_validation",
                passed=result.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=(
                    f"version {version}: "
                    + ("passed" if not result.failed else "failed " + ", ".join(result.failed))
                    + f" (mode {result.mode})"
                ),
                metadata={"version": version, **numbers, **checks},
            )
        ],
    )


class PromotionConfig(dg.Config):
    """Which version to promote.

    Attributes:
        version: The version to make champion; the current challenger when empty.
        why: The reason written to the registry and the audit table.
    """

    version: str = ""
    why: str = "passed validation against the champion"


@dg.asset(
    key=["ml", "champion"],
    deps=[VALIDATION_KEY],
    group_name="ml",
    owners=["team:ml-platform"],
    kinds={"mlflow"},
    code_version="champion-1",
    pool="model_registry",
)
def champion(
    context: dg.AssetExecutionContext, config: PromotionConfig, lakehouse: LakehouseResource
) -> dg.MaterializeResult:
    """The production model: the alias `champion` moved to a validated challenger.

    The old champion keeps the alias `previous` (what `mlops model rollback` restores). Only a
    version whose recorded validation passed is promoted; the first model ever promotes once
    it cleared the absolute thresholds. Who, when, why and the metrics go to the version's
    tags and to the `ml/model_audit` table; a refusal is audited too and fails this asset.
    """
    from mlops_assets.models.deploy import lifecycle, promote_version, version_validated_in_run
    from mlops_assets.models.lifecycle import CHALLENGER, LifecycleError

    settings = lakehouse.settings
    cycle = lifecycle(settings)
    # The version this run validated, when it validated one; else the challenger.
    version = (
        config.version
        or version_validated_in_run(cycle, context.run.run_id)
        or cycle.version_of(CHALLENGER)
    )
    if version is None:
        raise dg.Failure(f"{cycle.name} has no challenger to promote; validate a version first")
    try:
        move = promote_version(
            settings,
            version,
            who=f"dagster run {context.run.run_id[:8]}",
            why=config.why,
            dagster_run_id=context.run.run_id,
        )
    except LifecycleError as error:
        raise dg.Failure(str(error)) from error
    validation = cycle.validation(version) or {}
    return dg.MaterializeResult(
        metadata={
            "model": cycle.name,
            "champion": move.version,
            "previous": move.replaced or "none",
            "model_uri": f"models:/{cycle.name}@champion",
            **{
                f"champion_{k}": float(v)
                for k, v in (validation.get("metrics") or {}).items()
                if isinstance(v, int | float)
            },
        }
    )


ml_assets = [training_set, fraud_model, model_validation, champion]
