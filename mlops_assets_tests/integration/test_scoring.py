"""Batch and streaming scoring into the inference log, on the shared lake with a champion."""

import os
import shutil
import time
from pathlib import Path

import dagster as dg
import polars as pl

from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.defs.serving import landed_transactions
from mlops_assets.lakehouse.delta_io import (
    append_table,
    read_partition,
    scan_table,
    table_exists,
    table_version,
)
from mlops_assets.models.training import model_inputs
from mlops_assets.settings import use_mlflow_store
from mlops_assets_tests.integration.conftest import DAYS, QUIET

ROOT = Path(__file__).resolve().parents[2]


def log_rows(settings) -> pl.DataFrame:
    uri = settings.lake_root / "serving" / "inference_log"
    if not table_exists(uri):
        return pl.DataFrame({"request_id": []}, schema={"request_id": pl.String})
    return scan_table(uri).collect()


def materialize(defs, instance, key, **kwargs):
    job = dg.define_asset_job(f"only_{'_'.join(key)}", selection=[dg.AssetKey(key)])
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    return merged.resolve_job_def(job.name).execute_in_process(
        instance=instance, raise_on_error=False, **kwargs
    )


def test_batch_scoring_logs_one_prediction_per_transaction_of_the_day(cd_lake, champion):
    import mlflow

    settings, defs, instance = cd_lake
    day = DAYS[-1]
    result = materialize(
        defs,
        instance,
        ["serving", "batch_predictions"],
        partition_key=day.isoformat(),
        run_config=QUIET,
    )
    assert result.success
    silver = read_partition(settings.lake_root / "silver" / "transactions", {"landing_date": day})
    rows = log_rows(settings).filter(pl.col("mode") == "batch")
    assert rows.height == silver.height
    assert sorted(rows.get_column("transaction_id")) == sorted(silver.get_column("transaction_id"))
    assert rows.get_column("request_id").is_unique().all()
    assert (rows.get_column("status") == "ok").all()
    version = rows.get_column("model_version").unique().to_list()
    assert len(version) == 1 and rows.get_column("model_alias").unique().to_list() == ["champion"]
    # The logged scores are the registered model's own scores of the logged features.
    use_mlflow_store(settings.mlflow_uri)  # not left in MLFLOW_TRACKING_URI
    model = mlflow.pyfunc.load_model(f"models:/dev.fraud_detector/{version[0]}")
    from mlops_assets.features.spec import FRAUD_SPEC

    again = model.predict(model_inputs(rows, FRAUD_SPEC))[:, 1]
    assert (abs(rows.get_column("score").to_numpy() - again) < 1e-12).all()
    threshold = rows.get_column("threshold")[0]
    assert (rows.get_column("decision") == (rows.get_column("score") >= threshold)).all()
    # Scoring the day again appends; the earlier predictions stay.
    assert materialize(
        defs,
        instance,
        ["serving", "batch_predictions"],
        partition_key=day.isoformat(),
        run_config=QUIET,
    ).success
    assert log_rows(settings).filter(pl.col("mode") == "batch").height == 2 * silver.height


def stream(defs, instance, name):
    return materialize(
        defs,
        instance,
        ["serving", "stream_predictions"],
        run_config={"ops": {"serving__stream_predictions": {"config": {"file": name}}}, **QUIET},
    )


def materializations(result) -> dict:
    """Metadata of each asset a run materialized, by asset key."""
    return {
        event.asset_key.to_user_string(): event.materialization.metadata
        for event in result.get_asset_materialization_events()
    }


