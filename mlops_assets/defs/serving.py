"""Serving assets: batch and streaming scoring into the inference log, and its compaction."""

import json
import time
from collections.abc import Iterator

import dagster as dg
import polars as pl

from mlops_assets.defs.metadata import alert_materialization
from mlops_assets.defs.ml import feature_rows, keys, scan_polars
from mlops_assets.defs.partitions import daily_partitions, days_around, partition_day
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.store import TableMissingError
from mlops_assets.models.declaration import MODELS, ModelDeclaration, primary
from mlops_assets.serving.inference_log import INFERENCE_LOG
from mlops_assets.serving.streaming import STREAM_CHECKPOINT, StreamOutcome
from mlops_assets.settings import Engine, Settings, use_mlflow_store

STREAM_PREDICTIONS = dg.AssetKey(["serving", "stream_predictions"])
STREAM_CHECKPOINT_KEY = dg.AssetKey(["serving", "stream_checkpoint"])
OWNERS = ["team:ml-platform"]
SILVER_TRANSACTIONS = TableRef("silver", "transactions")
# The table store group of the serving assets (polars and delta-rs).
GROUP = "serving"


def load_champion(lakehouse: LakehouseResource, model: str = "fraud_detector"):
    """A declared model's champion as a `ServingModel`; a clear failure without one."""
    from mlops_assets.models.deploy import lifecycle
    from mlops_assets.models.lifecycle import CHAMPION
    from mlops_assets.serving.model import load_serving_model

    settings = lakehouse.settings
    cycle = lifecycle(settings, model)
    version = cycle.version_of(CHAMPION)
    if version is None:
        raise dg.Failure(f"{cycle.name} has no champion yet: train and promote a model first")
    use_mlflow_store(settings.mlflow_uri)
    return load_serving_model(cycle.name, version, CHAMPION)


def _log(lakehouse: LakehouseResource, model):
    from mlops_assets.serving.inference_log import InferenceLog, inference_schema

    return InferenceLog(
        lakehouse.write_uri(INFERENCE_LOG), schema=inference_schema(model.spec), start=False
    )


def batch_predictions_asset(
    declaration: ModelDeclaration, settings: Settings
) -> dg.AssetsDefinition:
    """A declared model's daily batch scoring into the inference log, in an environment.

    The fraud detector's is `serving/batch_predictions`; another model's
    `serving/<name>/batch_predictions`. The feature partitions it reads follow the model's
    declared feature look-backs; its partitions are the environment's days.
    """
    k = keys(declaration)

    @dg.asset(
        key=k.batch_predictions,
        deps=[
            dg.AssetDep(["silver", "transactions"]),
            *[
                dg.AssetDep(
                    ["features", lookup.table],
                    partition_mapping=days_around(-declaration.windows.lookback(lookup.table), 0),
                )
                for lookup in declaration.spec.lookups
            ],
            dg.AssetDep(k.champion, partition_mapping=dg.AllPartitionMapping()),
        ],
        partitions_def=daily_partitions(settings),
        group_name="serving",
        owners=OWNERS,
        kinds={"mlflow", "polars", "deltalake"},
        code_version="batch-predictions-1",
        metadata={"table": str(INFERENCE_LOG), "model": declaration.name},
        description=(
            f"The day's transactions scored by the champion of {declaration.name}, appended "
            "to the inference log. Each transaction that landed on the day gets the features "
            "known strictly before it (the same point-in-time lookup as training, by key "
            "through the champion's feature spec), a score, a decision at the model's "
            "threshold, and the model's name, version and alias. Rows go to "
            "`serving/inference_log` with mode `batch`; the log is append-only, so scoring a "
            "day again (e.g. by a new champion) adds rows and keeps the earlier ones."
        ),
    )
    def _batch(context: dg.AssetExecutionContext, lakehouse: LakehouseResource):
        from mlops_assets.serving.scoring import score_into_log

        day = partition_day(context)
        model = load_champion(lakehouse, declaration.name)
        if lakehouse.engine_for(GROUP) is Engine.SPARK:
            return spark_batch(context, lakehouse, declaration, model, day)
        store = lakehouse.store(GROUP)
        try:
            landed = store.read_partition(SILVER_TRANSACTIONS, {"landing_date": day})
        except TableMissingError as missing:
            raise dg.Failure(str(missing)) from None
        events = store.materialize(landed.select(*model.spec.request_fields)).to_native()

        def scan(name: str) -> pl.LazyFrame:
            layer, table = name.split("/")
            return scan_polars(store, TableRef(layer, table))

        start = events.get_column("event_time").min() if events.height else None
        first = start.date() if start else day
        features = model.spec.training_set(
            events.sort("event_time", "transaction_id"),
            feature_rows(scan, first, day, declaration),
        )
        # Scored and written chunk by chunk, in one commit: memory holds one chunk's rows.
        outcome = score_into_log(
            model, features, _log(lakehouse, model), mode="batch", run_id=context.run.run_id
        )
        return _batch_result(
            model,
            outcome.written,
            outcome.rows,
            outcome.flagged,
            outcome.mean_score,
            outcome.ms_per_row,
        )

    return _batch


