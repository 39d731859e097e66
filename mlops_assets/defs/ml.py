"""ML assets generated from the model declarations: training set, model, validation, promotion.

`model_assets(model)` builds one declared model's four assets; `ml_assets` holds those of every
model in `models.declaration.MODELS`, and `model_audit_spec` the audit table the validations
and promotions of all of them append to. The fraud detector keeps its keys (`ml/training_set`,
`ml/fraud_model`, `ml/model_validation`, `ml/champion`); other models' keys are namespaced by
model (`ml/<name>/training_set`, `ml/<name>/model`, ...).
"""

import datetime
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import narwhals as nw
import polars as pl

from mlops_assets.defs.metadata import table_metadata
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.store import TableStore
from mlops_assets.models import windows as training_windows
from mlops_assets.models.audit import AUDIT
from mlops_assets.models.declaration import FRAUD_DETECTOR, MODELS, ModelDeclaration
from mlops_assets.models.deploy import VALIDATED_IN_RUN_TAG
from mlops_assets.settings import Engine

CODE_VERSION = "training-set-2"
TRAINING_SET = TableRef("ml", "training_set")
VALIDATION_KEY = dg.AssetKey(["ml", "model_validation"])
AUDIT_KEY = dg.AssetKey(["ml", "model_audit"])
SOURCES = (TableRef("silver", "transactions"), TableRef("silver", "labels"))
SILVER_LABELS = TableRef("silver", "labels")
# The table store group of the ML assets (polars and delta-rs).
GROUP = "ml"


class ModelKeys:
    """The asset keys, table and job names of one declared model."""

    def __init__(self, model: ModelDeclaration) -> None:
        prefix = list(model.prefix)
        self.model = model
        self.training_set = dg.AssetKey([*prefix, "training_set"])
        self.trained = dg.AssetKey([*prefix, model.model_asset])
        self.validation = dg.AssetKey([*prefix, "model_validation"])
        self.champion = dg.AssetKey([*prefix, "champion"])
        self.batch_predictions = dg.AssetKey(
            ["serving", "batch_predictions"]
            if model.suffix == ""
            else ["serving", model.name, "batch_predictions"]
        )
        self.table = (
            TRAINING_SET if model.suffix == "" else TableRef("ml", f"{model.name}__training_set")
        )

    @staticmethod
    def node(key: dg.AssetKey) -> str:
        """The op name of an asset (its key joined by `__`), as run configs name it."""
        return "__".join(key.path)

    def job(self, base: str) -> str:
        """A job or sensor name of this model, e.g. `train_model` or `train_model_fraud_linear`."""
        return f"{base}{self.model.suffix}"


def keys(model: ModelDeclaration) -> ModelKeys:
    """The asset keys and names of a declared model."""
    return ModelKeys(model)


def feature_rows(
    scan: Callable[[str], pl.LazyFrame],
    start: datetime.date,
    end: datetime.date,
    model: ModelDeclaration = FRAUD_DETECTOR,
) -> dict[str, pl.DataFrame]:
    """The feature rows a point-in-time join of a model's events from `start` to `end` can use.

    Each feature table the model looks up, read back to its declared look-back (see
    `models.windows.feature_rows`).
    """
    return training_windows.feature_rows(scan, model.spec, model.windows, start, end)


def polars_lazy(frame: nw.LazyFrame[Any]) -> pl.LazyFrame:
    """A lazy frame of a polars store, as the polars lazy frame domain functions take.

    The ML, serving and monitoring groups run on the delta-rs store, whose scans are polars
    lazy frames underneath: filters and projections added later still prune files.

    Raises:
        TypeError: The frame is not a polars one (a store on another engine).
    """
    native = frame.to_native()
    if not isinstance(native, pl.LazyFrame):
        raise TypeError(
            f"expected a polars lazy frame from the delta-rs store, got {type(native).__name__}"
        )
    return native


def scan_polars(store: TableStore, table: TableRef, version: int | None = None) -> pl.LazyFrame:
    """A table (at `version`) of a polars store as a polars lazy frame.

    Raises:
        TableMissingError: The table does not exist.
    """
    return polars_lazy(store.scan(table, version=version))