def test_streaming_scores_each_landed_file_once_and_accounts_for_every_line(cd_lake, champion):
    settings, defs, instance = cd_lake
    landing = settings.landing_root
    [source] = sorted((landing / "transactions" / DAYS[-1].isoformat()).iterdir())
    checkpoint_uri = settings.lake_root / "serving" / "stream_checkpoint"
    # Other tests may have streamed files of the shared lake before: only this test's count.
    checkpointed_before = (
        scan_table(checkpoint_uri).collect().get_column("file").to_list()
        if table_exists(checkpoint_uri)
        else []
    )
    arrived = landing / "transactions" / "2026-01-13" / "late-part.csv"
    arrived.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, arrived)
    with open(arrived, "a") as out:
        out.write("not,a,valid,line\n")
        out.write(source.read_text().splitlines()[1].replace(",", ";") + "\n")
    lines = len(arrived.read_text().splitlines()) - 1
    landed = time.time() - 60  # complete: unchanged for longer than the settle time
    os.utime(arrived, (landed, landed))
    resources = {"lakehouse": LakehouseResource.from_settings(settings)}
    requests = landed_transactions(dg.build_sensor_context(resources=resources))
    name = "transactions/2026-01-13/late-part.csv"
    assert name in [
        r.run_config["ops"]["serving__stream_predictions"]["config"]["file"]
        for r in requests.run_requests
    ]
    again = landed_transactions(
        dg.build_sensor_context(cursor=requests.cursor, resources=resources)
    )
    assert isinstance(again, dg.SkipReason)
    before = log_rows(settings).height
    result = stream(defs, instance, name)
    assert result.success
    meta = result.asset_materializations_for_node("serving__stream_predictions")[0].metadata
    assert meta["scored"].value + meta["errors"].value == lines
    assert meta["errors"].value == 2
    rows = log_rows(settings).filter(pl.col("request_id").str.starts_with(f"stream:{name}:"))
    assert rows.height == lines == log_rows(settings).height - before
    errors = rows.filter(pl.col("status") == "error")
    assert errors.height == 2 and errors.get_column("error").str.contains(name).all()
    assert rows.filter(pl.col("status") == "ok").get_column("score").is_between(0, 1).all()
    checkpointed = materializations(result)["serving/stream_checkpoint"]
    assert checkpointed["file"].value == name and checkpointed["rows_written"].value == 1
    assert checkpointed["delta_version"].value == table_version(
        settings.lake_root / "serving" / "stream_checkpoint"
    )
    assert checkpointed["log_version"].value == meta["log_version"].value
    # A second run of the same file changes nothing: no checkpoint row, no materialization.
    again = stream(defs, instance, name)
    assert again.success and "serving/stream_checkpoint" not in materializations(again)
    assert log_rows(settings).height == before + lines
    # A stop between the log's append and the checkpoint: the next run finds the file in the
    # log's history and records the checkpoint without scoring it again.
    second = landing / "transactions" / "2026-01-13" / "another.csv"
    shutil.copyfile(source, second)
    other = "transactions/2026-01-13/another.csv"
    from mlops_assets.defs.serving import load_champion
    from mlops_assets.features.online_store import OnlineStore
    from mlops_assets.serving.inference_log import inference_schema, prepare_frame
    from mlops_assets.serving.scoring import STREAM_FILE_KEY, score_file

    lakehouse = resources["lakehouse"]
    model = load_champion(lakehouse)
    with OnlineStore(settings.online_store_path) as store:
        batch = score_file(second, landing, model, store, run_id="crashed-run")
    append_table(
        settings.lake_root / "serving" / "inference_log",
        prepare_frame(batch.rows, inference_schema(model.spec)),
        partition_by=["day"],
        metadata={STREAM_FILE_KEY: other},
    )
    count = log_rows(settings).height
    recovered = stream(defs, instance, other)
    assert recovered.success
    meta = recovered.asset_materializations_for_node("serving__stream_predictions")[0].metadata
    assert meta["recovered_from_log"].value is True
    assert log_rows(settings).height == count
    checkpoint = scan_table(checkpoint_uri).collect().get_column("file").to_list()
    assert sorted(checkpoint) == sorted([*checkpointed_before, name, other])


