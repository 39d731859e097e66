"""Bronze on a hostile landing day, on both engines: nothing lost, nothing polluted.

Each file of the day is a kind real feeds send (byte-order mark, CRLF, quoted fields over
several lines, gzip, another separator, binary, a header without required columns, hundreds of
extra columns, a line over the bound, an unterminated quote). After the day the bronze table's
schema is the one it had, and every landing record is in bronze or in quarantine with its
reason. A day without landing files builds empty partitions, warns, and the medallion runs on.
"""

import datetime
import gzip
import json

import dagster as dg
import polars as pl
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.resources import SparkResource
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.settings import load_settings
from mlops_assets.transforms.silver import TRANSACTIONS
from mlops_assets_tests.records import TRANSACTION

DAY1, DAY2, DAY3 = (datetime.date(2026, 1, d) for d in (1, 2, 3))
ENGINES = ["polars", pytest.param("spark", marks=pytest.mark.slow)]
BRONZE = [
    dg.AssetKey(["bronze", "transactions"]),
    dg.AssetKey(["quarantine", "bronze_transactions"]),
]
# The required columns and one optional column, in the order the files' header names them.
ROW = {name: TRANSACTION[name] for name in [*TRANSACTIONS.required, "country"]}
HEADER = list(ROW)
BOUNDED = [*TRANSACTIONS.columns, "_rescued_data", "_source_file", "_line_number", "_ingested_at"]


def line(header: list[str], **values: str) -> str:
    row = {**ROW, **values}
    return ",".join(row.get(name, "") for name in header)


def csv_text(header: list[str], *lines: str, end: str = "\n") -> str:
    return end.join([",".join(header), *lines]) + end


def hostile_day() -> tuple[dict[str, bytes], dict[str, dict[int, str | None]]]:
    """The day's files and, per file, each record's first line: its reason or None (bronze)."""
    reordered = ["amount", "transaction_id", "channel", *HEADER[1:5], "currency", "country"]
    reordered.append("terminal_ref")
    files: dict[str, bytes] = {}
    expected: dict[str, dict[int, str | None]] = {}
    files["a_exporter.csv"] = b"\xef\xbb\xbf" + csv_text(
        reordered,
        line(reordered, transaction_id="a1", terminal_ref="T-9"),
        line(reordered, transaction_id="a2", merchant_category='"food, drinks"'),
        line(reordered, transaction_id="a3", merchant_category='"two\r\nlines"'),
        line(reordered, transaction_id="a4", merchant_category='"say ""hi"""'),
        "1.0,a5,pos",
        end="\r\n",
    ).encode("utf-8")
    expected["a_exporter.csv"] = {
        2: None,
        3: None,
        4: None,
        6: None,
        7: "expected 10 fields, found 3",
    }
    files["b_packed.csv.gz"] = gzip.compress(
        csv_text(
            HEADER, line(HEADER, transaction_id="b1"), line(HEADER, transaction_id="b2")
        ).encode()
    )
    expected["b_packed.csv.gz"] = {2: None, 3: None}
    semicolons = ";".join(HEADER)
    files["c_semicolons.csv"] = (semicolons + "\n" + ";".join(ROW.values()) + "\n").encode()
    expected["c_semicolons.csv"] = dict.fromkeys(
        (1, 2),
        f"header {semicolons!r} is one column holding ';': the file is separated by "
        "semicolons, not commas",
    )
    files["d_binary.csv"] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\n\x00\x01"
    expected["d_binary.csv"] = dict.fromkeys((1, 2, 3, 4), "file is binary: it holds NUL bytes")
    no_amount = [h for h in HEADER if h != "amount"]
    files["e_no_amount.csv"] = csv_text(no_amount, line(no_amount)).encode()
    expected["e_no_amount.csv"] = dict.fromkeys(
        (1, 2), f"header {','.join(no_amount)!r} lacks required columns amount"
    )
    wide = [*HEADER, *(f"x{i}" for i in range(500))]
    files["f_wide.csv"] = csv_text(
        wide, ",".join([*ROW.values(), *(f"v{i}" for i in range(500))])
    ).encode()
    expected["f_wide.csv"] = {2: None}
    files["g_unterminated.csv"] = csv_text(
        HEADER, line(HEADER, transaction_id="g1"), line(HEADER, merchant_category='"open')
    ).encode()
    expected["g_unterminated.csv"] = dict.fromkeys(
        (1, 2, 3), "unterminated quoted field: the quote opened on line 3 is never closed"
    )
    long = "y" * (1 << 20)
    files["h_long.csv"] = csv_text(
        HEADER, line(HEADER, merchant_category=long), line(HEADER, transaction_id="h2")
    ).encode()
    long_bytes = len(line(HEADER, merchant_category=long).encode())
    expected["h_long.csv"] = {
        2: f"line is {long_bytes} bytes long, over the 1048576-byte limit",
        3: None,
    }
    return files, expected


def land(root, day: datetime.date, files: dict[str, bytes]) -> None:
    folder = root / "dev" / "landing" / "transactions" / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


@pytest.fixture(scope="module")
def spark_session():
    # One local session for the module; the Spark resource of the definitions reuses it.
    return SparkResource.from_settings(load_settings({"MLOPS_SPARK_MASTER": "local[2]"})).session


