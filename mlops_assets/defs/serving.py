"""Serving assets: batch and streaming scoring into the inference log, and its compaction."""

import datetime
import json

import dagster as dg
import polars as pl

from mlops_assets.defs.ml import feature_rows
from mlops_assets.defs.partitions import DAILY, days_around, partition_day
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.lakehouse.delta_io import (
    append_table,
    read_partition,
    scan_table,
    table_exists,
    table_version,
)
from mlops_assets.settings import use_mlflow_store

INFERENCE_LOG = TableRef("serving", "inference_log")
STREAM_CHECKPOINT = TableRef("serving", "stream_checkpoint")
OWNERS = ["team:ml-platform"]
# Day folders of landed transactions the streaming sensor watches (the newest ones).
LOOKBACK_DAYS = 3


def load_champion(lakehouse: LakehouseResource):
    """The environment's champion as a `ServingModel`; a clear failure without one."""
    from mlops_assets.models.deploy import lifecycle
    from mlops_assets.models.lifecycle import CHAMPION
    from mlops_assets.serving.model import load_serving_model

    settings = lakehouse.settings
    cycle = lifecycle(settings)
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


@dg.asset(
    key=["serving", "batch_predictions"],
    deps=[
        dg.AssetDep(["silver", "transactions"]),
        dg.AssetDep(["features", "card_behaviour"], partition_mapping=days_around(-30, 0)),
        dg.AssetDep(["features", "merchant_risk"], partition_mapping=days_around(-4, 0)),
        dg.AssetDep(["ml", "champion"], partition_mapping=dg.AllPartitionMapping()),
    ],
    partitions_def=DAILY,
    group_name="serving",
    owners=OWNERS,
    kinds={"mlflow", "polars", "delta"},
    code_version="batch-predictions-1",
    metadata={"table": str(INFERENCE_LOG)},
)
def batch_predictions(
    context: dg.AssetExecutionContext, lakehouse: LakehouseResource
) -> dg.MaterializeResult:
    """The day's transactions scored by the champion, appended to the inference log.

    Each transaction that landed on the day gets the features known strictly before it (the
    same point-in-time lookup as training, by key through the champion's feature spec), a
    fraud score, a decision at the model's threshold, and the model's name, version and alias.
    Rows go to `serving/inference_log` with mode `batch`; the log is append-only, so scoring a
    day again (e.g. by a new champion) adds rows and keeps the earlier ones.
    """
    from mlops_assets.serving.scoring import batch_predictions as score

    day = partition_day(context)
    model = load_champion(lakehouse)
    silver_uri = lakehouse.read_uri(TableRef("silver", "transactions"))
    if not table_exists(silver_uri):
        raise dg.Failure("silver/transactions does not exist yet: materialize it first")
    events = read_partition(silver_uri, {"landing_date": day}).select(*model.spec.request_fields)

    def scan(name: str) -> pl.LazyFrame:
        layer, table = name.split("/")
        return scan_table(lakehouse.read_uri(TableRef(layer, table)))

    start = events.get_column("event_time").min() if events.height else None
    first = start.date() if start else day
    features = model.spec.training_set(
        events.sort("event_time", "transaction_id"), feature_rows(scan, first, day)
    )
    rows = score(model, features, mode="batch", run_id=context.run.run_id)
    written = _log(lakehouse, model).append(rows)
    flagged = int(rows.get_column("decision").sum()) if rows.height else 0
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows.height,
            "dagster/uri": dg.MetadataValue.path(written.uri),
            "delta_version": written.version,
            "model": model.name,
            "model_version": model.version,
            "threshold": model.threshold,
            "flagged": flagged,
            "flagged_share": flagged / rows.height if rows.height else 0.0,
            "mean_score": float(rows.get_column("score").mean()) if rows.height else 0.0,
            "ms_per_row": float(rows.get_column("latency_ms")[0]) if rows.height else 0.0,
        }
    )


class StreamConfig(dg.Config):
    """The landed file a streaming micro-batch scores.

    Attributes:
        file: Path of the file relative to the landing root (`transactions/<day>/<name>`).
    """

    file: str