def test_a_failed_stream_run_is_retried_and_the_retry_scores_the_file_once(cd_lake, champion):
    import yaml

    # The daemon's own decision whether a failed run is retried (run_retries in dagster.yaml).
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry

    from mlops_assets.defs.serving import STREAM_MAX_RETRIES

    settings, defs, _ = cd_lake
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert config["run_retries"] == {"enabled": True, "max_retries": 0}
    jobs = {job.name: job for job in defs.resolve_all_job_defs()}
    retried = {name for name, job in jobs.items() if "dagster/max_retries" in job.tags}
    # The daily loop's jobs are retried only when their run died (see RETRY_IF_THE_RUN_DIED).
    assert retried == {"stream_score", "medallion_daily", "refresh_event_days", "serve_and_monitor"}
    assert jobs["medallion_daily"].tags["dagster/retry_on_asset_or_op_failure"] == "false"
    assert jobs["stream_score"].tags["dagster/max_retries"] == str(STREAM_MAX_RETRIES)

    landing = settings.landing_root
    [source] = sorted((landing / "transactions" / DAYS[-2].isoformat()).iterdir())
    name = "transactions/2026-01-14/moved-then-back.csv"
    with dg.instance_for_test(overrides=config) as instance:
        # The sensor saw the file; it was moved away before its run read it.
        failed = defs.resolve_job_def("stream_score").execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={
                "ops": {"serving__stream_predictions": {"config": {"file": name}}},
                **QUIET,
            },
        )
        assert not failed.success
        assert should_retry(instance.get_run_by_id(failed.run_id), instance)
        # Back in place, the retry scores it, and any later attempt adds nothing.
        target = landing / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        lines = len(source.read_text().splitlines()) - 1
        before = log_rows(settings).height
        for _ in range(2):
            assert stream(defs, instance, name).success
            assert log_rows(settings).height == before + lines
        rows = log_rows(settings).filter(pl.col("request_id").str.starts_with(f"stream:{name}:"))
        assert rows.height == lines


