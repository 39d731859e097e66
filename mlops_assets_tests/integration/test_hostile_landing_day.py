"""A landing day of unreadable, partial and hostile files through the whole medallion.

Every table's schema stays as it was, a file under a partial name is not read, and every line
of the day is in a table, in quarantine with its reason, or counted as a re-send.
"""

import datetime

import dagster as dg
import polars as pl

from mlops_assets.definitions import build_definitions
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.settings import load_settings
from mlops_assets_tests.integration.test_bronze_hostile_feeds import (
    DAY1,
    DAY2,
    HEADER,
    csv_text,
    hostile_day,
    line,
)

LABEL_HEADER = "transaction_id,card_id,reported_at,chargeback_reason,is_fraud"
LINEAGE = ["_source_file", "_line_number"]


def land(root, source: str, day: datetime.date, files: dict[str, bytes]) -> None:
    folder = root / "dev" / "landing" / source / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def schemas(lake) -> dict[str, pl.Schema]:
    return {
        f"{layer.name}/{table.name}": scan_table(table).collect_schema()
        for layer in sorted(lake.iterdir())
        for table in sorted(layer.iterdir())
        if (table / "_delta_log").is_dir()
    }


def lines_of(lake, name: str, day: datetime.date) -> pl.DataFrame:
    return (
        scan_table(lake / name)
        .filter(pl.col("landing_date") == day)
        .select(*LINEAGE)
        .collect()
        .sort(LINEAGE)
    )


def test_a_hostile_day_changes_no_schema_and_loses_no_line(tmp_path):
    first = "2026-01-01T10:00:00Z"  # within the clean day
    clean = csv_text(
        HEADER,
        line(HEADER, transaction_id="c1", event_time=first),
        line(HEADER, transaction_id="c2", event_time=first),
    ).encode()
    land(tmp_path, "transactions", DAY1, {"clean.csv": clean})
    land(
        tmp_path,
        "labels",
        DAY1,
        {"l.csv": f"{LABEL_HEADER}\nc1,card_1,2026-01-01T12:00:00Z,,1\n".encode()},
    )
    files, _ = hostile_day()
    # A file still being written under a partial name, and one re-sending a clean-day record.
    files["z_upload.csv.part"] = csv_text(HEADER, line(HEADER, transaction_id="p1")).encode()
    files["y_resend.csv"] = csv_text(
        HEADER,
        line(HEADER, transaction_id="c1", event_time=first),
        line(HEADER, transaction_id="c2", event_time=first, amount="99"),
    ).encode()
    land(tmp_path, "transactions", DAY2, files)
    labels = "\r\n".join(
        [
            LABEL_HEADER,
            "c1,card_1,2026-01-02T09:00:00+01:00,,0",  # a reversal (fraud, then not fraud)
            "c1,card_1,2026-01-02T10:00:00Z,,0",  # re-sent
            "nowhere,card_9,2026-01-02T11:00:00Z,fraud,1",  # no such transaction (yet)
            "c2,card_1,2026-01-02 11:00:00,fraud,1",  # no offset, no declared zone
        ]
    )
    land(tmp_path, "labels", DAY2, {"l.csv": b"\xef\xbb\xbf" + labels.encode() + b"\r\n"})

    settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ENV": "dev"})
    job = build_definitions(settings).resolve_job_def("medallion_daily")
    lake = settings.lake_root
    with dg.DagsterInstance.ephemeral() as instance:
        assert job.execute_in_process(partition_key=DAY1.isoformat(), instance=instance).success
        before = schemas(lake)
        result = job.execute_in_process(partition_key=DAY2.isoformat(), instance=instance)
        assert result.success
    assert schemas(lake) == before
    assert {"bronze/transactions", "silver/labels", "gold/merchant_category_daily"} <= set(before)

    for source in ("transactions", "labels"):
        # Bronze: every record of the day's files is in bronze or its quarantine, once.
        bronze = lines_of(lake, f"bronze/{source}", DAY2)
        rejected = lines_of(lake, f"quarantine/bronze_{source}", DAY2)
        assert bronze.join(rejected, on=LINEAGE).height == 0
        landed = pl.concat([bronze, rejected]).get_column("_source_file")
        assert not landed.str.contains(".part", literal=True).any()
        # Silver: every bronze record is in silver, in its quarantine, or counted as a re-send.
        silver = lines_of(lake, f"silver/{source}", DAY2)
        invalid = lines_of(lake, f"quarantine/silver_{source}", DAY2)
        assert silver.join(invalid, on=LINEAGE).height == 0
        placed = pl.concat([silver, invalid])
        assert placed.join(bronze, on=LINEAGE, how="anti").height == 0
        metadata = result.asset_materializations_for_node(f"silver_{source}")[0].metadata
        resent = (
            metadata["duplicates_within_day"].value + metadata["duplicates_of_other_days"].value
        )
        assert placed.height + resent == bronze.height

    quarantine = scan_table(lake / "quarantine" / "silver_transactions").collect()
    reasons = dict(
        quarantine.filter(pl.col("landing_date") == DAY2)
        .select(pl.col("_source_file").str.extract(r"([^/]+)$"), "_line_number", "reason")
        .group_by("_source_file")
        .agg(pl.col("reason").first())
        .iter_rows()
    )
    # c2 re-sent with another amount conflicts with the published record.
    assert "conflict" in reasons["y_resend.csv"].lower()
    label_reasons = (
        scan_table(lake / "quarantine" / "silver_labels")
        .filter(pl.col("landing_date") == DAY2)
        .collect()
        .get_column("reason")
        .to_list()
    )
    assert len(label_reasons) == 1 and "has no UTC offset" in label_reasons[0]
    labels_meta = result.asset_materializations_for_node("silver_labels")[0].metadata
    assert labels_meta["labels_for_unknown_transactions"].value == 1
    reports = scan_table(lake / "silver" / "labels").collect().sort("reported_at")
    assert reports.select("transaction_id", "is_fraud").rows() == [
        ("c1", True),
        ("c1", False),
        ("nowhere", True),
    ]
