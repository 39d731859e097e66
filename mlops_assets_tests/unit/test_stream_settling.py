"""Which landed files streaming takes: settled (size and modification time unchanged long
enough), and checkpointed files again when their size changed."""

import datetime
import os
import time

import polars as pl
import pytest

from mlops_assets.serving.streaming import Settling, pending_files

NAME = "transactions/2026-01-02/feed.csv"


def landed(tmp_path, text: str, age: float):
    path = tmp_path / NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_a_file_first_seen_counts_as_unchanged_since_its_modification_time(tmp_path):
    path = landed(tmp_path, "h\n1\n", age=10)
    now = time.time()
    assert Settling(2.0).settled(path, NAME, now) == (path.stat().st_size, path.stat().st_mtime_ns)
    fresh = landed(tmp_path, "h\n1\n", age=0.5)
    assert Settling(2.0).settled(fresh, NAME, time.time()) is None


def test_a_size_change_restarts_the_wait_even_with_an_old_modification_time(tmp_path):
    path = landed(tmp_path, "h\n1\n", age=10)
    settling = Settling(2.0)
    now = time.time()
    assert settling.settled(path, NAME, now) is not None
    # A writer that appends and sets the modification time back (as a copy preserving it).
    old = path.stat().st_mtime_ns
    with open(path, "a") as out:
        out.write("2\n")
    os.utime(path, ns=(old, old))
    assert settling.settled(path, NAME, now + 0.1) is None
    assert settling.settled(path, NAME, now + 1.0) is None
    assert settling.settled(path, NAME, now + 2.2) == (path.stat().st_size, old)


def test_observations_survive_a_round_trip_through_plain_data(tmp_path):
    path = landed(tmp_path, "h\n", age=0.0)
    first = Settling(1.0)
    now = time.time()
    assert first.settled(path, NAME, now) is None
    again = Settling(1.0, first.observations())
    assert again.settled(path, NAME, now + 1.5) is not None
    again.keep_only([])
    assert again.observations() == {}


def test_a_negative_settle_time_is_refused():
    with pytest.raises(ValueError, match="settle_seconds must be at least 0"):
        Settling(-1.0)


def test_a_checkpointed_file_is_due_again_only_when_its_size_changed(tmp_path):
    path = landed(tmp_path, "h\n1\n", age=10)
    size = path.stat().st_size
    assert pending_files(tmp_path, {NAME: size}, settle_seconds=2.0) == []
    assert pending_files(tmp_path, {NAME: None}, settle_seconds=2.0) == []  # size unknown
    assert pending_files(tmp_path, {NAME: size - 1}, settle_seconds=2.0) == [NAME]
    assert pending_files(tmp_path, [NAME], settle_seconds=2.0) == []
    assert pending_files(tmp_path, {}, settle_seconds=2.0) == [NAME]


def test_a_continuation_stopped_between_its_two_writes_is_recovered_and_alerted(tmp_path):
    from types import SimpleNamespace

    from mlops_assets.serving.streaming import StreamLedger, checkpoint_row, score_landed_file

    root = tmp_path / "landing"
    path = landed(root, "h\n1\n2\n", age=10)
    book = StreamLedger(
        str(tmp_path / "lake" / "serving" / "inference_log"),
        str(tmp_path / "lake" / "serving" / "stream_checkpoint"),
    )
    day = {"day": [datetime.date(2026, 1, 2)] * 2}
    first = book.commit_rows(
        NAME, pl.DataFrame({"request_id": [f"stream:{NAME}:{i}" for i in (2, 3)], **day})
    )
    scored_size = path.stat().st_size
    book.checkpoint(
        checkpoint_row(
            NAME,
            log_version=first.version,
            batch=SimpleNamespace(lines=2, scored=2, errors=0),
            model_version="1",
            run_id="r1",
            size=scored_size,
            mtime_ns=path.stat().st_mtime_ns,
            last_line=3,
        )
    )
    with open(path, "a") as out:
        out.write("3\n")
    # The continuation's rows were committed, then the run stopped before its checkpoint row.
    later = book.commit_rows(
        f"{NAME}#after-line-3",
        pl.DataFrame({"request_id": [f"stream:{NAME}:4"], "day": day["day"][:1]}),
    )

    def no_store():
        raise AssertionError("rows already in the log must not be scored again")

    raised = []
    outcome = score_landed_file(
        root,
        NAME,
        load_model=lambda: SimpleNamespace(version="1"),
        open_store=no_store,
        log_uri=book.log_uri,
        checkpoint_uri=book.checkpoint_uri,
        log_table=book.log_table,
        checkpoint_table=book.checkpoint_table,
        run_id="r2",
        alert=lambda message, details: raised.append((message, details)),
    )
    assert outcome.recovered and outcome.continued and outcome.log_version == later.version
    assert (outcome.previous_size, outcome.size) == (scored_size, path.stat().st_size)
    [(message, details)] = raised
    assert message == (
        f"landed file {NAME} changed after it was scored: {scored_size} bytes when scored, "
        f"{path.stat().st_size} bytes now; the lines after line 3 are scored as a continuation"
    )
    assert details["continued_after_line"] == 3
    row = book.checkpointed(NAME)
    assert (row["size"], row["last_line"], row["log_version"]) == (
        path.stat().st_size,
        4,
        later.version,
    )
    assert book.sizes() == {NAME: path.stat().st_size}
