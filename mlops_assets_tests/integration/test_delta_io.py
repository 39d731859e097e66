import datetime
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from mlops_assets.lakehouse.delta_io import (
    DuplicateKeyError,
    PartitionMismatchError,
    SchemaChangeError,
    SchemaPolicy,
    file_statistics,
    merge_partition,
    read_lineage,
    read_partition,
    scan_table,
    table_version,
    write_partition,
)

DAY1, DAY2, DAY3 = (datetime.date(2026, 1, d) for d in (1, 2, 3))


def day_frame(day: datetime.date, n: int, start: int = 0, **extra: str) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            "id": [f"{day}-{i}" for i in range(start, start + n)],
            "amount": [float(i) for i in range(start, start + n)],
            "landing_date": [day] * n,
        }
    )
    return frame.with_columns(pl.lit(v).alias(k) for k, v in extra.items())


def test_rewriting_one_partition_leaves_the_others_intact(tmp_path):
    uri = str(tmp_path / "t")
    for day, n in ((DAY1, 5), (DAY2, 7), (DAY3, 3)):
        write_partition(uri, day_frame(day, n), {"landing_date": day})
    before = scan_table(uri).filter(pl.col("landing_date") != DAY2).collect().sort("id")
    files_before = files_by_partition(uri)

    result = write_partition(uri, day_frame(DAY2, 2, start=100), {"landing_date": DAY2})

    after = scan_table(uri).collect()
    assert after.filter(pl.col("landing_date") != DAY2).sort("id").equals(before)
    assert sorted(after.filter(pl.col("landing_date") == DAY2)["id"]) == [
        f"{DAY2}-100",
        f"{DAY2}-101",
    ]
    assert result.rows_written == 2
    assert result.table_rows == 5 + 2 + 3
    # Creating the table takes two commits (create, then add the files), then one per write.
    assert result.version == 4
    assert result.partition == {"landing_date": "2026-01-02"}
    # The commit replaced DAY2's files and kept every other file as it was.
    files_after = files_by_partition(uri)
    assert files_after["2026-01-01"] == files_before["2026-01-01"]
    assert files_after["2026-01-03"] == files_before["2026-01-03"]
    assert not files_after["2026-01-02"] & files_before["2026-01-02"]
    assert DeltaTable(uri).history(1)[0]["operation"] == "WRITE"


def files_by_partition(uri: str) -> dict[str, set[str]]:
    actions = pl.DataFrame(DeltaTable(uri).get_add_actions(flatten=True))
    out: dict[str, set[str]] = {}
    for row in actions.iter_rows(named=True):
        out.setdefault(str(row["partition.landing_date"]), set()).add(row["path"])
    return out


def test_rewriting_a_partition_with_the_same_rows_changes_no_counts(tmp_path):
    uri = str(tmp_path / "t")
    write_partition(uri, day_frame(DAY1, 4), {"landing_date": DAY1})
    write_partition(uri, day_frame(DAY2, 6), {"landing_date": DAY2})
    again = write_partition(uri, day_frame(DAY1, 4), {"landing_date": DAY1})
    assert again.table_rows == 10
    assert scan_table(uri).collect().height == 10


def test_an_empty_partition_write_clears_only_that_partition(tmp_path):
    uri = str(tmp_path / "t")
    write_partition(uri, day_frame(DAY1, 4), {"landing_date": DAY1})
    write_partition(uri, day_frame(DAY2, 6), {"landing_date": DAY2})
    result = write_partition(uri, day_frame(DAY1, 0), {"landing_date": DAY1})
    assert result.table_rows == 6
    assert read_partition(uri, {"landing_date": DAY1}).height == 0


