"""Monitoring assets and the closed loop: drift, profiles, performance, reports, alerts, sensors."""

import datetime
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
import narwhals as nw
import polars as pl
import pydantic

from mlops_assets.defs.jobs import retrain_job
from mlops_assets.defs.metadata import ALERTS_KEY, alert_materialization, table_metadata
from mlops_assets.defs.ml import label_horizon, polars_lazy
from mlops_assets.defs.partitions import daily_partitions, days_around, partition_day
from mlops_assets.defs.resources import LakehouseResource, engine_kinds
from mlops_assets.defs.serving import INFERENCE_LOG
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.monitoring.drift import DriftResult
from mlops_assets.monitoring.policy import DriftPolicy
from mlops_assets.monitoring.reference import REFERENCE
from mlops_assets.monitoring.thresholds import DEFAULT as THRESHOLDS
from mlops_assets.monitoring.thresholds import Thresholds
from mlops_assets.settings import Engine, Settings, use_mlflow_store

TRAINING_SET = TableRef("ml", "training_set")
SILVER_LABELS = TableRef("silver", "labels")
# The monitoring group: its tables are on delta-rs; drift and profiles are computed on Spark
# when the group's engine is spark (`defs.spark_monitoring`).
GROUP = "monitoring"
DRIFT = TableRef("monitoring", "drift_metrics")
PROFILES = TableRef("monitoring", "profiles")
PERFORMANCE = TableRef("monitoring", "performance")
OWNERS = ["team:ml-platform"]
# Fewer previous-window rows than this give no meaningful comparison.
MIN_WINDOW_ROWS = 1000
# Columns of the inference log that are not profiled (identifiers, request and run fields).
UNPROFILED = (
    "request_id",
    "request",
    "error",
    "status",
    "day",
    "logged_at",
    "transaction_id",
    "card_id",
    "merchant_id",
    "event_time",
    "model_name",
    "model_version",
    "model_alias",
    "mode",
    "threshold",
)
REFERENCE_KEY = dg.AssetKey(["monitoring", "reference"])


# Tables written outside an asset of their own: declared here so that the lineage graph shows
# them, materialized by events of their writers.
reference_spec = dg.AssetSpec(
    key=REFERENCE_KEY,
    deps=[dg.AssetKey(["ml", "training_set"]), dg.AssetKey(["ml", "fraud_model"])],
    description=(
        "Each model version's monitoring reference: its hold-out events' features and its "
        "scores of them (`monitoring.reference`), partitioned by model_version. Built once per "
        "version by the first drift asset that needs it, which records the materialization."
    ),
    group_name="monitoring",
    owners=OWNERS,
    kinds={"polars", "deltalake"},
    code_version="monitoring-reference-1",
    metadata={"table": str(REFERENCE)},
)