def _batch_result(
    model, written, count: int, flagged: int, mean_score: float, ms_per_row: float
) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={
            # The partition is the day's batch: its rows; the log's rows when counted.
            "dagster/partition_row_count": count,
            **({"dagster/row_count": written.table_rows} if written.table_rows >= 0 else {}),
            "dagster/table_name": str(INFERENCE_LOG).replace("/", "."),
            "dagster/uri": dg.MetadataValue.path(written.uri),
            "delta_version": written.version,
            "model": model.name,
            "model_version": model.version,
            "threshold": model.threshold,
            "flagged": flagged,
            "flagged_share": flagged / count if count else 0.0,
            "mean_score": mean_score,
            "ms_per_row": ms_per_row,
        }
    )


def spark_batch(
    context: dg.AssetExecutionContext,
    lakehouse: LakehouseResource,
    declaration: ModelDeclaration,
    model,
    day,
) -> dg.MaterializeResult:
    """The day's batch scored on Spark (the serving group's engine set to spark).

    The same events, feature look-backs and point-in-time rule as the polars path
    (`features.spark_point_in_time`), the champion applied per partition on the executors
    (`serving.spark_scoring`) and the rows appended to the inference log by Delta on Spark.
    """
    from pyspark.sql import functions as F

    from mlops_assets.features import spark_point_in_time as spark_pit
    from mlops_assets.serving import spark_scoring

    store = lakehouse.spark_store()
    try:
        landed = store.read_partition(SILVER_TRANSACTIONS, {"landing_date": day}).to_native()
    except TableMissingError as missing:
        raise dg.Failure(str(missing)) from None
    events = landed.select(*model.spec.request_fields)
    # The first event's UTC day (the session's clock is UTC), as the polars path takes it.
    first = events.agg(F.to_date(F.min("event_time"))).collect()[0][0] or day

    def scan(name: str):
        layer, table = name.split("/")
        return store.scan(TableRef(layer, table)).to_native()

    tables = spark_pit.feature_rows(scan, model.spec, declaration.windows, first, day)
    features = spark_pit.training_set(events, tables, model.spec)
    rows = spark_scoring.batch_predictions(
        model, features, mode="batch", run_id=context.run.run_id
    ).cache()
    try:
        stats = rows.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count_if(F.col("decision")).alias("flagged"),
            F.avg("score").alias("mean_score"),
            F.first("latency_ms").alias("ms_per_row"),
        ).collect()[0]
        written = spark_scoring.append_to_log(
            store.session, lakehouse.write_uri(INFERENCE_LOG), rows
        )
    finally:
        rows.unpersist()
    return _batch_result(
        model,
        written,
        int(stats["rows"]),
        int(stats["flagged"]),
        float(stats["mean_score"] or 0.0),
        float(stats["ms_per_row"] or 0.0),
    )


# The model whose champion scores landed files as they arrive (declared `streamed`).
STREAMED = next((m.name for m in MODELS.values() if m.streamed), primary().name)


class StreamConfig(dg.Config):
    """The landed file a streaming micro-batch scores.

    Attributes:
        file: Path of the file relative to the landing root (`transactions/<day>/<name>`).
    """

    file: str


