import datetime

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from mlops_assets.lakehouse.delta_io import (
    PartitionMismatchError,
    SchemaChangeError,
    SchemaPolicy,
    partition_predicate,
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

    result = write_partition(uri, day_frame(DAY2, 2, start=100), {"landing_date": DAY2})

    after = scan_table(uri).collect()
    assert after.filter(pl.col("landing_date") != DAY2).sort("id").equals(before)
    assert sorted(after.filter(pl.col("landing_date") == DAY2)["id"]) == [
        f"{DAY2}-100",
        f"{DAY2}-101",
    ]
    assert result.rows_written == 2
    assert result.table_rows == 5 + 2 + 3
    assert result.version == 3
    assert result.partition == {"landing_date": "2026-01-02"}
    # The commit removed only DAY2's files.
    operation = DeltaTable(uri).history(1)[0]
    assert operation["operation"] == "WRITE"
    assert "2026-01-02" in operation["operationParameters"]["predicate"]


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


def test_a_crash_mid_write_leaves_the_table_at_its_previous_version(tmp_path):
    uri = str(tmp_path / "t")
    write_partition(uri, day_frame(DAY1, 5), {"landing_date": DAY1})
    write_partition(uri, day_frame(DAY2, 5), {"landing_date": DAY2})
    version = table_version(uri)
    content = scan_table(uri).collect().sort("id")

    replacement = day_frame(DAY2, 1000, start=500).to_arrow(compat_level=pl.CompatLevel.oldest())
    batches = replacement.to_batches(max_chunksize=100)

    def crashing():
        for index, batch in enumerate(batches):
            if index == 3:
                raise RuntimeError("writer killed mid-write")
            yield batch

    reader = pa.RecordBatchReader.from_batches(replacement.schema, crashing())
    with pytest.raises(Exception, match="writer killed mid-write"):
        write_deltalake(
            uri, reader, mode="overwrite", predicate=partition_predicate({"landing_date": DAY2})
        )

    assert table_version(uri) == version
    assert scan_table(uri).collect().sort("id").equals(content)


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
    assert table_version(uri) == 0


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


def test_partition_predicates_quote_values_and_refuse_odd_column_names():
    assert partition_predicate({"landing_date": DAY1}) == "landing_date = '2026-01-01'"
    assert partition_predicate({"source": "o'brien", "n": 3}) == "source = 'o''brien' AND n = 3"
    with pytest.raises(ValueError, match="not a plain identifier"):
        partition_predicate({"a; drop": "x"})