class MonitoringResource(dg.ConfigurableResource):
    """Thresholds of drift, performance and retraining, and where alerts go.

    The thresholds' names, defaults and comparison rules are those of
    `monitoring.thresholds.Thresholds` (one definition of each); `thresholds()` hands them to
    the statistics, the Evidently report and the loop's policy alike. `MLOPS_MONITORING`
    overrides any field by name.

    Attributes:
        drift_share: A day has drifted when at least this share of features drifted.
        prediction_drift: A day alerts when the score distribution's drift score is at least
            this.
        min_pr_auc: A day alerts when its PR-AUC (with mature labels) is below this.
        wasserstein: Distance at or above which a numeric column drifted.
        jensenshannon: Distance at or above which a categorical column drifted.
        ks: p-value at or below which a column of a small reference drifted.
        chisquare: p-value below which a categorical column of a small reference drifted.
        z: p-value below which a binary column of a small reference drifted.
        psi_moderate: PSI at or above which a shift reads moderate.
        psi_major: PSI at or above which a shift reads major.
        min_labelled_days: Days of a drift episode with mature labels before retraining.
        label_maturity_days: Days after which a transaction without chargeback is legitimate.
        cooldown_days: Days after a retraining without another one.
        retrain_window_days: Days of events the retraining's training set spans: shorter
            than the scheduled training's, so that the drifted days weigh more.
        alert_webhook_url: Where alerts are POSTed as JSON (none when empty).
    """

    drift_share: float = THRESHOLDS.drift_share
    prediction_drift: float = THRESHOLDS.prediction_drift
    min_pr_auc: float = THRESHOLDS.min_pr_auc
    wasserstein: float = THRESHOLDS.wasserstein
    jensenshannon: float = THRESHOLDS.jensenshannon
    ks: float = THRESHOLDS.ks
    chisquare: float = THRESHOLDS.chisquare
    z: float = THRESHOLDS.z
    psi_moderate: float = THRESHOLDS.psi_moderate
    psi_major: float = THRESHOLDS.psi_major
    min_labelled_days: int = DriftPolicy.min_labelled_days
    label_maturity_days: int = THRESHOLDS.label_maturity_days
    cooldown_days: int = DriftPolicy.cooldown_days
    retrain_window_days: int = 7
    alert_webhook_url: str = ""

    @pydantic.model_validator(mode="after")
    def _valid(self) -> "MonitoringResource":
        """Refuse out-of-range thresholds when the resource is built (not at first use)."""
        self.policy()
        return self

    def thresholds(self) -> Thresholds:
        """The monitoring thresholds.

        Raises:
            ValueError: A threshold is out of range (its name and value in the message).
        """
        return Thresholds(**{name: getattr(self, name) for name in THRESHOLDS.as_dict()})

    def policy(self) -> DriftPolicy:
        """The thresholds as the loop's policy."""
        return DriftPolicy(
            thresholds=self.thresholds(),
            min_labelled_days=self.min_labelled_days,
            cooldown_days=self.cooldown_days,
        )


def load_version(lakehouse: LakehouseResource, version: str):
    """A registered version of the environment's model, loaded for scoring."""
    from mlops_assets.models.lifecycle import model_name
    from mlops_assets.serving.model import load_serving_model

    settings = lakehouse.settings
    use_mlflow_store(settings.mlflow_uri)
    return load_serving_model(model_name(settings.env), version, alias="monitoring")


def reference_rows(
    lakehouse: LakehouseResource, model, built: list[dg.AssetMaterialization]
) -> pl.DataFrame:
    """A version's reference (`monitoring.reference`): read, or built once and kept.

    Args:
        lakehouse: The lake.
        model: The loaded version.
        built: Receives a `monitoring/reference` materialization when the reference is built
            now; the asset yields it after its own result.
    """
    from mlops_assets.models.deploy import mlflow_client
    from mlops_assets.monitoring.reference import ReferenceSourceError, model_reference

    def run_tags() -> dict[str, str]:
        client = mlflow_client(lakehouse.settings)
        return client.get_run(client.get_model_version(model.name, model.version).run_id).data.tags

    def training_set(version: int) -> pl.DataFrame:
        store = lakehouse.store(GROUP)
        return store.materialize(store.scan(TRAINING_SET, version=version)).to_native()

    try:
        reference = model_reference(
            lakehouse.write_uri(REFERENCE), model, run_tags=run_tags, training_set=training_set
        )
    except ReferenceSourceError as error:
        raise dg.Failure(str(error)) from None
    if reference.written is not None:
        built.append(
            dg.AssetMaterialization(
                asset_key=REFERENCE_KEY,
                metadata={
                    **table_metadata(reference.written, str(REFERENCE)),
                    "model_version": model.version,
                },
            )
        )
    return reference.rows


def _log(lakehouse: LakehouseResource) -> pl.LazyFrame:
    """The inference log's predictions of the primary model.

    Other declared models' rows are monitored by their own assets (`defs.model_monitoring`).
    """
    from mlops_assets.models.lifecycle import model_name

    store = lakehouse.store(GROUP)
    if not store.exists(INFERENCE_LOG):
        raise dg.Failure("serving/inference_log holds no predictions yet: score a day first")
    registered = model_name(lakehouse.settings.env)
    return polars_lazy(store.scan(INFERENCE_LOG).filter(nw.col("model_name") == registered))