def checkpoint_metadata(outcome: StreamOutcome) -> dict:
    """Metadata of a checkpoint row written: the table, its Delta version, one row."""
    return {
        "dagster/uri": dg.MetadataValue.path(outcome.checkpoint_uri or ""),
        "dagster/table_name": str(STREAM_CHECKPOINT).replace("/", "."),
        "delta_version": outcome.checkpoint_version,
        "rows_written": 1,
        "file": outcome.file,
        "log_version": outcome.log_version if outcome.log_version is not None else -1,
        "recovered_from_log": outcome.recovered,
    }


stream_checkpoint_spec = dg.AssetSpec(
    STREAM_CHECKPOINT_KEY,
    deps=[STREAM_PREDICTIONS],
    description=(
        "One row per landed file streaming scored: its inference log version, lines, scored "
        "and error rows, model version and run; a file in it is not scored again. Written by "
        "serving/stream_predictions and the stream worker, each row recorded as a "
        "materialization."
    ),
    group_name="serving",
    owners=OWNERS,
    kinds={"deltalake"},
    code_version="stream-checkpoint-1",
    metadata={"table": str(STREAM_CHECKPOINT)},
)


@dg.asset(
    key=["serving", "stream_predictions"],
    deps=[dg.AssetDep(["online", "card_behaviour"]), dg.AssetDep(["online", "merchant_risk"])],
    group_name="serving",
    owners=OWNERS,
    kinds={"mlflow", "polars", "deltalake"},
    code_version="stream-predictions-1",
    metadata={"table": str(INFERENCE_LOG), "checkpoint": str(STREAM_CHECKPOINT)},
)
def stream_predictions(
    context: dg.AssetExecutionContext, config: StreamConfig, lakehouse: LakehouseResource
) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
    """A newly landed transactions file scored within seconds, exactly once.

    The `landed_transactions` sensor requests one run per new file. Valid transactions are
    scored through the online path (features from the online store by key, as the REST server
    does); unreadable lines and contract violations become `error` rows naming the problem.
    All of a file's rows are one Delta append carrying the file's name in its commit, then a
    row of `serving/stream_checkpoint` records it: a file already in the log (also after a
    stop between the two) is not scored again. The row written is recorded as a
    materialization of `serving/stream_checkpoint` (none for a file it already held).
    """
    from mlops_assets.features.online_store import open_online_store
    from mlops_assets.monitoring.alerts import ALERTS, Alert, raise_alert
    from mlops_assets.serving.streaming import FileChangedError, score_landed_file

    settings = lakehouse.settings
    raised = []

    def alert(message: str, details: dict) -> None:
        changed = Alert(
            kind="check_failed",
            severity="warning",
            subject=f"serving/stream_predictions {details.get('file', '')}",
            message=message,
            env=settings.env,
            details={**details, "dagster_run_id": context.run.run_id},
        )
        raised.append(
            (changed, raise_alert(lakehouse.write_uri(ALERTS), changed, settings.alert_webhook_url))
        )

    loaded = []

    def model():  # loaded only when the file is scored, once
        if not loaded:
            loaded.append(load_champion(lakehouse, STREAMED))
        return loaded[0]

    scored = None
    if lakehouse.engine_for(GROUP) is Engine.SPARK:
        scored = _scored_on_spark(context, lakehouse, config.file, model)
    try:
        outcome = score_landed_file(
            settings.landing_root,
            config.file,
            load_model=model,
            open_store=lambda: open_online_store(settings),
            log_uri=lakehouse.write_uri(INFERENCE_LOG),
            checkpoint_uri=lakehouse.write_uri(STREAM_CHECKPOINT),
            log_table=str(INFERENCE_LOG),
            checkpoint_table=str(STREAM_CHECKPOINT),
            timezone=settings.source_timezones.get("transactions"),
            run_id=context.run.run_id,
            alert=alert,
            scored=scored,
        )
    except (FileNotFoundError, FileChangedError) as error:
        raise dg.Failure(str(error)) from None
    if outcome.skipped:
        context.log.info(f"{config.file} was scored before (log version {outcome.log_version})")
    elif outcome.recovered:
        context.log.warning(
            f"{config.file} was in the log (version {outcome.log_version}) without checkpoint"
        )
    if outcome.alert:
        context.log.warning(outcome.alert)
    yield dg.MaterializeResult(metadata=outcome.metadata())
    if outcome.checkpoint_version is not None:
        yield dg.AssetMaterialization(
            asset_key=STREAM_CHECKPOINT_KEY, metadata=checkpoint_metadata(outcome)
        )
    for changed, done in raised:
        yield alert_materialization(changed, done)