def spark_training_rows(
    lakehouse: LakehouseResource,
    model: ModelDeclaration,
    versions: dict[str, int | None],
    window: training_windows.Window,
    windows: training_windows.TrainingWindows,
) -> pl.DataFrame:
    """A model's training set computed on Spark (the ml group's engine set to spark).

    The same tables at the same versions as the polars path, joined on the cluster
    (`features.spark_point_in_time`); the rows come back to the driver in the polars path's
    order (event time, transaction id) for the delta-rs write the trainer reads.
    """
    from mlops_assets.features import spark_point_in_time as spark_pit

    store = lakehouse.spark_store()

    def scan(name: str) -> Any:
        layer, table = name.split("/")
        return store.scan(TableRef(layer, table), version=versions[name]).to_native()

    events = spark_pit.labelled_events(
        scan("silver/transactions"), scan("silver/labels"), window, model.spec.request_fields
    )
    tables = spark_pit.feature_rows(scan, model.spec, windows, window.start, window.end)
    rows = spark_pit.training_set(events, tables, model.spec)
    return pl.from_arrow(rows.toArrow()).sort("event_time", "transaction_id")


def label_horizon(lakehouse: LakehouseResource) -> datetime.datetime:
    """What is known about labels: the end of the latest landing day of chargebacks (or now)."""
    store = lakehouse.store(GROUP)
    now = datetime.datetime.now(datetime.UTC)
    if not store.exists(SILVER_LABELS):
        return now
    latest = store.to_polars(store.scan(SILVER_LABELS).select(nw.col("landing_date").max()))
    return training_windows.label_horizon(latest.item(), now)


class TrainingSetConfig(dg.Config):
    """Which events a training set holds (empty fields take the model's declared windows).

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
    days: int | None = None
    label_cutoff: str = ""
    label_maturity_days: int | None = None


class TrainingConfig(dg.Config):
    """Seed, split and hyper-parameters of a training run.

    Attributes:
        seed: Random seed of the model (same data, seed and code give the same metrics).
        holdout_fraction: Share of the most recent events held out for evaluation.
        params: Hyper-parameters replacing the model's declared ones (by name).
    """

    seed: int = 7
    holdout_fraction: float = 0.2
    params: dict[str, float] = {}


class ValidationConfig(dg.Config):
    """Which version to validate and the gates it must clear (empty: the declared gates).

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
    mode: str | None = None
    min_pr_auc: float | None = None
    min_recall_at_1pct_fpr: float | None = None
    max_pr_auc_drop: float | None = None
    max_latency_ms: float | None = None


class PromotionConfig(dg.Config):
    """Which version to promote.

    Attributes:
        version: The version to make champion; the current challenger when empty.
        why: The reason written to the registry and the audit table.
    """

    version: str = ""
    why: str = "passed validation against the champion"


def _audit_event(model: ModelDeclaration, event: str) -> dg.AssetMaterialization:
    """The audit rows a step appended, on `ml/model_audit`'s timeline (lineage).

    Yielded after the step's own result, so a node's first materialization stays its asset's.
    """
    return dg.AssetMaterialization(
        asset_key=AUDIT_KEY,
        description=f"{model.name}: {event}",
        metadata={"model": model.name, "event": event, "table": str(AUDIT)},
    )


