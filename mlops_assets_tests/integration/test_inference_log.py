"""The inference log on a temporary Delta table: buffered appends, batch frames, compaction."""

import datetime
import threading

import polars as pl
import pytest
from deltalake import DeltaTable

from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.lakehouse.delta_io import SchemaChangeError, append_table
from mlops_assets.serving.inference_log import (
    InferenceLog,
    InferenceLogError,
    compact_inference_log,
    feature_schema,
    inference_schema,
    prepare_frame,
)

T0 = datetime.datetime(2026, 1, 1, 23, 59, 30, tzinfo=datetime.UTC)


def row(i: int, **extra) -> dict:
    return {
        "request_id": f"r{i}",
        "mode": "online",
        "logged_at": T0,
        "event_time": T0 + datetime.timedelta(seconds=i % 60),
        "card_id": f"c{i % 7}",
        "model_name": "dev.fraud_detector",
        "model_version": "1",
        "model_alias": "champion",
        "score": i / 10_000,
        "decision": False,
        "threshold": 0.5,
        "latency_ms": 0.4,
        "status": "ok",
        "amount": float(i),
        "hour_of_day": 23,
        "is_foreign": i % 2 == 0,
        **extra,
    }


def record_from_threads(log, threads: int = 4, each: int = 1000) -> None:
    """Rows 0 to threads * each - 1 recorded by `threads` threads at once, each its range."""

    def record(start: int) -> None:
        for i in range(start, start + each):
            log.record(row(i))

    started = [threading.Thread(target=record, args=(k * each,)) for k in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()


def test_append_table_adds_files_across_partitions_and_grows_the_schema(tmp_path):
    uri = tmp_path / "t"
    days = [datetime.date(2026, 1, 1), datetime.date(2026, 1, 2)]
    first = append_table(
        uri, pl.DataFrame({"day": days * 2, "x": [1, 2, 3, 4]}), partition_by=["day"]
    )
    assert (first.rows_written, first.table_rows) == (4, 4)
    second = append_table(
        uri, pl.DataFrame({"day": days[:1], "x": [5], "y": ["new"]}), partition_by=["day"]
    )
    assert second.added_columns == ("y",) and second.table_rows == 5
    table = pl.read_delta(str(uri)).sort("x")
    assert table["x"].to_list() == [1, 2, 3, 4, 5]
    assert table["y"].to_list() == [None] * 4 + ["new"]
    with pytest.raises(SchemaChangeError, match="x: int64 -> string"):
        append_table(uri, pl.DataFrame({"day": days[:1], "x": ["a"]}), partition_by=["day"])
    # Appends never rewrite: every commit after creation only adds files.
    for entry in DeltaTable(str(uri)).history():
        if entry["operation"] == "WRITE":
            assert entry["operationParameters"]["mode"] == "Append"

    def writer(i: int) -> None:
        append_table(uri, pl.DataFrame({"day": days[1:], "x": [100 + i]}), partition_by=["day"])

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pl.read_delta(str(uri)).height == 11


def test_recorded_rows_from_many_threads_all_land_once_in_few_commits(tmp_path):
    uri = tmp_path / "log"
    log = InferenceLog(
        uri, schema=inference_schema(FRAUD_SPEC), flush_rows=700, flush_interval_ms=50
    )

    record_from_threads(log)
    log.close()
    stats = log.stats()
    assert (stats.recorded, stats.written, stats.pending) == (4000, 4000, 0)
    assert 1 <= stats.commits < 4000 / 50
    table = pl.read_delta(str(uri))
    assert table.height == 4000 and table["request_id"].n_unique() == 4000
    # Partitioned by the UTC day of the event; columns typed as the feature frame has them.
    assert set(table["day"].to_list()) == {datetime.date(2026, 1, 1), datetime.date(2026, 1, 2)}
    assert table.schema["hour_of_day"] == pl.Int64 and table.schema["is_foreign"] == pl.Boolean
    assert table.schema["event_time"] == pl.Datetime("us", "UTC")
    with pytest.raises(InferenceLogError, match="closed"):
        log.record(row(1))


def test_rows_wait_at_most_the_flush_interval(tmp_path):
    uri = tmp_path / "log"
    with InferenceLog(uri, flush_rows=10_000, flush_interval_ms=100) as log:
        log.record({k: v for k, v in row(1).items() if k in inference_schema()})
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=10)
        while log.stats().written == 0 and datetime.datetime.now() < deadline:
            threading.Event().wait(0.02)
        assert pl.read_delta(str(uri)).height == 1


