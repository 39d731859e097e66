"""The inference log written by a process of its own (`serving.log_writer`), on a temporary
Delta table: every row once, in order, whatever happens to the writer."""

import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
from deltalake import DeltaTable

from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.serving.inference_log import InferenceLogError, inference_schema
from mlops_assets.serving.log_writer import (
    THROUGH_KEY,
    WRITER_KEY,
    ProcessInferenceLog,
    _encode,
    _Reader,
    committed_through,
)
from mlops_assets_tests.integration.test_inference_log import record_from_threads, row


def _ids(uri) -> list[int]:
    table = pl.read_delta(str(uri))
    return sorted(int(r[1:]) for r in table.get_column("request_id").to_list())


def _until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_rows_from_many_threads_land_once_in_order_through_the_writer_process(tmp_path):
    uri = tmp_path / "log"
    log = ProcessInferenceLog(
        uri, schema=inference_schema(FRAUD_SPEC), flush_rows=700, flush_interval_ms=100
    )
    assert log.pid is not None and log.pid != os.getpid()

    record_from_threads(log)
    # A flush commits everything recorded before it, at once.
    log.flush()
    assert log.stats().pending == 0
    log.record(row(4000))
    log.close()
    stats = log.stats()
    assert (stats.recorded, stats.written, stats.pending, stats.failures) == (4001, 4001, 0, 0)
    assert 2 <= stats.commits < 4001 / 50
    assert stats.last_version is not None and stats.last_flush_at is not None
    assert _ids(uri) == list(range(4001))
    table = pl.read_delta(str(uri))
    assert table.schema["event_time"] == pl.Datetime("us", "UTC")
    assert table.schema["is_foreign"] == pl.Boolean
    assert table.get_column("event_time").sort().to_list() == sorted(
        row(i)["event_time"] for i in range(4001)
    )
    # The writer has ended with the log; a closed log refuses rows.
    with pytest.raises(InferenceLogError, match="closed"):
        log.record(row(1))
    with pytest.raises(ProcessLookupError):
        os.kill(log.pid, 0)


def test_rows_wait_at_most_the_flush_interval_and_bad_rows_are_refused_here(tmp_path):
    uri = tmp_path / "log"
    with ProcessInferenceLog(
        uri, schema=inference_schema(FRAUD_SPEC), flush_rows=10_000, flush_interval_ms=100
    ) as log:
        log.record(row(1))
        _until(lambda: log.stats().written == 1)
        assert pl.read_delta(str(uri)).height == 1
        with pytest.raises(InferenceLogError, match=r"unknown column\(s\) \['surprise'\]"):
            log.record(row(2, surprise=1))
        log.add_columns({"extra_signal": pl.Float64})
        log.record(row(3, extra_signal=0.5))
    table = pl.read_delta(str(uri)).sort("request_id")
    assert table.get_column("extra_signal").to_list() == [None, 0.5]


def test_a_killed_writer_is_replaced_and_every_row_lands_once(tmp_path):
    uri = tmp_path / "log"
    log = ProcessInferenceLog(
        uri, schema=inference_schema(FRAUD_SPEC), flush_rows=300, flush_interval_ms=200
    )
    for i in range(1000):
        log.record(row(i))
    first = log.pid
    # Killed with rows committed, rows in its buffer and rows on their way.
    _until(lambda: log.stats().written > 0)
    for i in range(1000, 1200):
        log.record(row(i))
    os.kill(first, signal.SIGKILL)
    _until(lambda: log.pid != first)
    assert log.stats().failures >= 1  # the death is counted
    for i in range(1200, 1500):
        log.record(row(i))
    log.close()
    stats = log.stats()
    assert (stats.recorded, stats.written, stats.pending) == (1500, 1500, 0)
    assert stats.failures >= 1
    assert _ids(uri) == list(range(1500))


