"""A partition just written is handed to the next reader of that table version, once."""

import datetime

import polars as pl
from polars.testing import assert_frame_equal

from mlops_assets.lakehouse import handoff
from mlops_assets.lakehouse.delta_io import read_partition, table_version, write_partition

DAY = datetime.date(2026, 1, 1)
OTHER_DAY = datetime.date(2026, 1, 2)


def _rows(day: datetime.date, n: int = 5) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"t{i}" for i in range(n)],
            "_line_number": list(range(2, n + 2)),
            "_ingested_at": [datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)] * n,
            "landing_date": [day] * n,
        },
        schema_overrides={"_ingested_at": pl.Datetime("us", "UTC")},
    )


def test_the_kept_frame_is_what_a_read_of_that_version_returns_and_is_taken_once(tmp_path):
    uri = str(tmp_path / "bronze")
    rows = _rows(DAY)
    written = write_partition(uri, rows, {"landing_date": DAY})
    assert handoff.keep(written, rows, {"landing_date": DAY})
    kept = handoff.take(uri, table_version(uri), {"landing_date": DAY})
    assert kept is not None
    assert_frame_equal(kept, read_partition(uri, {"landing_date": DAY}))
    assert handoff.take(uri, table_version(uri), {"landing_date": DAY}) is None


def test_a_later_commit_another_partition_or_location_reads_the_table(tmp_path):
    uri = str(tmp_path / "bronze")
    rows = _rows(DAY)
    written = write_partition(uri, rows, {"landing_date": DAY})
    handoff.keep(written, rows, {"landing_date": DAY})
    assert handoff.take(uri, written.version, {"landing_date": OTHER_DAY}) is None
    assert handoff.take(str(tmp_path / "elsewhere"), written.version, {"landing_date": DAY}) is None
    write_partition(uri, _rows(OTHER_DAY, 3), {"landing_date": OTHER_DAY})
    assert handoff.take(uri, table_version(uri), {"landing_date": DAY}) is None
    handoff.forget()


def test_a_frame_that_would_not_read_back_as_itself_is_not_kept(tmp_path):
    uri = str(tmp_path / "bronze")
    rows = _rows(DAY)
    written = write_partition(uri, rows, {"landing_date": DAY})
    # Columns in another order than the table's.
    assert not handoff.keep(written, rows.select(reversed(rows.columns)), {"landing_date": DAY})
    assert handoff.take(uri, written.version, {"landing_date": DAY}) is None
    # Timestamps in another unit than the lake's.
    coarse = rows.with_columns(pl.col("_ingested_at").dt.cast_time_unit("ms"))
    assert not handoff.keep(written, coarse, {"landing_date": DAY})
    assert handoff.take(uri, written.version, {"landing_date": DAY}) is None
