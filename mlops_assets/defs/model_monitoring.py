"""Monitoring generated for the declared models beside the primary one.

The primary model (the fraud detector) is monitored by `defs.monitoring`, whose tables and
drift sensor drive the closed loop. Every other declared model gets, from its declaration,
`monitoring/<name>/drift_metrics` (each feature and the score of its day's predictions against
its version's training reference and against the previous day) and
`monitoring/<name>/performance` (precision, recall, PR-AUC as labels arrive), in its own
tables (`monitoring/<name>__drift_metrics`, `__performance`, `__reference`).
"""

import datetime
import json

import dagster as dg
import narwhals as nw
import polars as pl

from mlops_assets.defs.metadata import table_metadata
from mlops_assets.defs.ml import keys, label_horizon, polars_lazy
from mlops_assets.defs.partitions import daily_partitions, days_around, partition_day
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.store import TableMissingError
from mlops_assets.models.declaration import MODELS, ModelDeclaration, primary
from mlops_assets.serving.inference_log import INFERENCE_LOG
from mlops_assets.settings import Settings, use_mlflow_store

OWNERS = ["team:ml-platform"]
# Fewer previous-day rows than this give no meaningful comparison.
MIN_WINDOW_ROWS = 1000
SILVER_LABELS = TableRef("silver", "labels")
# The table store group of the monitoring assets (polars and delta-rs).
GROUP = "monitoring"


def tables(model: ModelDeclaration) -> dict[str, TableRef]:
    """A model's monitoring tables: `reference`, `drift_metrics`, `performance`."""
    return {
        name: TableRef("monitoring", f"{model.name}__{name}")
        for name in ("reference", "drift_metrics", "performance")
    }


def _predictions(lakehouse: LakehouseResource, registered: str, day: datetime.date):
    from mlops_assets.monitoring.windows import window_predictions

    store = lakehouse.store(GROUP)
    if not store.exists(INFERENCE_LOG):
        raise dg.Failure("serving/inference_log holds no predictions yet: score a day first")
    log = store.scan(INFERENCE_LOG).filter(nw.col("model_name") == registered)
    return window_predictions(polars_lazy(log), day)


def _reference(lakehouse: LakehouseResource, model: ModelDeclaration, loaded) -> pl.DataFrame:
    """A version's training reference, built once from its own training set and kept."""
    from mlops_assets.models.deploy import mlflow_client
    from mlops_assets.monitoring.reference import (
        SPLIT_TAG,
        ReferenceSource,
        build_reference,
        whole_day_start,
    )

    store = lakehouse.store(GROUP)
    reference = tables(model)["reference"]
    if store.exists(reference):
        cached = store.materialize(
            store.read_partition(reference, {"model_version": loaded.version})
        ).to_native()
        if cached.height:
            return cached
    client = mlflow_client(lakehouse.settings)
    run = client.get_run(client.get_model_version(loaded.name, loaded.version).run_id)
    table = keys(model).table
    inputs = json.loads(run.data.tags.get("mlops.inputs", "{}"))
    if str(table) not in inputs:
        raise dg.Failure(
            f"{loaded.name} version {loaded.version} records no version of {table} "
            "(tag mlops.inputs): its reference cannot be rebuilt"
        )
    source = ReferenceSource(
        model_name=loaded.name,
        model_version=loaded.version,
        training_set_version=int(inputs[str(table)]),
        window_start=whole_day_start(run.data.tags.get(SPLIT_TAG)),
    )
    training = store.materialize(store.scan(table, version=source.training_set_version)).to_native()
    rows = build_reference(training, source, loaded)
    store.replace_partition(reference, store.from_polars(rows), {"model_version": loaded.version})
    return rows