def _scored_on_spark(context, lakehouse: LakehouseResource, file: str, load_model):
    """A landed file scored on Spark's executors (the serving group's engine set to spark).

    None when the file needs no scoring (checkpointed with the size it has now): the
    protocol then skips it without starting a Spark job.
    """
    import functools

    from mlops_assets.features.online_store import open_online_store
    from mlops_assets.serving.spark_streaming import score_files
    from mlops_assets.serving.streaming import FileChangedError, StreamLedger, file_state

    settings = lakehouse.settings
    path = settings.landing_root / file
    if not path.is_file():
        return None  # the protocol names the missing file
    ledger = StreamLedger(
        lakehouse.write_uri(INFERENCE_LOG), lakehouse.write_uri(STREAM_CHECKPOINT)
    )
    if ledger.unchanged(ledger.checkpointed(file), file_state(path)[0]):
        return None
    [batch] = score_files(
        lakehouse.spark_store().session,
        settings.landing_root,
        [file],
        load_model(),
        functools.partial(open_online_store, settings),
        run_id=context.run.run_id,
        timezone=settings.source_timezones.get("transactions"),
    ).values()
    if isinstance(batch, FileChangedError):
        raise dg.Failure(str(batch))
    if isinstance(batch, Exception):
        raise batch
    context.log.info(f"{file} scored on Spark's executors in {batch.seconds:.2f} s")
    return batch


def record_stream_batch(instance: dg.DagsterInstance, outcome: StreamOutcome) -> None:
    """Record a micro-batch the stream worker scored as runless materializations.

    The worker scores outside Dagster runs; the events put each file on the
    `serving/stream_predictions` asset's timeline, with the same metadata a run gives, and
    its checkpoint row on `serving/stream_checkpoint`'s.
    """
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=STREAM_PREDICTIONS,
            metadata={**outcome.metadata(), "scored_by": "stream worker"},
        )
    )
    if outcome.checkpoint_version is not None:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=STREAM_CHECKPOINT_KEY,
                metadata={
                    **checkpoint_metadata(outcome),
                    "scored_by": "stream worker",
                },
            )
        )


STREAM_MAX_RETRIES = 3

stream_job = dg.define_asset_job(
    name="stream_score",
    selection=dg.AssetSelection.assets(["serving", "stream_predictions"]),
    description="Score one landed transactions file into the inference log (streaming).",
    # A failed micro-batch is run again by the daemon (run_retries in dagster.yaml): the
    # sensor requests each file once, and a rerun never scores a file twice.
    tags={"dagster/max_retries": str(STREAM_MAX_RETRIES)},
)


