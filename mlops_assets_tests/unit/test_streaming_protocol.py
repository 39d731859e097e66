"""The streaming exactly-once protocol: pending files, the ledger's two tables, recovery."""

import datetime
import os
import time
from types import SimpleNamespace

import polars as pl
import pytest

from mlops_assets.lakehouse.delta_io import scan_table, table_version
from mlops_assets.serving.streaming import (
    CHECKPOINT_SCHEMA,
    StreamLedger,
    checkpoint_row,
    pending_files,
    score_landed_file,
)

DAY = datetime.date(2026, 1, 2)


def land(root, name: str, age_seconds: float = 60.0) -> str:
    path = root / "transactions" / DAY.isoformat() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("transaction_id\n")
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path.relative_to(root).as_posix()


def ledger(tmp_path) -> StreamLedger:
    return StreamLedger(
        str(tmp_path / "lake" / "serving" / "inference_log"),
        str(tmp_path / "lake" / "serving" / "stream_checkpoint"),
    )


def log_rows(file: str, n: int = 3) -> pl.DataFrame:
    return pl.DataFrame({"request_id": [f"stream:{file}:{i}" for i in range(n)], "day": [DAY] * n})


def test_pending_files_are_landed_not_checkpointed_and_settled(tmp_path):
    root = tmp_path / "landing"
    old, done = land(root, "a.csv"), land(root, "b.csv")
    fresh = land(root, "c.csv", age_seconds=0.0)
    land(root, "d.csv.tmp")
    assert pending_files(root, {done}, settle_seconds=5.0) == [old]
    assert pending_files(root, {done}) == [old, fresh]
    assert pending_files(root, set(), settle_seconds=5.0, now=time.time() + 10) == [
        old,
        done,
        fresh,
    ]
    assert pending_files(tmp_path / "nowhere", set()) == []


def test_the_ledger_finds_a_files_commit_and_its_checkpoint(tmp_path):
    book = ledger(tmp_path)
    assert book.rows().schema == pl.Schema(CHECKPOINT_SCHEMA)
    assert book.done() == set() and book.checkpointed("x") is None
    assert book.committed_version("transactions/2026-01-02/a.csv") is None
    first = book.commit_rows("transactions/2026-01-02/a.csv", log_rows("a"))
    second = book.commit_rows("transactions/2026-01-02/b.csv", log_rows("b"))
    assert book.committed_version("transactions/2026-01-02/a.csv") == first.version
    assert book.committed_version("transactions/2026-01-02/b.csv") == second.version
    assert second.version == first.version + 1 == table_version(book.log_uri)
    row = checkpoint_row(
        "transactions/2026-01-02/a.csv",
        log_version=first.version,
        batch=SimpleNamespace(lines=3, scored=2, errors=1),
        model_version="4",
        run_id="run-1",
    )
    written = book.checkpoint(row)
    assert written.version == table_version(book.checkpoint_uri)
    assert book.done() == {"transactions/2026-01-02/a.csv"}
    kept = book.checkpointed("transactions/2026-01-02/a.csv")
    assert {k: kept[k] for k in ("log_version", "lines", "scored", "errors", "model_version")} == {
        "log_version": first.version,
        "lines": 3,
        "scored": 2,
        "errors": 1,
        "model_version": "4",
    }


def test_the_ledger_refuses_an_empty_commit_and_a_malformed_checkpoint_row(tmp_path):
    book = ledger(tmp_path)
    with pytest.raises(ValueError, match="no rows of 'f.csv' to commit to serving/inference_log"):
        book.commit_rows("f.csv", log_rows("f", n=0))
    row = checkpoint_row("f.csv", log_version=None, batch=None, model_version="1", run_id="r")
    with pytest.raises(ValueError, match=r"missing \['lines'\], unknown \['line'\]"):
        book.checkpoint({**{k: v for k, v in row.items() if k != "lines"}, "line": 1})
    assert book.done() == set()


def test_a_file_in_the_log_without_checkpoint_is_checkpointed_not_scored_then_skipped(tmp_path):
    root = tmp_path / "landing"
    file = land(root, "a.csv")
    book = ledger(tmp_path)
    # A stop between the two writes: the rows are committed, the checkpoint row is not.
    committed = book.commit_rows(file, log_rows(file))

    def no_store():
        raise AssertionError("a file already in the log must not be scored again")

    arguments = {
        "load_model": lambda: SimpleNamespace(version="5"),
        "open_store": no_store,
        "log_uri": book.log_uri,
        "checkpoint_uri": book.checkpoint_uri,
        "log_table": book.log_table,
        "checkpoint_table": book.checkpoint_table,
        "run_id": "run-2",
    }
    recovered = score_landed_file(root, file, **arguments)
    assert recovered.recovered and not recovered.skipped
    assert recovered.log_version == committed.version
    assert recovered.checkpoint_version == table_version(book.checkpoint_uri)
    assert recovered.lines is None and recovered.seconds == 0.0
    assert scan_table(book.log_uri).collect().height == 3
    again = score_landed_file(root, file, **{**arguments, "load_model": no_store})
    assert again.skipped and again.log_version == committed.version
    assert again.model_version == "5" and again.checkpoint_version is None
    assert book.rows().height == 1
    with pytest.raises(FileNotFoundError, match="'transactions/2026-01-02/gone.csv'"):
        score_landed_file(root, "transactions/2026-01-02/gone.csv", **arguments)