def no_predictions(day: datetime.date) -> dg.Failure:
    """The failure of a day without predictions of the primary model (either engine)."""
    return dg.Failure(f"no predictions for {day} in serving/inference_log: score the day first")


def version_summary(rows: pl.DataFrame, result: DriftResult, predictions: int) -> dict[str, Any]:
    """A version's window against its training reference, as `by_version` metadata.

    Args:
        rows: The drift table's rows of the comparison.
        result: The comparison (either engine's).
        predictions: Predictions in the version's window.
    """
    from mlops_assets.monitoring.windows import feature_share, prediction_score

    return {
        "rows": predictions,
        "drifted_share": feature_share(result),
        "prediction_drift": prediction_score(result),
        "drifted": rows.filter(pl.col("drifted"), pl.col("column") != "score")
        .get_column("column")
        .to_list(),
    }


def write_drift(
    lakehouse: LakehouseResource,
    day: datetime.date,
    tables: Sequence[pl.DataFrame],
    summaries: Mapping[str, dict[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> dg.MaterializeResult:
    """Write the day's drift rows; the metadata holds the latest version's figures.

    Args:
        lakehouse: The lake.
        day: The partition.
        tables: The drift table's rows, per version and baseline.
        summaries: Per version, its `version_summary` (and comparison with the previous day).
        extra: Metadata added last (the engine of the statistics).
    """
    store = lakehouse.store(GROUP)
    written = store.replace_partition(DRIFT, store.from_polars(pl.concat(tables)), {"day": day})
    latest = summaries[max(summaries, key=int)]
    return dg.MaterializeResult(
        metadata={
            **table_metadata(written, str(DRIFT)),
            "model_version": max(summaries, key=int),
            "predictions": latest["rows"],
            "drifted_share": latest["drifted_share"],
            "prediction_drift": latest["prediction_drift"],
            "drifted_features": dg.MetadataValue.json(latest["drifted"]),
            "by_version": dg.MetadataValue.json(summaries),
            **(extra or {}),
        }
    )


def write_profiles(
    lakehouse: LakehouseResource,
    day: datetime.date,
    profiled: Sequence[tuple[str, pl.DataFrame]],
    predictions: int,
    extra: Mapping[str, Any] | None = None,
) -> dg.MaterializeResult:
    """Write the day's profiles; the metadata holds the last version's score statistics.

    Args:
        lakehouse: The lake.
        day: The partition.
        profiled: Per version, in order, its profile (`PROFILE_SCHEMA` rows, either engine's).
        predictions: Predictions of the day, all versions.
        extra: Metadata added last (the engine of the statistics).
    """
    frames = [
        frame.select(pl.lit(day).alias("day"), pl.lit(version).alias("model_version"), pl.all())
        for version, frame in profiled
    ]
    store = lakehouse.store(GROUP)
    written = store.replace_partition(PROFILES, store.from_polars(pl.concat(frames)), {"day": day})
    score = frames[-1].filter(pl.col("column") == "score")

    def stat(name: str) -> float:
        found = score.filter(pl.col("statistic") == name).get_column("value")
        return float(found[0]) if found.len() else float("nan")

    return dg.MaterializeResult(
        metadata={
            **table_metadata(written, str(PROFILES)),
            "predictions": predictions,
            "score_mean": stat("mean"),
            "score_p99": stat("p99"),
            **(extra or {}),
        }
    )


def drift_metrics(
    context: dg.AssetExecutionContext,
    lakehouse: LakehouseResource,
    monitoring: MonitoringResource,
) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
    """Drift of each feature and of the prediction, per day and model version.

    The day's predictions (every mode) of each model version are compared with the version's
    training reference (its hold-out's features and scores) and with the previous day's
    predictions of the same version: normalized Wasserstein distance for numeric columns,
    Jensen-Shannon distance for categorical ones (Evidently's defaults and thresholds), plus
    PSI. One row per day, version, baseline and column in `monitoring/drift_metrics`; the
    share of drifted features and the prediction drift are metadata the UI plots over days.
    """
    from mlops_assets.monitoring.windows import drift_rows, feature_share, window_predictions

    day = partition_day(context)
    if lakehouse.engine_for(GROUP) is Engine.SPARK:
        from mlops_assets.defs.spark_monitoring import spark_drift_metrics

        yield from spark_drift_metrics(lakehouse, monitoring.thresholds(), day)
        return
    log = _log(lakehouse)
    current = window_predictions(log, day)
    if not current.height:
        raise no_predictions(day)
    previous = window_predictions(log, day - datetime.timedelta(days=1))
    thresholds = monitoring.thresholds()
    built: list[dg.AssetMaterialization] = []
    tables, summaries = [], {}
    for version in sorted(current.get_column("model_version").unique().to_list(), key=int):
        model = load_version(lakehouse, version)
        columns = [*model.spec.feature_columns, "score"]
        window = current.filter(pl.col("model_version") == version).select(columns)
        reference = reference_rows(lakehouse, model, built).select(columns).cast(window.schema)
        rows, result = drift_rows(
            reference,
            window,
            columns,
            day=day,
            model_version=version,
            baseline="training",
            thresholds=thresholds,
        )
        tables.append(rows)
        summary = version_summary(rows, result, window.height)
        before = previous.filter(pl.col("model_version") == version).select(columns)
        if before.height >= MIN_WINDOW_ROWS:
            rows, result = drift_rows(
                before,
                window,
                columns,
                day=day,
                model_version=version,
                baseline="previous_day",
                thresholds=thresholds,
            )
            tables.append(rows)
            summary["drifted_share_vs_previous_day"] = feature_share(result)
        summaries[version] = summary
    yield write_drift(lakehouse, day, tables, summaries)
    yield from built


def profiles(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource
) -> dg.MaterializeResult:
    """Profile of each day's predictions per model version: counts, nulls, quantiles, categories.

    One row per day, version, column and statistic in `monitoring/profiles` (long format: a
    new statistic needs no schema change); numeric columns get mean, deviation and quantiles,
    categorical ones their most frequent values and shares.
    """
    from mlops_assets.monitoring.profile import profile
    from mlops_assets.monitoring.windows import window_predictions

    day = partition_day(context)
    if lakehouse.engine_for(GROUP) is Engine.SPARK:
        from mlops_assets.defs.spark_monitoring import spark_profiles

        return spark_profiles(lakehouse, day)
    current = window_predictions(_log(lakehouse), day)
    if not current.height:
        raise no_predictions(day)
    profiled = []
    versions = sorted(current.get_column("model_version").unique().to_list(), key=int)
    for version in versions:
        rows = current.filter(pl.col("model_version") == version)
        spec_columns = [
            c
            for c in rows.columns
            if c not in UNPROFILED and rows.get_column(c).null_count() < rows.height
        ]
        profiled.append((version, profile(rows, spec_columns)))
    return write_profiles(lakehouse, day, profiled, current.height)


def performance(
    context: dg.AssetExecutionContext,
    lakehouse: LakehouseResource,
    monitoring: MonitoringResource,
) -> dg.MaterializeResult:
    """Precision, recall, PR-AUC and fraud caught of a day's predictions, as labels arrive.

    A transaction is fraud once a chargeback names it and legitimate once it is older than
    the label maturity without one; before that its label is unknown and left out. The day's
    row in `monitoring/performance` is replaced each time, so materializing it again after
    more chargebacks landed updates it; `mature` says whether every label can be known.
    """
    from mlops_assets.monitoring.performance import performance_by
    from mlops_assets.monitoring.windows import (
        one_per_transaction,
        window_predictions,
        with_labels,
    )

    day = partition_day(context)
    current = window_predictions(_log(lakehouse), day)
    if not current.height:
        raise no_predictions(day)
    store = lakehouse.store(GROUP)
    chargebacks = (
        store.materialize(
            store.scan(SILVER_LABELS).select("transaction_id", "is_fraud", "reported_at")
        ).to_native()
        if store.exists(SILVER_LABELS)
        else pl.DataFrame(
            schema={
                "transaction_id": pl.String,
                "is_fraud": pl.Boolean,
                "reported_at": pl.Datetime("us", "UTC"),
            }
        )
    )
    horizon = label_horizon(lakehouse)
    maturity = monitoring.label_maturity_days
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
    written = store.replace_partition(PERFORMANCE, store.from_polars(table), {"day": day})
    latest = table.sort(pl.col("model_version").cast(pl.Int64), descending=True).row(0, named=True)
    numbers = {
        k: float(v)
        for k, v in latest.items()
        if k in ("precision", "recall", "pr_auc", "label_share") and v is not None
    }
    return dg.MaterializeResult(
        metadata={
            **table_metadata(written, str(PERFORMANCE)),
            "model_version": latest["model_version"],
            "mature": bool(latest["mature"]),
            "labelled": int(latest["labelled"]),
            "fraud_caught": int(latest["fraud_caught"]),
            **numbers,
        }
    )


def drift_report(
    context: dg.AssetExecutionContext,
    lakehouse: LakehouseResource,
    monitoring: MonitoringResource,
) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
    """Evidently's HTML drift report of the day against the model's training reference.

    For people: a seeded sample (20,000 rows a side at most) of the day's predictions of the
    newest version that scored it, against that version's reference, saved under
    `data/<env>/monitoring/reports/` and linked here. The automated numbers are in
    `monitoring/drift_metrics`.
    """
    from mlops_assets.monitoring.report import drift_report_html
    from mlops_assets.monitoring.windows import window_predictions

    day = partition_day(context)
    current = window_predictions(_log(lakehouse), day)
    if not current.height:
        raise no_predictions(day)
    version = max(current.get_column("model_version").unique().to_list(), key=int)
    model = load_version(lakehouse, version)
    columns = [*model.spec.feature_columns, "score"]
    window = current.filter(pl.col("model_version") == version).select(columns)
    built: list[dg.AssetMaterialization] = []
    reference = reference_rows(lakehouse, model, built).select(columns).cast(window.schema)
    path = lakehouse.settings.env_root / "monitoring" / "reports" / f"drift-{day}-v{version}.html"
    drift_report_html(reference, window, path, columns=columns, thresholds=monitoring.thresholds())
    yield dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.url(path.as_uri()),
            "path": dg.MetadataValue.path(str(path)),
            "model_version": version,
            "rows": window.height,
        }
    )
    yield from built


def monitoring_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    """The primary model's monitoring assets of an environment, partitioned by its days.

    `monitoring/drift_metrics`, `profiles`, `performance` and `drift_report`: the bodies are
    the functions of the same names.
    """
    daily = daily_partitions(settings)
    return [
        dg.asset(
            key=["monitoring", "drift_metrics"],
            deps=[
                dg.AssetDep(["serving", "batch_predictions"], partition_mapping=days_around(-1, 0)),
                dg.AssetDep(REFERENCE_KEY),
            ],
            partitions_def=daily,
            group_name="monitoring",
            owners=OWNERS,
            kinds=engine_kinds(settings, GROUP),
            code_version="drift-metrics-1",
            metadata={"table": str(DRIFT)},
        )(drift_metrics),
        dg.asset(
            key=["monitoring", "profiles"],
            deps=[dg.AssetDep(["serving", "batch_predictions"])],
            partitions_def=daily,
            group_name="monitoring",
            owners=OWNERS,
            kinds=engine_kinds(settings, GROUP),
            code_version="profiles-1",
            metadata={"table": str(PROFILES)},
        )(profiles),
        dg.asset(
            key=["monitoring", "performance"],
            deps=[
                dg.AssetDep(["serving", "batch_predictions"]),
                dg.AssetDep(["silver", "labels"], partition_mapping=days_around(0, 7)),
            ],
            partitions_def=daily,
            group_name="monitoring",
            owners=OWNERS,
            kinds={"polars", "deltalake"},
            code_version="performance-1",
            metadata={"table": str(PERFORMANCE)},
        )(performance),
        dg.asset(
            key=["monitoring", "drift_report"],
            deps=[dg.AssetDep(["serving", "batch_predictions"]), dg.AssetDep(REFERENCE_KEY)],
            partitions_def=daily,
            group_name="monitoring",
            owners=OWNERS,
            kinds={"evidently"},
            code_version="drift-report-1",
        )(drift_report),
    ]


alerts_spec = dg.AssetSpec(
    key=ALERTS_KEY,
    deps=[dg.AssetKey(["monitoring", "drift_metrics"]), dg.AssetKey(["monitoring", "performance"])],
    description=(
        "Every alert of the environment (`monitoring.alerts`): drift episodes and retraining "
        "requests the drift_monitor sensor raises from the monitoring tables, failed runs from "
        "alert_on_run_failure. Appended by those sensors, each append recorded as a runless "
        "materialization."
    ),
    group_name="monitoring",
    owners=OWNERS,
    kinds={"deltalake"},
    code_version="alerts-1",
    metadata={"table": "monitoring/alerts"},
)
monitoring_specs = [reference_spec, alerts_spec]


def windows_from_tables(lakehouse: LakehouseResource) -> list:
    """The monitoring windows (day, version, drift, PR-AUC of mature days) from the tables."""
    from mlops_assets.monitoring.policy import Window

    store = lakehouse.store(GROUP)
    if not store.exists(DRIFT):
        return []
    drift = store.materialize(
        store.scan(DRIFT).filter(nw.col("baseline") == "training")
    ).to_native()
    summary = drift.group_by("day", "model_version").agg(
        pl.col("drifted").filter(pl.col("column") != "score").mean().alias("share"),
        pl.col("score").filter(pl.col("column") == "score").first().alias("prediction"),
    )
    if store.exists(PERFORMANCE):
        perf = store.materialize(
            store.scan(PERFORMANCE)
            .filter(nw.col("mature"))
            .select("day", "model_version", "pr_auc")
        ).to_native()
        summary = summary.join(perf, on=["day", "model_version"], how="left")
    else:
        summary = summary.with_columns(pl.lit(None, dtype=pl.Float64).alias("pr_auc"))
    return [
        Window(
            day=row["day"],
            model_version=row["model_version"],
            drifted_share=float(row["share"] or 0.0),
            prediction_drift=float(row["prediction"] or 0.0),
            pr_auc=row["pr_auc"],
        )
        for row in summary.sort("day", "model_version").iter_rows(named=True)
    ]


def alerts_uri(lakehouse: LakehouseResource) -> str:
    """Where the environment's alerts table lives."""
    from mlops_assets.monitoring.alerts import ALERTS

    return lakehouse.write_uri(ALERTS)


def raise_and_report(
    instance: dg.DagsterInstance, lakehouse: LakehouseResource, alert, webhook_url: str | None
) -> None:
    """Raise an alert (`monitoring.alerts.raise_alert`) and record the append in Dagster.

    The sensors that raise alerts are not assets: each append is a runless materialization
    of `monitoring/alerts` with the table's URI, Delta version and the row written.
    """
    from mlops_assets.monitoring.alerts import raise_alert

    raised = raise_alert(alerts_uri(lakehouse), alert, webhook_url)
    instance.report_runless_asset_event(alert_materialization(alert, raised))


def drift_monitor_sensor(settings: Settings) -> dg.SensorDefinition:
    """The drift sensor: retraining, validation and promotion once per drift episode.

    Running by default where automation is on (prod); elsewhere it is turned on in the UI
    (or evaluated by tests and the demo).
    """

    @dg.sensor(
        name="drift_monitor",
        job=retrain_job,
        minimum_interval_seconds=settings.sensor_interval_seconds or 300,
        default_status=(
            dg.DefaultSensorStatus.RUNNING
            if settings.automation_on
            else dg.DefaultSensorStatus.STOPPED
        ),
        description=(
            "Reads the monitoring tables and requests retraining, validation and promotion "
            "once per drift episode, when enough of it carries mature labels."
        ),
    )
    def drift_monitor(
        context: dg.SensorEvaluationContext,
        lakehouse: LakehouseResource,
        monitoring: MonitoringResource,
    ):
        """Decide from the latest windows; alert on a new episode; request one retraining."""
        from mlops_assets.monitoring.alerts import Alert
        from mlops_assets.monitoring.policy import decide

        policy = monitoring.policy()
        windows = windows_from_tables(lakehouse)
        cursor = json.loads(context.cursor) if context.cursor else {}
        if not windows:
            return dg.SkipReason("no monitoring windows yet: materialize monitoring/drift_metrics")
        last = cursor.get("last_retrain_day")
        requested = cursor.get("requested", [])
        decision = decide(
            windows, policy, datetime.date.fromisoformat(last) if last else None, requested
        )
        alerted = set(cursor.get("alerted", []))
        latest = max(w.day for w in windows)
        url = monitoring.alert_webhook_url or None
        episode = decision.run_key if decision.episode_start else None
        if episode and episode not in alerted:
            raise_and_report(
                context.instance,
                lakehouse,
                Alert(
                    kind="drift",
                    severity="warning",
                    subject="monitoring/drift_metrics",
                    message=decision.reason,
                    env=lakehouse.env,
                    window_day=latest,
                    model_version=max(
                        (w for w in windows if w.day == latest), key=lambda w: int(w.model_version)
                    ).model_version,
                    details={"episode_start": str(decision.episode_start)},
                ),
                url,
            )
            alerted.add(episode)
        cursor["alerted"] = sorted(alerted)
        context.log.info(decision.reason)
        if not decision.retrain:
            return dg.SensorResult(skip_reason=decision.reason, cursor=json.dumps(cursor))
        horizon = label_horizon(lakehouse)
        raise_and_report(
            context.instance,
            lakehouse,
            Alert(
                kind="retrain_requested",
                severity="info",
                subject="retrain_and_deploy",
                message=f"retraining requested: {decision.reason}",
                env=lakehouse.env,
                window_day=latest,
                details={"run_key": decision.run_key, "label_cutoff": horizon.isoformat()},
            ),
            url,
        )
        cursor["last_retrain_day"] = latest.isoformat()
        cursor["requested"] = [*requested, decision.run_key]
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=decision.run_key,
                    run_config={
                        "ops": {
                            "ml__training_set": {
                                "config": {
                                    "label_cutoff": horizon.isoformat(),
                                    "label_maturity_days": policy.label_maturity_days,
                                    "days": monitoring.retrain_window_days,
                                }
                            }
                        }
                    },
                    tags={
                        "mlops/trigger": "drift",
                        "mlops/episode_start": str(decision.episode_start),
                        "mlops/window": latest.isoformat(),
                        "mlops/reason": decision.reason[:200],
                    },
                )
            ],
            cursor=json.dumps(cursor),
        )

    return drift_monitor


@dg.run_failure_sensor(
    name="alert_on_run_failure",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records every failed run (failing blocking checks included) as an alert.",
)
def alert_on_run_failure(
    context: dg.RunFailureSensorContext,
    lakehouse: LakehouseResource,
    monitoring: MonitoringResource,
):
    """Append a `run_failed` alert naming the job, the run and the failure (and post it)."""
    from mlops_assets.monitoring.alerts import Alert

    run = context.dagster_run
    raise_and_report(
        context.instance,
        lakehouse,
        Alert(
            kind="run_failed",
            severity="error",
            subject=run.job_name,
            message=(context.failure_event.message or "run failed")[:500],
            env=lakehouse.env,
            details={"run_id": run.run_id, "tags": dict(run.tags)},
        ),
        monitoring.alert_webhook_url or None,
    )