@dg.sensor(
    job=stream_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests a streaming micro-batch for each transactions file as it lands.",
)
def landed_transactions(context: dg.SensorEvaluationContext, lakehouse: LakehouseResource):
    """One `stream_score` run per new landed transactions file, keyed by the file's name.

    Only the newest day folders are watched (`LOOKBACK_DAYS` of `serving.streaming`), files
    still being written are not requested: temporary names, and files whose size and
    modification time have not been unchanged for `landing_settle_seconds` (`Settling`, its
    observations kept in the cursor). The cursor lists the files requested in the watched
    folders with their size then, so it stays small; a requested file found later with
    another size is requested again (the run alerts and scores the lines it gained). The run
    key (the file's name, and its size for a changed file) keeps a file from being requested
    twice even if the cursor is lost, and the run itself skips files the checkpoint already
    holds with their size. A file whose run failed is not requested again by the sensor:
    launch `stream_score` for it by hand (the failure is in `monitoring/alerts`).
    """
    from mlops_assets.serving.streaming import landed_files

    settings = lakehouse.settings
    root = settings.landing_root
    requested, settling = _stream_cursor(context.cursor, settings.landing_settle_seconds)
    folder = root / "transactions"
    landed = landed_files(root)
    settling.keep_only(landed)
    now = time.time()
    new: dict[str, int] = {}
    for name in landed:
        state = settling.settled(root / name, name, now)
        if state is None:
            continue
        if name in requested and requested[name] in (None, state[0]):
            continue
        new[name] = state[0]
    # Files of folders that left the watched days are dropped from the cursor.
    kept = {name: size for name, size in requested.items() if name in set(landed)}
    cursor = json.dumps(
        {"requested": dict(sorted({**kept, **new}.items())), "settling": settling.observations()}
    )
    if not new:
        reason = f"no new or changed settled transactions file under {folder}"
        if cursor == context.cursor:
            return dg.SkipReason(reason)
        return dg.SensorResult(skip_reason=reason, cursor=cursor)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                # A file that changed after it was requested is requested again (the run
                # scores what it gained): its size makes the key new.
                run_key=f"stream:{name}" if name not in requested else f"stream:{name}:{size}",
                run_config={"ops": {"serving__stream_predictions": {"config": {"file": name}}}},
                tags={"mlops/landed_file": name},
            )
            for name, size in new.items()
        ],
        cursor=cursor,
    )


def _stream_cursor(cursor: str | None, settle_seconds: float):
    """The sensor's cursor: files requested (with their size then) and files settling."""
    from mlops_assets.serving.streaming import Settling

    data = json.loads(cursor) if cursor else {}
    if isinstance(data, list):  # the cursor of earlier versions: the files requested
        return dict.fromkeys(data, None), Settling(settle_seconds)
    requested = {name: size for name, size in data.get("requested", {}).items()}
    return requested, Settling(settle_seconds, data.get("settling"))


class CompactionConfig(dg.Config):
    """Compaction of the inference log.

    Attributes:
        vacuum_retention_hours: Also delete files no version younger than this needs
            (negative: do not vacuum).
    """

    vacuum_retention_hours: int = -1


@dg.asset(
    key=["serving", "inference_log"],
    group_name="serving",
    owners=OWNERS,
    kinds={"deltalake"},
    code_version="inference-log-compaction-1",
    metadata={"table": str(INFERENCE_LOG)},
    deps=[
        dg.AssetDep(keys(model).batch_predictions, partition_mapping=dg.AllPartitionMapping())
        for model in MODELS.values()
    ],
)
def inference_log(config: CompactionConfig, lakehouse: LakehouseResource) -> dg.MaterializeResult:
    """Every prediction (online, batch, stream) in one Delta table, compacted.

    Appends from the REST server, batch scoring and streaming make many small files;
    materializing this asset rewrites them into large ones (Delta OPTIMIZE; rows and their
    order of arrival do not change) and optionally vacuums files no recent version needs.
    """
    from mlops_assets.serving.inference_log import compact_inference_log

    store = lakehouse.store(GROUP)
    if not store.exists(INFERENCE_LOG):
        raise dg.Failure("serving/inference_log holds no predictions yet")
    uri = store.write_uri(INFERENCE_LOG)
    outcome = compact_inference_log(
        uri,
        vacuum_retention_hours=(
            config.vacuum_retention_hours if config.vacuum_retention_hours >= 0 else None
        ),
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/uri": dg.MetadataValue.path(uri),
            "delta_version": store.version(INFERENCE_LOG),
            **{k: v for k, v in outcome.items() if isinstance(v, int | float)},
        }
    )


def serving_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    """The serving assets of an environment.

    Every declared model's daily batch scoring (partitioned by the environment's days), the
    streaming scoring of landed files and the inference log's compaction.
    """
    return [
        *(batch_predictions_asset(model, settings) for model in MODELS.values()),
        stream_predictions,
        inference_log,
    ]


serving_specs = [stream_checkpoint_spec]
serving_sensors = [landed_transactions]
serving_jobs = [stream_job]