def model_assets(model: ModelDeclaration) -> list[dg.AssetsDefinition]:
    """A declared model's training set, trained model, validation and promotion assets.

    Args:
        model: The declaration; its windows, hyper-parameters and gates are the configs'
            defaults.

    Returns:
        The four assets, in lineage order.
    """
    k = keys(model)
    registered = f"<env>.{model.name}"
    feature_keys = [dg.AssetKey(["features", t]) for t in _tables(model)]

    @dg.asset(
        key=k.training_set,
        deps=[
            *[
                dg.AssetDep(
                    dg.AssetKey([ref.layer, ref.name]), partition_mapping=dg.AllPartitionMapping()
                )
                for ref in SOURCES
            ],
            *[dg.AssetDep(key, partition_mapping=dg.AllPartitionMapping()) for key in feature_keys],
        ],
        group_name="ml",
        owners=list(model.owners),
        kinds={"polars", "deltalake"},
        code_version=CODE_VERSION,
        metadata={
            "table": str(k.table),
            "model": model.name,
            "feature_spec": model.spec.to_json(),
            "windows": dg.MetadataValue.json(model.windows.to_dict()),
        },
        description=(
            f"Labelled transactions joined to the features known strictly before each of "
            f"them: the training set of {model.name} (its declared feature spec and windows). "
            "Every transaction of the window gets `is_fraud` (a fraud chargeback reported by "
            "the label cutoff); events whose labels are not mature at the cutoff are left "
            "out. The source versions read, the window, the cutoff and the spec are recorded "
            "as lineage; the same inputs give the same rows in the same order."
        ),
    )
    def training_set(
        config: TrainingSetConfig, lakehouse: LakehouseResource
    ) -> dg.MaterializeResult:
        store = lakehouse.store(GROUP)
        refs = [*SOURCES, *(TableRef("features", t) for t in _tables(model))]
        versions = {str(ref): store.version(ref) for ref in refs}
        missing = [name for name, version in versions.items() if version is None]
        if missing:
            raise dg.Failure(
                f"the training set of {model.name} needs {', '.join(missing)}: "
                "materialize them first"
            )

        def scan(name: str) -> pl.LazyFrame:
            layer, table = name.split("/")
            return scan_polars(store, TableRef(layer, table), version=versions[name])

        try:
            windows = model.windows.replace(
                days=config.days, label_maturity_days=config.label_maturity_days
            )
            cutoff = (
                training_windows.parse_cutoff(config.label_cutoff)
                if config.label_cutoff
                else label_horizon(lakehouse)
            )
            end_date = datetime.date.fromisoformat(config.end_date) if config.end_date else None
            latest = scan("silver/transactions").select(pl.col("event_date").max()).collect().item()
            window = training_windows.resolve_window(
                windows, cutoff=cutoff, latest_event_day=latest, end_date=end_date
            )
        except ValueError as error:
            raise dg.Failure(f"{model.name} training set: {error}") from None
        if lakehouse.engine_for(GROUP) is Engine.SPARK:
            rows = spark_training_rows(lakehouse, model, versions, window, windows)
        else:
            events = training_windows.labelled_events(
                scan("silver/transactions"),
                scan("silver/labels"),
                window,
                model.spec.request_fields,
            )
            tables = training_windows.feature_rows(
                scan, model.spec, windows, window.start, window.end
            )
            rows = model.spec.training_set(events, tables)
        lineage = {
            "sources": versions,
            "model": model.name,
            "window": [window.start.isoformat(), window.end.isoformat()],
            "label_cutoff": window.cutoff.isoformat(),
            "label_maturity_days": windows.label_maturity_days,
            "windows": windows.to_dict(),
            "feature_spec": model.spec.to_dict(),
            "code_version": CODE_VERSION,
        }
        written = store.overwrite(k.table, store.from_polars(rows), lineage=lineage)
        frauds = int(rows.get_column("is_fraud").sum())
        card_time = next(
            (lk.time_column for lk in model.spec.lookups if lk.table == "card_behaviour"), None
        )
        return dg.MaterializeResult(
            metadata={
                **table_metadata(written, str(k.table)),
                "lineage": dg.MetadataValue.json(lineage),
                "events": rows.height,
                "fraud_events": frauds,
                "fraud_rate": frauds / rows.height if rows.height else 0.0,
                "window": f"{window.start} .. {window.end}",
                **(
                    {"events_without_card_history": int(rows.get_column(card_time).null_count())}
                    if card_time
                    else {}
                ),
            }
        )

    @dg.asset(
        key=k.trained,
        deps=[dg.AssetDep(k.training_set)],
        group_name="ml",
        owners=list(model.owners),
        kinds={"scikitlearn", "mlflow"},
        code_version=f"{model.name}-model-1",
        metadata={"model": model.name, "declaration": dg.MetadataValue.json(model.summary())},
        description=(
            f"{model.description} Trained on the earlier events of its training set and "
            "evaluated on the most recent ones (PR-AUC, recall at a 1 % false-positive rate, "
            "ROC-AUC, Brier score). The MLflow run records the parameters, the metrics, the "
            "Delta version of the training set, the feature spec, the git commit and the "
            "Dagster run id; the model is logged with its signature, an input example and "
            f"explicit requirements, and registered as a new version (stage None) of "
            f"`{registered}`."
        ),
    )
    def trained(
        context: dg.AssetExecutionContext, config: TrainingConfig, lakehouse: LakehouseResource
    ) -> dg.MaterializeResult:
        from mlops_assets.models.registry import log_and_register
        from mlops_assets.models.training import train

        store = lakehouse.store(GROUP)
        version = store.version(k.table)
        if version is None:
            raise dg.Failure(f"{k.table} does not exist yet: materialize it first")
        frame = store.materialize(store.scan(k.table, version=version)).to_native()
        try:
            params = model.hyper_parameters(config.params)
            result = train(
                frame,
                model.spec,
                seed=config.seed,
                holdout_fraction=config.holdout_fraction,
                params=params,
                pipeline=model.pipeline,
                review_fpr=model.decision.review_fpr,
            )
        except ValueError as error:
            raise dg.Failure(f"training {model.name}: {error}") from None
        # When this run validates the new version itself, the CD sensor must not do it again.
        validated_here = k.validation in context.selected_asset_keys
        logged = log_and_register(
            lakehouse.settings,
            result,
            model.spec,
            inputs={str(k.table): version},
            example=frame.head(5),
            dagster_run_id=context.run.run_id,
            tags={VALIDATED_IN_RUN_TAG: context.run.run_id} if validated_here else None,
            model=model.name,
            fixed_threshold=model.decision.fixed,
            locations={str(k.table): lakehouse.write_uri(k.table)},
            training_frame=frame,
        )
        return dg.MaterializeResult(
            metadata={
                "model": logged.name,
                "version": logged.version,
                "mlflow_run_id": logged.run_id,
                "mlflow_uri": lakehouse.settings.mlflow_uri,
                **{name: float(value) for name, value in result.metrics.items()},
                "train_rows": result.train_rows,
                "training_set_version": version,
                "params": dg.MetadataValue.json(result.params),
                "decision_threshold": logged.decision_threshold,
                "decision_rule": model.decision.describe(),
                "logging_seconds": logged.logging_seconds,
                "registering_seconds": logged.registering_seconds,
            }
        )

    @dg.asset(
        key=k.validation,
        deps=[dg.AssetDep(k.trained), dg.AssetDep(k.training_set)],
        group_name="ml",
        owners=list(model.owners),
        kinds={"mlflow", "scikitlearn", "deltalake"},
        code_version="model-validation-2",
        # One validation or promotion at a time: the champion a verdict compares with must stay.
        pool="model_registry",
        check_specs=[
            dg.AssetCheckSpec(
                "passes_validation",
                asset=k.validation,
                blocking=True,
                description=(
                    f"The challenger of {model.name} cleared every validation check under the "
                    "mode in force."
                ),
            )
        ],
        metadata={"model": model.name, "gates": dg.MetadataValue.json(vars(model.gates))},
        description=(
            f"The challenger of {model.name} validated against its champion on the same, most "
            "recent labelled hold-out. The version (the newest by default) becomes the "
            "challenger (Staging). It must take exactly the inputs of its feature spec, with a "
            "logged signature serving can feed, clear the declared minimum PR-AUC and recall "
            "at a 1 % false-positive rate, not fall behind the champion's PR-AUC by more than "
            "the declared margin on the same events, and predict one row fast enough. The "
            "verdict is a blocking check (promotion in the same run waits on it), a tag on the "
            "version and a row in the `ml/model_audit` Delta table."
        ),
    )
    def validation(
        context: dg.AssetExecutionContext, config: ValidationConfig, lakehouse: LakehouseResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
        from mlops_assets.models.deploy import (
            lifecycle,
            newest_version,
            validate_version,
            version_trained_in_run,
        )

        settings = lakehouse.settings
        try:
            policy = model.gates.policy(
                mode=config.mode,
                min_pr_auc=config.min_pr_auc,
                min_recall_at_1pct_fpr=config.min_recall_at_1pct_fpr,
                max_pr_auc_drop=config.max_pr_auc_drop,
                max_latency_ms=config.max_latency_ms,
            )
        except ValueError as error:
            raise dg.Failure(str(error)) from error
        cycle = lifecycle(settings, model.name)
        # The version this run trained, when it trained one; else the newest.
        version = (
            config.version
            or version_trained_in_run(cycle, context.run.run_id)
            or newest_version(cycle)
        )
        if version is None:
            raise dg.Failure(f"no version of {cycle.name} is registered yet")
        store = lakehouse.store(GROUP)
        if store.version(k.table) is None:
            raise dg.Failure(f"{k.table} does not exist yet: materialize it first")
        result = validate_version(
            settings,
            version,
            store.materialize(store.scan(k.table)).to_native(),
            policy,
            who=f"dagster run {context.run.run_id[:8]}",
            dagster_run_id=context.run.run_id,
            model=model.name,
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
        yield dg.MaterializeResult(
            metadata={
                "model": cycle.name,
                "version": version,
                "mode": result.mode,
                "passed": result.passed,
                **numbers,
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="passes_validation",
                    passed=result.passed,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=(
                        f"{cycle.name} version {version}: "
                        + ("passed" if not result.failed else "failed " + ", ".join(result.failed))
                        + f" (mode {result.mode})"
                    ),
                    metadata={"model": cycle.name, "version": version, **numbers, **checks},
                )
            ],
        )
        yield _audit_event(model, f"version {version} validated")

    @dg.asset(
        key=k.champion,
        deps=[k.validation],
        group_name="ml",
        owners=list(model.owners),
        kinds={"mlflow"},
        code_version="champion-1",
        pool="model_registry",
        metadata={"model": model.name},
        description=(
            f"The production version of {model.name}: the alias `champion` moved to a "
            "validated challenger. The old champion keeps the alias `previous` (what `mlops "
            "model rollback` restores). Only a version whose recorded validation passed is "
            "promoted; the first model ever promotes once it cleared the absolute thresholds. "
            "Who, when, why and the metrics go to the version's tags and to the "
            "`ml/model_audit` table; a refusal is audited too and fails this asset."
        ),
    )
    def champion(
        context: dg.AssetExecutionContext, config: PromotionConfig, lakehouse: LakehouseResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
        from mlops_assets.models.deploy import lifecycle, promote_version, version_validated_in_run
        from mlops_assets.models.lifecycle import CHALLENGER, LifecycleError

        settings = lakehouse.settings
        cycle = lifecycle(settings, model.name)
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
                model=model.name,
            )
        except LifecycleError as error:
            context.log_event(_audit_event(model, f"promotion of version {version} refused"))
            raise dg.Failure(str(error)) from error
        validation = cycle.validation(version) or {}
        yield dg.MaterializeResult(
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
        yield _audit_event(model, f"version {version} promoted")

    return [training_set, trained, validation, champion]


def _tables(model: ModelDeclaration) -> list[str]:
    return [lookup.table for lookup in model.spec.lookups]


def audit_spec(models: list[ModelDeclaration]) -> dg.AssetSpec:
    """`ml/model_audit`: the audit table, written by every model's validation and promotion.

    The rows are appended by the lifecycle code (assets, the CD sensor's runs, `mlops model`);
    the validation and promotion assets report a materialization of it when they append, so
    the asset graph shows its lineage and its timeline the events.
    """
    return dg.AssetSpec(
        AUDIT_KEY,
        deps=[key for m in models for key in (keys(m).validation, keys(m).champion)],
        group_name="ml",
        owners=["team:ml-platform"],
        kinds={"deltalake"},
        code_version="model-audit-1",
        description=(
            "Every validation, promotion, refusal and rollback of every declared model, as "
            "Delta rows appended one commit per event: who moved which version, when, why, "
            "with which verdict and numbers (`mlops model status` shows it)."
        ),
        metadata={"table": str(AUDIT)},
    )


ml_assets = [asset for model in MODELS.values() for asset in model_assets(model)]
model_audit_spec = audit_spec(list(MODELS.values()))