def test_batch_frames_land_in_the_same_shape_and_new_features_add_columns(tmp_path):
    uri = tmp_path / "log"
    log = InferenceLog(uri, schema=inference_schema(FRAUD_SPEC), start=False)
    log.record(row(1))
    log.flush()
    scored = pl.DataFrame(
        {
            "request_id": ["b1", "b2"],
            "mode": ["batch", "batch"],
            "event_time": [T0, T0],
            "transaction_id": ["t1", "t2"],
            "score": [0.1, 0.9],
            "decision": [False, True],
            "status": ["ok", "ok"],
            "hour_of_day": pl.Series([1, 2], dtype=pl.Int32),  # cast to the table's Int64
            "new_feature": [1.5, 2.5],
        }
    )
    result = log.append(scored)
    assert result.rows_written == 2 and result.table_rows == 3
    assert "new_feature" in result.added_columns
    table = pl.read_delta(str(uri)).sort("request_id")
    assert table["mode"].to_list() == ["batch", "batch", "online"]
    assert table["new_feature"].to_list() == [1.5, 2.5, None]
    assert table.schema["hour_of_day"] == pl.Int64
    assert table["logged_at"].null_count() == 0 and table["day"].null_count() == 0
    with pytest.raises(ValueError, match="'mode' holds"):
        log.append(scored.with_columns(pl.lit("nightly").alias("mode")))
    with pytest.raises(ValueError, match="required columns"):
        log.append(scored.drop("status"))
    log.close()


def test_compaction_keeps_every_row_in_fewer_files(tmp_path):
    uri = tmp_path / "log"
    log = InferenceLog(uri, schema=inference_schema(FRAUD_SPEC), start=False)
    for i in range(12):
        log.record(row(i))
        log.flush()
    before = pl.read_delta(str(uri)).sort("request_id")
    files_before = len(DeltaTable(str(uri)).file_uris())
    result = compact_inference_log(uri, days=[datetime.date(2026, 1, 1)], vacuum_retention_hours=0)
    assert result["files_removed"] >= 2 and result["files_added"] == 1
    assert len(DeltaTable(str(uri)).file_uris()) < files_before
    assert pl.read_delta(str(uri)).sort("request_id").equals(before)
    log.close()


def test_feature_schema_follows_the_spec():
    schema = feature_schema(FRAUD_SPEC)
    assert list(schema) == FRAUD_SPEC.feature_columns
    assert schema["merchant_category"] == pl.String and schema["amount"] == pl.Float64
    assert schema["txn_count_24h"] == pl.Int64 and schema["seconds_since_card_txn"] == pl.Float64


def test_a_table_from_before_new_card_stays_readable_and_gains_the_column(tmp_path):
    uri = tmp_path / "log"
    # A log written before `new_card` and `card_without_history` existed.
    old_schema = {
        k: v
        for k, v in inference_schema(FRAUD_SPEC).items()
        if k not in ("new_card", "card_without_history")
    }
    old = InferenceLog(uri, schema=old_schema, start=False)
    frame = prepare_frame(
        pl.DataFrame([{k: v for k, v in row(1).items() if k in old_schema}]), old._rows.dtypes
    )
    first = append_table(uri, frame.drop("new_card"), partition_by=["day"])
    assert "new_card" not in pl.read_delta(str(uri)).columns
    # The server reopens it with today's schema, keeping the types of the columns it has.
    schema = inference_schema(FRAUD_SPEC)
    for name, dtype in pl.scan_delta(str(uri)).collect_schema().items():
        schema.setdefault(name, dtype)
    log = InferenceLog(uri, schema=schema, start=False)
    log.record(row(2, new_card=True, card_without_history=True))
    log.record(row(3, new_card=False, card_without_history=False))
    log.close()
    table = pl.read_delta(str(uri)).sort("request_id")
    assert table["request_id"].to_list() == ["r1", "r2", "r3"]
    assert table["new_card"].to_list() == [None, True, False]
    assert table["card_without_history"].to_list() == [None, True, False]
    assert table.schema["new_card"] == pl.Boolean
    # Readers of the old rows see them unchanged; the first version still reads as it was.
    before = pl.read_delta(str(uri), version=first.version)
    assert before["request_id"].to_list() == ["r1"] and "new_card" not in before.columns
    assert table.filter(pl.col("request_id") == "r1")["score"].to_list() == [1 / 10_000]