def test_a_new_writer_skips_the_chunks_its_predecessor_committed(tmp_path):
    """A writer that died after a commit, before saying so: the server sends that commit's
    chunks again, and the writer taking over finds them in the table's history."""
    uri = str(tmp_path / "log")
    schema = inference_schema(FRAUD_SPEC)
    writer_id = "w-test"

    def chunk(seq: int, ids: range) -> tuple:
        from mlops_assets.serving.inference_log import _Columns

        columns = _Columns(schema)
        columns.extend([row(i) for i in ids])
        return ("rows", seq, columns.dtypes, columns.columns, columns.height)

    def run_writer(messages: list[tuple]) -> list[tuple]:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_assets.serving.log_writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        process.stdin.write(b"".join(_encode(m) for m in messages))
        process.stdin.close()
        reader, replies = _Reader(process.stdout.fileno()), []
        while not reader.ended:
            replies += reader.read()
        assert process.wait(timeout=60) == 0
        return replies

    start = ("start", uri, schema, 10_000, 60_000, writer_id, None)
    first = run_writer([start, chunk(0, range(0, 10)), chunk(1, range(10, 20)), ("close",)])
    assert first[-1] == ("closed", None)
    assert first[-2][0] == "state" and first[-2][2] == 1
    assert committed_through(uri, writer_id) == 1
    entry = DeltaTable(uri).history(1)[0]
    assert (entry[WRITER_KEY], entry[THROUGH_KEY]) == (writer_id, "1")
    # The successor gets chunks 0 and 1 again, then chunk 2.
    second = run_writer(
        [
            start,
            chunk(0, range(0, 10)),
            chunk(1, range(10, 20)),
            chunk(2, range(20, 25)),
            ("close",),
        ]
    )
    assert second[0][0] == "state" and second[0][2] == 1  # what it found, before any chunk
    assert second[-1] == ("closed", None)
    assert _ids(uri) == list(range(25))
    assert committed_through(uri, "another writer") == -1


def test_a_failing_write_keeps_the_rows_pending_and_reports_it_then_writes_them(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the table's folder would be")
    log = ProcessInferenceLog(
        blocked, schema=inference_schema(FRAUD_SPEC), flush_rows=10_000, flush_interval_ms=100
    )
    log.record_many([row(i) for i in range(5)])
    with pytest.raises(InferenceLogError, match="flush failed"):
        log.flush()
    stats = log.stats()
    assert (stats.pending, stats.written) == (5, 0)
    assert stats.failures >= 1 and stats.last_error
    # The writer retries on its own; once the path is free, the rows land, once.
    blocked.unlink()
    log.record(row(5))
    _until(lambda: log.stats().pending == 0)
    assert log.stats().last_error is None
    log.close()
    assert _ids(blocked) == list(range(6))


def test_a_writer_killed_before_the_close_is_answered_is_replaced_to_finish_it(tmp_path):
    """A server stopped at once: a signal to its process group can reach the writer while
    it is still importing, before it ignores signals."""
    uri = tmp_path / "log"
    log = ProcessInferenceLog(uri, schema=inference_schema(FRAUD_SPEC), flush_interval_ms=100)
    log.record_many([row(i) for i in range(100)])
    first = log.pid
    os.kill(first, signal.SIGKILL)
    log.close(timeout=120)
    assert log.pid != first
    stats = log.stats()
    assert (stats.written, stats.pending) == (100, 0) and stats.failures >= 1
    assert _ids(uri) == list(range(100))


def test_a_replacement_writer_catching_up_on_a_large_backlog_does_not_stall(tmp_path):
    """150,000 rows no commit holds (about 18 MB of messages, in about 80 chunks): the new
    writer commits and answers while it is still being sent the backlog, and the chunks it
    commits are dropped from the backlog as it is being sent."""
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the table's folder would be")
    log = ProcessInferenceLog(
        blocked,
        schema=inference_schema(FRAUD_SPEC),
        flush_rows=10,
        flush_interval_ms=50,
        max_pending=200_000,
    )
    for start in range(0, 150_000, 1000):
        log.record_many([row(i) for i in range(start, start + 1000)])
    _until(lambda: log.stats().failures >= 1)
    first = log.pid
    blocked.unlink()
    os.kill(first, signal.SIGKILL)
    _until(lambda: log.stats().pending == 0, seconds=240)
    assert log.pid != first
    log.close(timeout=120)
    assert _ids(blocked) == list(range(150_000))