@pytest.mark.parametrize("crash_at", ["file", "commit"])
def test_a_crash_mid_write_leaves_the_table_at_its_previous_version(
    tmp_path, monkeypatch, crash_at
):
    uri = str(tmp_path / "t")
    write_partition(uri, day_frame(DAY1, 5), {"landing_date": DAY1})
    write_partition(uri, day_frame(DAY2, 5), {"landing_date": DAY2})
    version = table_version(uri)
    content = scan_table(uri).collect().sort("id")

    if crash_at == "file":
        # The process dies while the Parquet file is half written.
        def crash(frame, path, **kwargs):
            with open(path, "wb") as half:
                half.write(b"PAR1" + b"\0" * 100)
            raise RuntimeError("writer killed mid-write")

        monkeypatch.setattr(pl.DataFrame, "write_parquet", crash)
    else:
        # The file is complete but the process dies before the commit.
        def crash(self, *args, **kwargs):
            raise RuntimeError("writer killed mid-write")

        monkeypatch.setattr(DeltaTable, "create_write_transaction", crash)
    with pytest.raises(RuntimeError, match="writer killed mid-write"):
        write_partition(uri, day_frame(DAY2, 1000, start=500), {"landing_date": DAY2})
    monkeypatch.undo()

    assert table_version(uri) == version
    assert scan_table(uri).collect().sort("id").equals(content)
    # The next write succeeds and the stray file is never read.
    write_partition(uri, day_frame(DAY2, 3, start=900), {"landing_date": DAY2})
    assert scan_table(uri).collect().height == 8


def test_file_statistics_bound_every_value_and_skip_long_strings():
    frame = pl.DataFrame(
        {
            "at": [
                datetime.datetime(2026, 1, 1, 10, 0, 0, 123456, tzinfo=datetime.UTC),
                datetime.datetime(2026, 1, 1, 11, 0, 0, 999999, tzinfo=datetime.UTC),
            ],
            "short": ["a", "b"],
            "long": ["x" * 40, "y"],
            "amount": [1.5, None],
            "day": [DAY1, DAY2],
            "flag": [True, False],
        }
    )
    stats = file_statistics(frame)
    assert stats["numRecords"] == 2
    assert stats["minValues"] == {
        "at": "2026-01-01T10:00:00.123Z",
        "short": "a",
        "amount": 1.5,
        "day": "2026-01-01",
    }
    # The maximum is widened to the next millisecond, never truncated below a real value.
    assert stats["maxValues"]["at"] == "2026-01-01T11:00:01.000Z"
    assert "long" not in stats["maxValues"] and "flag" not in stats["maxValues"]
    assert stats["nullCount"] == {"at": 0, "short": 0, "long": 0, "amount": 1, "day": 0, "flag": 0}


def test_readers_skip_files_by_statistics_and_still_find_every_match(tmp_path):
    uri = str(tmp_path / "t")
    for day in (DAY1, DAY2, DAY3):
        frame = day_frame(day, 4).with_columns(pl.lit(day).alias("event_date"))
        write_partition(uri, frame, {"landing_date": day})
    found = scan_table(uri).filter(pl.col("event_date") == DAY2).collect()
    assert found["id"].to_list() == [f"{DAY2}-{i}" for i in range(4)]
    dataset = DeltaTable(uri).to_pyarrow_dataset()
    fragments = list(dataset.get_fragments(filter=pc.field("event_date") == DAY2))
    assert len(fragments) == 1


def test_rows_outside_the_partition_are_refused(tmp_path):
    uri = str(tmp_path / "t")
    mixed = pl.concat([day_frame(DAY1, 2), day_frame(DAY2, 1)])
    with pytest.raises(PartitionMismatchError, match="1 rows have landing_date != 2026-01-01"):
        write_partition(uri, mixed, {"landing_date": DAY1})
    assert table_version(uri) is None