def test_a_failed_flush_keeps_its_rows_in_front_of_later_ones_and_writes_them_once(tmp_path):
    good = tmp_path / "log"
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the table's folder would be")
    schema = inference_schema(FRAUD_SPEC)
    log = InferenceLog(blocked, schema=schema, start=False)
    log.record_many([row(i) for i in range(5)])
    with pytest.raises(Exception):  # noqa: B017 - whatever the file system says
        log.flush()
    stats = log.stats()
    assert (stats.pending, stats.failures, stats.written) == (5, 1, 0)
    assert stats.last_error
    # Rows recorded after the failure, one of them with a column added meanwhile.
    log.add_columns({"extra_signal": pl.Float64})
    log.record(row(5, extra_signal=0.25))
    log.record(row(6))
    log.uri = str(good)
    assert log.flush() == 7
    assert log.stats().pending == 0 and log.stats().last_error is None
    table = pl.read_delta(str(good)).sort("request_id")
    assert table.get_column("request_id").to_list() == [f"r{i}" for i in range(7)]
    assert table.get_column("extra_signal").to_list() == [None] * 5 + [0.25, None]
    # Times are instants to the microsecond.
    assert table.get_column("event_time").to_list() == [row(i)["event_time"] for i in range(7)]


def test_a_row_with_an_unknown_column_or_a_naive_time_is_refused_and_nothing_is_buffered(tmp_path):
    log = InferenceLog(tmp_path / "log", schema=inference_schema(FRAUD_SPEC), start=False)
    log.record(row(0))
    with pytest.raises(InferenceLogError, match=r"unknown column\(s\) \['surprise'\]"):
        log.record(row(1, surprise=1))
    with pytest.raises(InferenceLogError, match="surprise"):
        log.record_many([row(2), row(3, surprise=2)])
    # A time without a zone is refused too, before any of the row's columns is buffered.
    naive = {**row(4), "logged_at": datetime.datetime(2026, 1, 1, 12)}
    with pytest.raises(InferenceLogError, match="column 'logged_at' holds .* not a time"):
        log.record(naive)
    with pytest.raises(InferenceLogError, match="logged_at"):
        log.record_many([row(5), naive])
    assert log.stats().pending == 1
    log.record(row(6))
    assert log.flush() == 2
    assert pl.read_delta(str(tmp_path / "log")).get_column("request_id").sort().to_list() == [
        "r0",
        "r6",
    ]


def test_a_flush_after_the_table_was_removed_creates_it_again(tmp_path):
    import shutil

    uri = tmp_path / "log"
    log = InferenceLog(uri, schema=inference_schema(FRAUD_SPEC), start=False)
    log.record(row(0))
    log.flush()
    log.record(row(1))
    first = DeltaTable(str(uri)).version()
    log.flush()  # through the handle of the first flush, updated
    assert DeltaTable(str(uri)).version() == first + 1
    shutil.rmtree(uri)
    log.record(row(2))
    # The handle's table is gone: that flush may fail (its row stays pending); the next one
    # opens the folder afresh and creates the table.
    try:
        log.flush()
    except Exception:  # noqa: BLE001 - delta-rs' error about the missing version
        assert log.stats().pending == 1
        assert log.flush() == 1
    assert log.stats().pending == 0
    assert pl.read_delta(str(uri)).get_column("request_id").to_list() == ["r2"]