def test_the_stream_worker_scores_complete_files_once_and_records_them_in_dagster(
    cd_lake, champion, tmp_path
):
    from mlops_assets.defs.serving import record_stream_batch
    from mlops_assets.serving.stream_worker import StreamWorker
    from mlops_assets.serving.streaming import pending_files

    settings, defs, lake_instance = cd_lake
    landing = settings.landing_root
    [source] = sorted((landing / "transactions" / DAYS[-1].isoformat()).iterdir())
    folder = landing / "transactions" / "2026-01-15"
    folder.mkdir(parents=True, exist_ok=True)
    lines = len(source.read_text().splitlines()) - 1
    # Whatever the shared lake holds unscored in the watched folders (it depends on the tests
    # that ran on it before) is scored by the sensor's runs first, so it is in the checkpoint.
    checkpoint_uri = settings.lake_root / "serving" / "stream_checkpoint"
    done = scan_table(checkpoint_uri).collect() if table_exists(checkpoint_uri) else None
    scored = [] if done is None else done.get_column("file").to_list()
    for name in pending_files(landing, scored):
        assert stream(defs, lake_instance, name).success
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        worker = StreamWorker(
            settings, record=lambda done: record_stream_batch(instance, done), settle_seconds=0.3
        )
        try:
            deadline = 60
            while worker.holder.current is None and deadline > 0:
                time.sleep(0.5)
                deadline -= 0.5
            assert worker.holder.current is not None
            # Files the sensor's runs scored before are in the checkpoint: not scored again.
            before = log_rows(settings).height
            worker.run_once()
            assert log_rows(settings).height == before
            # A file still being written under its temporary name is left alone.
            partial = folder / "feed.csv.part"
            partial.write_text(source.read_text()[: len(source.read_text()) // 2])
            assert worker.run_once() == []
            # Renamed into place when whole: scored at the first poll after it settles.
            partial.write_text(source.read_text())
            partial.rename(folder / "feed.csv")
            assert worker.run_once() == []  # just renamed: not settled yet
            time.sleep(0.4)
            [outcome] = worker.run_once()
            assert outcome.file == "transactions/2026-01-15/feed.csv" and not outcome.skipped
            assert outcome.scored + outcome.errors == lines
            assert worker.run_once() == []
            rows = log_rows(settings).filter(
                pl.col("request_id").str.starts_with(f"stream:{outcome.file}:")
            )
            assert rows.height == lines
            event = instance.get_latest_materialization_event(
                dg.AssetKey(["serving", "stream_predictions"])
            )
            meta = event.asset_materialization.metadata
            assert meta["file"].value == outcome.file
            assert meta["scored"].value == outcome.scored
            assert event.run_id == ""  # recorded without a run
            checkpointed = instance.get_latest_materialization_event(
                dg.AssetKey(["serving", "stream_checkpoint"])
            )
            meta = checkpointed.asset_materialization.metadata
            assert meta["file"].value == outcome.file and checkpointed.run_id == ""
            assert meta["delta_version"].value == outcome.checkpoint_version
            assert meta["dagster/uri"].value == worker.checkpoint_uri
        finally:
            worker.close()


def score_row_by_row(valid: pl.DataFrame, model, store, source: str) -> pl.DataFrame:
    """The per-request reference: each valid line's features and score as the REST server
    builds them (`model.features`, `model.score`), rows as the streaming path logs them."""
    import json

    from mlops_assets.serving.scoring import KEYS, _json_value

    spec = model.spec
    records = list(valid.iter_rows(named=True))
    vectors = {
        lookup.table: store.lookup_many(
            lookup.table, [str(record.get(lookup.keys[0])) for record in records]
        )
        for lookup in (spec.lookups if records else ())
    }
    rows = []
    for index, record in enumerate(records):
        request = {name: record.get(name) for name in spec.request_fields}
        features = model.features(request, {t: found[index] for t, found in vectors.items()})
        score = model.score(features)
        rows.append(
            {
                "request_id": f"stream:{source}:{record['_line_number']}",
                "mode": "stream",
                "event_time": request["event_time"],
                **{k: request.get(k) for k in KEYS},
                "model_name": model.name,
                "model_version": model.version,
                "model_alias": model.alias,
                "score": score,
                "decision": score >= model.threshold,
                "threshold": model.threshold,
                "latency_ms": 0.0,
                "status": "ok",
                "request": json.dumps(request, default=_json_value, sort_keys=True),
                # As the REST server marks it: the store has no row of the card.
                "new_card": not vectors["card_behaviour"][index].found,
                **features,
            }
        )
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


def test_a_landed_file_is_scored_at_once_exactly_as_request_by_request(cd_lake, champion, tmp_path):
    import datetime

    from polars.testing import assert_frame_equal

    from mlops_assets.defs.serving import load_champion
    from mlops_assets.features.online_store import OnlineStore
    from mlops_assets.features.registry import CARD_BEHAVIOUR, MERCHANT_RISK
    from mlops_assets.serving.scoring import (
        _error_rows,
        _score_online,
        read_valid_lines,
        score_file,
    )

    settings, _, _ = cd_lake
    model = load_champion(LakehouseResource.from_settings(settings))
    [source] = sorted((settings.landing_root / "transactions" / DAYS[-1].isoformat()).iterdir())
    header, *lines = source.read_text().splitlines()
    columns = header.split(",")
    at = {name: columns.index(name) for name in columns}
    edited = []
    for i, line in enumerate(lines, start=1):
        values = line.split(",")
        if i % 7 == 0:  # a card the online store does not know
            values[at["card_id"]] = f"card_unknown_{i}"
        if i % 11 == 0:  # an unknown merchant
            values[at["merchant_id"]] = f"m_unknown_{i}"
        # A day after the published rows, so that the store's rows are usable ...
        event_time = datetime.datetime.fromisoformat(values[at["event_time"]])
        event_time += datetime.timedelta(days=1)
        if i % 13 == 0:  # ... but for a week later: merchant rows beyond 3 days of staleness
            event_time += datetime.timedelta(days=7)
        if i % 17 == 0:  # ... and before the rows' own times: defaults
            event_time -= datetime.timedelta(days=3)
        if i % 23 == 0:  # whole seconds (no fraction in the logged request)
            event_time = event_time.replace(microsecond=0)
        values[at["event_time"]] = event_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if i % 19 == 0:  # optional fields missing: null country, unknown category
            values[at["country"]] = ""
            values[at["entry_mode"]] = ""
        if i % 29 == 0:  # outside the contract (categories are lower-case tokens): an error row
            values[at["merchant_category"]] = "café/bar"
        edited.append(",".join(values))
    edited[5:5] = ["not,a,valid,line", edited[0].replace(",", ";")]
    landing = tmp_path / "landing"
    folder = landing / "transactions" / (DAYS[-1] + datetime.timedelta(days=8)).isoformat()
    folder.mkdir(parents=True)
    mixed = folder / "mixed.csv"
    mixed.write_text("\n".join([header, *edited]) + "\n")
    (folder / "header-only.csv").write_text(header + "\n")
    (folder / "empty.csv").write_text("")
    now = datetime.datetime.combine(
        DAYS[-1] + datetime.timedelta(days=8), datetime.time(1), datetime.UTC
    )

    with OnlineStore(settings.online_store_path) as store:
        for path in sorted(folder.iterdir()):
            name = path.relative_to(landing).as_posix()
            batch = score_file(path, landing, model, store, run_id="vectorised", now=now)
            count, valid, errors = read_valid_lines(path, landing, now)
            reference = score_row_by_row(valid, model, store, name)
            expected = pl.concat(
                [reference, _error_rows(errors, model, name, now)], how="diagonal_relaxed"
            )
            assert batch.lines == count == batch.scored + batch.errors
            assert batch.scored == reference.height
            # Same columns, types and values; scores bit for bit.
            assert_frame_equal(
                batch.rows.drop("latency_ms", strict=False),
                expected.drop("latency_ms", strict=False),
                check_exact=True,
            )
            assert_frame_equal(
                _score_online(valid, model, store, name, "again").drop("latency_ms", strict=False),
                reference.drop("latency_ms", strict=False),
                check_exact=True,
            )
            if path == mixed:
                ok = batch.rows.filter(pl.col("status") == "ok")
                # Every line is scored but the two broken ones and those outside the contract;
                # the file's time is shared out.
                outside = len(lines) // 29
                assert ok.height == len(lines) - outside and batch.errors == 2 + outside
                refused = batch.rows.filter(pl.col("status") == "error").get_column("error")
                assert refused.str.contains("'café/bar' in merchant_category").sum() == outside
                assert ok.get_column("latency_ms").n_unique() == 1
                assert ok.get_column("latency_ms")[0] > 0
                # Unknown and unusable rows took the defaults, the others the store's values.
                defaulted = ok.filter(
                    (pl.col("seconds_since_card_txn") == 30 * 86_400.0)
                    & (pl.col("txn_count_7d") == CARD_BEHAVIOUR.feature("txn_count_7d").default)
                )
                assert 0 < defaulted.height < ok.height
                assert defaulted.get_column("card_id").str.starts_with("card_unknown_").any()
                prior = MERCHANT_RISK.feature("fraud_rate_30d").default
                stale = ok.filter(pl.col("fraud_rate_30d") == prior)
                assert 0 < stale.height < ok.height
                assert stale.get_column("merchant_id").str.starts_with("m_unknown_").any()
            else:
                assert batch.rows.height == batch.scored == 0
                # Through the exactly-once protocol: checkpointed with no rows, once.
                from mlops_assets.features.online_store import open_online_store
                from mlops_assets.serving.streaming import score_landed_file

                scratch = str(tmp_path / "scratch_log")
                protocol = {
                    "load_model": lambda: model,
                    "open_store": lambda: open_online_store(settings),
                    "log_uri": scratch,
                    "checkpoint_uri": scratch + "_checkpoint",
                    "log_table": "scratch/log",
                    "checkpoint_table": "scratch/checkpoint",
                    "run_id": "no-lines",
                }
                first = score_landed_file(landing, name, **protocol)
                assert not first.skipped and first.log_version is None
                assert (first.lines, first.scored, first.errors) == (0, 0, 0)
                assert score_landed_file(landing, name, **protocol).skipped