def test_strict_policy_names_the_columns_that_change(tmp_path):
    uri = str(tmp_path / "t")
    write_partition(uri, day_frame(DAY1, 2), {"landing_date": DAY1}, table="silver/x")
    with pytest.raises(SchemaChangeError, match=r"silver/x.*added columns terminal_id"):
        write_partition(
            uri, day_frame(DAY2, 2, terminal_id="t1"), {"landing_date": DAY2}, table="silver/x"
        )
    with pytest.raises(SchemaChangeError, match=r"missing columns amount"):
        write_partition(uri, day_frame(DAY2, 2).drop("amount"), {"landing_date": DAY2})
    wrong_type = day_frame(DAY2, 2).with_columns(pl.col("amount").cast(pl.String))
    with pytest.raises(SchemaChangeError, match=r"changed types amount: double -> string"):
        write_partition(uri, wrong_type, {"landing_date": DAY2}, policy=SchemaPolicy.ADDITIVE)
    assert table_version(uri) == 1


def test_additive_policy_adds_new_columns_and_fills_missing_ones(tmp_path):
    uri = str(tmp_path / "t")
    write_partition(uri, day_frame(DAY1, 2), {"landing_date": DAY1}, policy=SchemaPolicy.ADDITIVE)
    added = write_partition(
        uri,
        day_frame(DAY2, 2, terminal_id="t1"),
        {"landing_date": DAY2},
        policy=SchemaPolicy.ADDITIVE,
    )
    assert added.added_columns == ("terminal_id",)
    dropped = write_partition(
        uri, day_frame(DAY3, 1).drop("amount"), {"landing_date": DAY3}, policy=SchemaPolicy.ADDITIVE
    )
    table = scan_table(uri).collect()
    assert dropped.table_rows == 5
    assert table.filter(pl.col("landing_date") == DAY1)["terminal_id"].null_count() == 2
    assert table.filter(pl.col("landing_date") == DAY3)["amount"].null_count() == 1
    assert table.filter(pl.col("landing_date") == DAY2)["terminal_id"].to_list() == ["t1", "t1"]


def test_timestamps_are_stored_as_utc_microseconds_and_naive_ones_refused(tmp_path):
    uri = str(tmp_path / "t")
    at = datetime.datetime(2026, 1, 1, 12, 30, tzinfo=datetime.UTC)
    frame = day_frame(DAY1, 2).with_columns(
        pl.lit(at).cast(pl.Datetime("ms", "Europe/Paris")).alias("at")
    )
    write_partition(uri, frame, {"landing_date": DAY1})
    stored = scan_table(uri).collect()
    assert stored.schema["at"] == pl.Datetime("us", "UTC")
    assert stored["at"].to_list() == [at, at]
    naive = day_frame(DAY2, 1).with_columns(pl.lit(datetime.datetime(2026, 1, 2)).alias("at"))
    with pytest.raises(SchemaChangeError, match="timestamp columns at have no time zone"):
        write_partition(uri, naive, {"landing_date": DAY2}, table="silver/x")


def test_concurrent_writers_create_once_and_each_report_their_own_version(tmp_path):
    uri = str(tmp_path / "t")
    days = [DAY1 + datetime.timedelta(days=i) for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(
            pool.map(
                lambda day: write_partition(uri, day_frame(day, 3), {"landing_date": day}), days
            )
        )
    assert scan_table(uri).collect().height == 18
    versions = [r.version for r in results]
    assert len(set(versions)) == len(versions)
    history = {e["version"]: e.get("mlops.write_id") for e in DeltaTable(uri).history()}
    assert all(history[v] for v in versions)


def test_lineage_is_kept_from_the_first_write_on(tmp_path):
    uri = str(tmp_path / "t")
    frame = pl.DataFrame({"k": ["a", "b"], "event_date": [DAY1, DAY1]})
    merge_partition(uri, frame, {"event_date": DAY1}, keys=["k"], lineage={"source": 1})
    assert read_lineage(uri) == {"source": 1}
    merge_partition(uri, frame.head(1), {"event_date": DAY1}, keys=["k"], lineage={"source": 2})
    assert read_lineage(uri) == {"source": 2}
    assert scan_table(uri).collect()["k"].to_list() == ["a"]
    with pytest.raises(DuplicateKeyError, match="1 rows repeat a key"):
        merge_partition(uri, pl.concat([frame, frame.head(1)]), {"event_date": DAY1}, keys=["k"])