def model_monitoring_assets(
    model: ModelDeclaration, settings: Settings
) -> list[dg.AssetsDefinition]:
    """A declared model's drift and performance assets, partitioned by the environment's days."""
    batch = keys(model).batch_predictions
    refs = tables(model)
    daily = daily_partitions(settings)

    @dg.asset(
        key=["monitoring", model.name, "drift_metrics"],
        deps=[
            dg.AssetDep(batch, partition_mapping=days_around(-1, 0)),
            # Its reference: the hold-out of the training set the version trained on.
            dg.AssetDep(keys(model).training_set),
            dg.AssetDep(keys(model).trained),
        ],
        partitions_def=daily,
        group_name="monitoring",
        owners=OWNERS,
        kinds={"polars", "deltalake"},
        code_version="model-drift-metrics-1",
        metadata={"table": str(refs["drift_metrics"]), "model": model.name},
        description=(
            f"Drift of each feature and of the score of {model.name}, per day and version: "
            "the day's predictions of each version against the version's training reference "
            "(its hold-out's features and scores, kept in "
            f"`{refs['reference']}`) and against the previous day's predictions of the same "
            "version, with the same statistics as `monitoring/drift_metrics`."
        ),
    )
    def drift_metrics(
        context: dg.AssetExecutionContext, lakehouse: LakehouseResource
    ) -> dg.MaterializeResult:
        from mlops_assets.monitoring.windows import drift_rows, feature_share, prediction_score
        from mlops_assets.serving.model import load_serving_model

        day = partition_day(context)
        registered = model.registered_name(lakehouse.settings.env)
        current = _predictions(lakehouse, registered, day)
        if not current.height:
            raise dg.Failure(f"no predictions of {registered} for {day}: score the day first")
        previous = _predictions(lakehouse, registered, day - datetime.timedelta(days=1))
        use_mlflow_store(lakehouse.settings.mlflow_uri)
        frames, summaries = [], {}
        for version in sorted(current.get_column("model_version").unique().to_list(), key=int):
            loaded = load_serving_model(registered, version, alias="monitoring")
            columns = [*loaded.spec.feature_columns, "score"]
            window = current.filter(pl.col("model_version") == version).select(columns)
            reference = _reference(lakehouse, model, loaded).select(columns).cast(window.schema)
            rows, result = drift_rows(
                reference, window, columns, day=day, model_version=version, baseline="training"
            )
            frames.append(rows)
            summaries[version] = {
                "rows": window.height,
                "drifted_share": feature_share(result),
                "prediction_drift": prediction_score(result),
            }
            before = previous.filter(pl.col("model_version") == version).select(columns)
            if before.height >= MIN_WINDOW_ROWS:
                rows, result = drift_rows(
                    before, window, columns, day=day, model_version=version, baseline="previous_day"
                )
                frames.append(rows)
        store = lakehouse.store(GROUP)
        written = store.replace_partition(
            refs["drift_metrics"], store.from_polars(pl.concat(frames)), {"day": day}
        )
        latest = max(summaries, key=int)
        return dg.MaterializeResult(
            metadata={
                **table_metadata(written, str(refs["drift_metrics"])),
                "model": registered,
                "model_version": latest,
                "predictions": summaries[latest]["rows"],
                "drifted_share": summaries[latest]["drifted_share"],
                "prediction_drift": summaries[latest]["prediction_drift"],
                "by_version": dg.MetadataValue.json(summaries),
            }
        )

    @dg.asset(
        key=["monitoring", model.name, "performance"],
        deps=[
            dg.AssetDep(batch),
            dg.AssetDep(["silver", "labels"], partition_mapping=days_around(0, 7)),
        ],
        partitions_def=daily,
        group_name="monitoring",
        owners=OWNERS,
        kinds={"polars", "deltalake"},
        code_version="model-performance-1",
        metadata={"table": str(refs["performance"]), "model": model.name},
        description=(
            f"Precision, recall, PR-AUC and fraud caught of {model.name}'s predictions of a "
            "day, per version, with the labels known so far: a transaction is fraud once a "
            "chargeback names it and legitimate once older than the model's declared label "
            "maturity without one. The day's row is replaced each time; `mature` says whether "
            "every label can be known."
        ),
    )
    def performance(
        context: dg.AssetExecutionContext, lakehouse: LakehouseResource
    ) -> dg.MaterializeResult:
        from mlops_assets.monitoring.performance import performance_by
        from mlops_assets.monitoring.windows import one_per_transaction, with_labels

        day = partition_day(context)
        registered = model.registered_name(lakehouse.settings.env)
        current = _predictions(lakehouse, registered, day)
        if not current.height:
            raise dg.Failure(f"no predictions of {registered} for {day}: score the day first")
        store = lakehouse.store(GROUP)
        try:
            labels = store.scan(SILVER_LABELS)
        except TableMissingError as missing:
            raise dg.Failure(str(missing)) from None
        chargebacks = store.materialize(
            labels.select("transaction_id", "is_fraud", "reported_at")
        ).to_native()
        horizon = label_horizon(lakehouse)
        maturity = model.windows.label_maturity_days
        labelled = with_labels(one_per_transaction(current), chargebacks, horizon, maturity)
        table = performance_by(labelled, ["model_version"], amount="amount")
        mature_at = datetime.datetime.combine(
            day + datetime.timedelta(days=1 + maturity), datetime.time(), datetime.UTC
        )
        table = table.select(
            pl.lit(day).alias("day"),
            pl.all(),
            pl.lit(horizon).cast(pl.Datetime("us", "UTC")).alias("label_horizon"),
            pl.lit(horizon >= mature_at).alias("mature"),
        )
        written = store.replace_partition(
            refs["performance"], store.from_polars(table), {"day": day}
        )
        latest = table.sort(pl.col("model_version").cast(pl.Int64), descending=True).row(
            0, named=True
        )
        return dg.MaterializeResult(
            metadata={
                **table_metadata(written, str(refs["performance"])),
                "model": registered,
                "model_version": latest["model_version"],
                "mature": bool(latest["mature"]),
                "labelled": int(latest["labelled"]),
                **{
                    k: float(v)
                    for k, v in latest.items()
                    if k in ("precision", "recall", "pr_auc", "label_share") and v is not None
                },
            }
        )

    return [drift_metrics, performance]


def other_models_monitoring_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    """The drift and performance assets of every declared model but the primary one."""
    return [
        asset
        for model in MODELS.values()
        if model.name != primary().name
        for asset in model_monitoring_assets(model, settings)
    ]