@dg.asset(
    key=["serving", "stream_predictions"],
    deps=[dg.AssetDep(["online", "card_behaviour"]), dg.AssetDep(["online", "merchant_risk"])],
    group_name="serving",
    owners=OWNERS,
    kinds={"mlflow", "polars", "delta"},
    code_version="stream-predictions-1",
    metadata={"table": str(INFERENCE_LOG), "checkpoint": str(STREAM_CHECKPOINT)},
)
def stream_predictions(
    context: dg.AssetExecutionContext, config: StreamConfig, lakehouse: LakehouseResource
) -> dg.MaterializeResult:
    """A newly landed transactions file scored within seconds, exactly once.

    The `landed_transactions` sensor requests one run per new file. Valid transactions are
    scored through the online path (features from the online store by key, as the REST server
    does); unreadable lines and contract violations become `error` rows naming the problem.
    All of a file's rows are one Delta append carrying the file's name in its commit, then a
    row of `serving/stream_checkpoint` records it: a file already in the log (also after a
    stop between the two) is not scored again.
    """
    from mlops_assets.features.online_store import open_online_store
    from mlops_assets.serving.scoring import STREAM_FILE_KEY, score_file, streamed_version

    settings = lakehouse.settings
    path = settings.landing_root / config.file
    if not path.is_file():
        raise dg.Failure(
            f"landed file {config.file!r} does not exist under {settings.landing_root}"
        )
    log_uri = lakehouse.write_uri(INFERENCE_LOG)
    checkpoint_uri = lakehouse.write_uri(STREAM_CHECKPOINT)
    checkpoint = checkpoints(checkpoint_uri)
    done = checkpoint.filter(pl.col("file") == config.file)
    if done.height:
        context.log.info(f"{config.file} was scored before (log version {done['log_version'][0]})")
        row = done.row(0, named=True)
        return dg.MaterializeResult(
            metadata={
                "file": config.file,
                "skipped": True,
                "log_version": row["log_version"] if row["log_version"] is not None else -1,
                "lines": row["lines"] or 0,
                "scored": row["scored"] or 0,
                "errors": row["errors"] or 0,
                "recovered_from_log": False,
            }
        )
    recovered = streamed_version(log_uri, config.file)
    model = load_champion(lakehouse)
    batch = None
    version: int | None
    if recovered is None:
        with open_online_store(settings) as store:
            batch = score_file(path, settings.landing_root, model, store, run_id=context.run.run_id)
        from mlops_assets.serving.inference_log import inference_schema, prepare_frame

        if batch.rows.height:
            rows = prepare_frame(batch.rows, inference_schema(model.spec))
            written = append_table(
                log_uri,
                rows,
                partition_by=["day"],
                table=str(INFERENCE_LOG),
                metadata={STREAM_FILE_KEY: config.file},
                count_rows=False,
            )
            version = written.version
        else:
            # A header-only or empty file: nothing to log, the checkpoint still records it.
            version = None
    else:
        context.log.warning(f"{config.file} is in the log (version {recovered}) without checkpoint")
        version = recovered
    record = {
        "file": config.file,
        "log_version": version,
        "lines": batch.lines if batch else None,
        "scored": batch.scored if batch else None,
        "errors": batch.errors if batch else None,
        "model_version": model.version,
        "dagster_run_id": context.run.run_id,
        "at": datetime.datetime.now(datetime.UTC),
    }
    append_table(
        checkpoint_uri,
        pl.DataFrame([record], schema=CHECKPOINT_SCHEMA),
        table=str(STREAM_CHECKPOINT),
        count_rows=False,
    )
    return dg.MaterializeResult(
        metadata={
            "file": config.file,
            "log_version": version if version is not None else -1,
            "lines": record["lines"] or 0,
            "scored": record["scored"] or 0,
            "errors": record["errors"] or 0,
            "seconds": batch.seconds if batch else 0.0,
            "model_version": model.version,
            "recovered_from_log": recovered is not None,
        }
    )


CHECKPOINT_SCHEMA = {
    "file": pl.String,
    "log_version": pl.Int64,
    "lines": pl.Int64,
    "scored": pl.Int64,
    "errors": pl.Int64,
    "model_version": pl.String,
    "dagster_run_id": pl.String,
    "at": pl.Datetime("us", "UTC"),
}


def checkpoints(uri: str) -> pl.DataFrame:
    """The files streaming has scored, with the inference log version of each."""
    if not table_exists(uri):
        return pl.DataFrame(schema=CHECKPOINT_SCHEMA)
    return scan_table(uri).collect()


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

    Only the newest `LOOKBACK_DAYS` day folders are watched, and the cursor lists the files
    requested in them, so it stays small; the run key (the file's name) keeps a file from
    being requested twice even if the cursor is lost, and the run itself skips files the
    checkpoint already holds. A file whose run failed is not requested again by the sensor:
    launch `stream_score` for it by hand (the failure is in `monitoring/alerts`).
    """
    root = lakehouse.settings.landing_root
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    folder = root / "transactions"
    days = (
        sorted(
            (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.name,
        )[-LOOKBACK_DAYS:]
        if folder.is_dir()
        else []
    )
    landed = sorted(
        p.relative_to(root).as_posix()
        for day in days
        for p in day.iterdir()
        if p.is_file() and not p.name.startswith(".")
    )
    new = [f for f in landed if f not in seen]
    if not new:
        return dg.SkipReason(f"no new transactions file under {folder}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"stream:{name}",
                run_config={"ops": {"serving__stream_predictions": {"config": {"file": name}}}},
                tags={"mlops/landed_file": name},
            )
            for name in new
        ],
        # Files of folders that left the watched days are dropped from the cursor.
        cursor=json.dumps(sorted((seen & set(landed)) | set(new))),
    )


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
    kinds={"delta"},
    code_version="inference-log-compaction-1",
    deps=[
        dg.AssetDep(["serving", "batch_predictions"], partition_mapping=dg.AllPartitionMapping())
    ],
)
def inference_log(config: CompactionConfig, lakehouse: LakehouseResource) -> dg.MaterializeResult:
    """Every prediction (online, batch, stream) in one Delta table, compacted.

    Appends from the REST server, batch scoring and streaming make many small files;
    materializing this asset rewrites them into large ones (Delta OPTIMIZE; rows and their
    order of arrival do not change) and optionally vacuums files no recent version needs.
    """
    from mlops_assets.serving.inference_log import compact_inference_log

    uri = lakehouse.write_uri(INFERENCE_LOG)
    if not table_exists(uri):
        raise dg.Failure("serving/inference_log holds no predictions yet")
    outcome = compact_inference_log(
        uri,
        vacuum_retention_hours=(
            config.vacuum_retention_hours if config.vacuum_retention_hours >= 0 else None
        ),
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/uri": dg.MetadataValue.path(uri),
            "delta_version": table_version(uri),
            **{k: v for k, v in outcome.items() if isinstance(v, int | float)},
        }
    )


serving_assets = [batch_predictions, stream_predictions, inference_log]
serving_sensors = [landed_transactions]
serving_jobs = [stream_job]
