"""Bronze on Spark reads the landing files on the executors and writes polars' tables.

The hostile landing day of `test_bronze_hostile_feeds` (byte-order mark, CRLF, quoted fields
over several lines, gzip, another separator, binary, a header without required columns,
hundreds of extra columns, a line over the bound, an unterminated quote) goes through bronze
on both engines; the bronze and quarantine partitions are equal row for row, every reason
included. One Spark session (local[2]).
"""

import datetime

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.defs.resources import SparkResource
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.lakehouse.landing import day_files, read_landing_file
from mlops_assets.lakehouse.spark_landing import read_landing_files
from mlops_assets.settings import load_settings
from mlops_assets.transforms.silver import TRANSACTIONS
from mlops_assets_tests.integration.test_bronze_hostile_feeds import (
    BRONZE,
    DAY1,
    definitions,
    hostile_day,
    land,
    run,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# Stamped with the wall clock of the run that wrote them.
RUN_TIME_COLUMNS = ("_ingested_at", "quarantined_at")
KEYS = ["_source_file", "_line_number"]


@pytest.fixture(scope="module")
def spark_session():
    return SparkResource.from_settings(load_settings({"MLOPS_SPARK_MASTER": "local[2]"})).session


def table(root, layer: str, name: str) -> pl.DataFrame:
    frame = scan_table(root / "dev" / "lake" / layer / name).collect()
    return frame.drop([c for c in RUN_TIME_COLUMNS if c in frame.columns]).sort(KEYS)


def test_executors_read_each_file_as_the_polars_reader_does(tmp_path, spark_session):
    files, _ = hostile_day()
    land(tmp_path, DAY1, files)
    landing_root = tmp_path / "dev" / "landing"
    at = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    paths = day_files(landing_root, "transactions", DAY1)
    assert len(paths) == len(files)
    found = read_landing_files(
        spark_session, paths, landing_root, at, required=TRANSACTIONS.required
    )
    for path, spark_file in zip(paths, found, strict=True):
        expected = read_landing_file(path, landing_root, at, required=TRANSACTIONS.required)
        assert spark_file.relative == expected.relative
        assert spark_file.header == expected.header
        assert spark_file.header_problem == expected.header_problem
        assert spark_file.count == expected.lines.height
        lines = pl.from_arrow(spark_file.lines.toArrow())
        assert_frame_equal(lines.sort("_line_number"), expected.lines.sort("_line_number"))


def test_bronze_of_a_hostile_day_equals_polars(tmp_path, spark_session, request):
    files, _ = hostile_day()
    tables = {}
    for engine in ("polars", "spark"):
        root = tmp_path / engine
        land(root, DAY1, files)
        defs = definitions(root, engine, request)
        with dg.DagsterInstance.ephemeral() as instance:
            run(defs, instance, DAY1, selection=BRONZE)
        tables[engine] = (
            table(root, "bronze", "transactions"),
            table(root, "quarantine", "bronze_transactions"),
        )
    for found, expected in zip(tables["spark"], tables["polars"], strict=True):
        assert found.height == expected.height > 0
        assert_frame_equal(found, expected, check_column_order=False)