def definitions(root, engine: str, request):
    if engine == "spark":
        request.getfixturevalue("spark_session")
    settings = load_settings(
        {
            "MLOPS_DATA_ROOT": str(root),
            "MLOPS_ENV": "dev",
            "MLOPS_ENGINE": engine,
            "MLOPS_SPARK_MASTER": "local[2]",
        }
    )
    return build_definitions(settings)


def run(defs, instance, day: datetime.date, selection=None):
    job = defs.resolve_job_def("medallion_daily")
    result = job.execute_in_process(
        partition_key=day.isoformat(), instance=instance, asset_selection=selection
    )
    assert result.success
    return result


@pytest.mark.parametrize("engine", ENGINES)
def test_a_hostile_day_keeps_bronze_schema_and_accounts_for_every_record(tmp_path, engine, request):
    land(tmp_path, DAY1, {"clean.csv": csv_text(HEADER, line(HEADER)).encode()})
    files, expected = hostile_day()
    land(tmp_path, DAY2, files)
    defs = definitions(tmp_path, engine, request)
    lake = tmp_path / "dev" / "lake"
    with dg.DagsterInstance.ephemeral() as instance:
        run(defs, instance, DAY1, BRONZE)
        before = scan_table(lake / "bronze" / "transactions").collect_schema()
        result = run(defs, instance, DAY2, BRONZE)
    bronze = scan_table(lake / "bronze" / "transactions").collect()
    assert bronze.collect_schema() == before
    assert bronze.columns == [*BOUNDED, "landing_date"]
    day = bronze.filter(pl.col("landing_date") == DAY2)
    quarantine = scan_table(lake / "quarantine" / "bronze_transactions").collect()
    quarantine = quarantine.filter(pl.col("landing_date") == DAY2)
    prefix = f"transactions/{DAY2.isoformat()}/"
    found: dict[str, dict[int, str | None]] = {}
    for row in day.select("_source_file", "_line_number").iter_rows():
        found.setdefault(row[0].removeprefix(prefix), {})[row[1]] = None
    for source_file, number, reason in quarantine.select(
        "_source_file", "_line_number", "reason"
    ).iter_rows():
        assert number not in found.get(source_file.removeprefix(prefix), {})
        found.setdefault(source_file.removeprefix(prefix), {})[number] = reason
    assert found == expected

    records = {r["transaction_id"]: r for r in day.to_dicts()}
    assert records["a1"]["amount"] == "12.50"
    assert json.loads(records["a1"]["_rescued_data"]) == {"terminal_ref": "T-9"}
    assert records["a2"]["merchant_category"] == "food, drinks"
    assert records["a3"]["merchant_category"] == "two\r\nlines"
    assert records["a4"]["merchant_category"] == 'say "hi"'
    assert records["b1"]["_rescued_data"] is None
    assert records["a1"]["terminal_id"] is None  # an optional column the file lacks
    wide = day.filter(pl.col("_source_file") == prefix + "f_wide.csv")
    assert json.loads(wide["_rescued_data"].item()) == {f"x{i}": f"v{i}" for i in range(500)}

    metadata = result.asset_materializations_for_node("bronze_transactions")[0].metadata
    rescued = metadata["rescued_columns"].value
    assert rescued["terminal_ref"] == 4
    assert rescued["x499"] == 1
    assert len(rescued) == 501
    lines = sum(len(records) for records in expected.values())
    assert metadata["landing_lines"].value == lines
    assert metadata["landing_files"].value == len(files)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["every_landing_line_accounted_for"].passed
    assert checks["landing_files_present"].passed


@pytest.mark.parametrize("engine", ENGINES)
def test_a_day_without_landing_files_builds_empty_partitions_warns_and_runs_on(
    tmp_path, engine, request
):
    first = line(HEADER, event_time="2026-01-01T10:00:00Z")
    land(tmp_path, DAY1, {"clean.csv": csv_text(HEADER, first).encode()})
    labels = tmp_path / "dev" / "landing" / "labels" / DAY1.isoformat()
    labels.mkdir(parents=True)
    (labels / "l.csv").write_text(
        "transaction_id,reported_at,is_fraud\nt1,2026-01-01T12:00:00Z,1\n"
    )
    defs = definitions(tmp_path, engine, request)
    lake = tmp_path / "dev" / "lake"
    with dg.DagsterInstance.ephemeral() as instance:
        run(defs, instance, DAY1)
        result = run(defs, instance, DAY3)
    for source in ("transactions", "labels"):
        bronze = scan_table(lake / "bronze" / source).collect()
        assert bronze.filter(pl.col("landing_date") == DAY3).height == 0
        assert bronze.filter(pl.col("landing_date") == DAY1).height == 1
    checks = {(c.asset_key.path[-1], c.check_name): c for c in result.get_asset_check_evaluations()}
    for source in ("transactions", "labels"):
        missing = checks[source, "landing_files_present"]
        assert not missing.passed
        assert missing.severity == dg.AssetCheckSeverity.WARN
        folder = tmp_path / "dev" / "landing" / source / DAY3.isoformat()
        assert missing.metadata["folder"].value == str(folder)
        assert checks[source, "every_landing_line_accounted_for"].passed
    silver = scan_table(lake / "silver" / "transactions").collect()
    assert silver.height == 1
