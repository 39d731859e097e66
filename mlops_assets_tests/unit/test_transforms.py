import datetime
import json

import narwhals as nw
import polars as pl
import pytest

from mlops_assets.transforms.bronze import split_lines
from mlops_assets.transforms.gold import merchant_category_daily
from mlops_assets.transforms.quarantine import QUARANTINE_COLUMNS, to_quarantine
from mlops_assets.transforms.silver import (
    LABELS,
    TRANSACTIONS,
    published_columns,
    resolve_versions,
    validate,
)
from mlops_assets_tests.records import transaction

DAY = datetime.date(2026, 1, 2)
INGESTED = datetime.datetime(2026, 1, 3, tzinfo=datetime.UTC)
GOOD = transaction(event_time="2026-01-02T10:00:00.123456Z", device_id="")


def bronze(rows: list[dict[str, str]]) -> nw.DataFrame:
    frame = pl.DataFrame(rows).with_columns(
        pl.lit("transactions/2026-01-02/a.csv").alias("_source_file"),
        pl.int_range(2, len(rows) + 2, dtype=pl.Int64).alias("_line_number"),
        pl.lit(INGESTED).alias("_ingested_at"),
        pl.lit(DAY).alias("landing_date"),
    )
    return nw.from_native(frame)


def lines(raw: list[str | None]) -> nw.DataFrame:
    return nw.from_native(
        pl.DataFrame(
            {
                "raw": [r if r is not None else "ab\ufffd" for r in raw],
                "_utf8": [r is not None for r in raw],
                "_line_number": list(range(2, len(raw) + 2)),
            }
        )
    )


LINES = ["a,b,c", "a,b", None, "", 'x,"y",z', "1,,3", "1,2,3,4"]


@pytest.mark.parametrize("portable", [False, True])
def test_split_lines_keeps_values_as_strings_and_rejects_with_reasons(portable):
    records, rejects = split_lines(lines(LINES), ["p", "q", "r"], portable=portable)
    assert records.to_native().to_dicts() == [
        {"p": "a", "q": "b", "r": "c", "_line_number": 2},
        {"p": "1", "q": "", "r": "3", "_line_number": 7},
    ]
    reasons = dict(zip(rejects["_line_number"].to_list(), rejects["reason"].to_list(), strict=True))
    assert reasons == {
        3: "expected 3 fields, found 2",
        4: "line is not valid UTF-8",
        5: "empty line",
        6: "line holds a quote character but was not parsed as CSV",
        8: "expected 3 fields, found 4",
    }
    assert rejects.filter(nw.col("_line_number") == 4)["raw"].item() == "ab\ufffd"


def test_fast_and_portable_line_splitting_agree():
    many = LINES * 50 + [",".join(str(i) for i in range(3)), ",,", "\u00e9,\u00fc,x"]
    fast = split_lines(lines(many), ["p", "q", "r"])
    portable = split_lines(lines(many), ["p", "q", "r"], portable=True)
    for a, b in zip(fast, portable, strict=True):
        assert a.to_native().equals(b.to_native())


@pytest.mark.parametrize(
    ("change", "column", "reason"),
    [
        ({"card_id": ""}, "card_id", "missing required field card_id"),
        ({"amount": "N/A"}, "amount", "'N/A' in amount is not a decimal number"),
        ({"amount": "12.3.4"}, "amount", "'12.3.4' in amount is not a decimal number"),
        ({"event_time": "yesterday"}, "event_time", "'yesterday' in event_time is not an ISO"),
        ({"event_time": "2026-13-45T99:00:00Z"}, "event_time", "is not an ISO-8601"),
        ({"channel": "fax"}, "channel", "'fax' in channel is not one of pos, online, atm"),
        ({"amount": "-3"}, "amount", "'-3' in amount is outside (0, 1000000]"),
        ({"amount": "2000000"}, "amount", "in amount is outside"),
        ({"amount": "inf"}, "amount", "'inf' in amount is not a decimal number"),
        ({"amount": "1e5"}, "amount", "'1e5' in amount is not a decimal number"),
        ({"event_time": "2026-02-30T10:00:00Z"}, "event_time", "is not an ISO-8601"),
        ({"event_time": "2025-10-01T00:00:00Z"}, "event_time", "is not within 30 days before"),
        ({"event_time": "2026-01-04T00:00:00Z"}, "event_time", "or 2 h after it"),
    ],
)
def test_validate_rejects_each_problem_naming_the_column(change, column, reason):
    valid, rejected = validate(
        bronze([GOOD, {**GOOD, "transaction_id": "t2", **change}]), TRANSACTIONS, "landing_date"
    )
    assert valid["transaction_id"].to_list() == ["t1"]
    assert rejected["transaction_id"].to_list() == ["t2"]
    assert rejected["column"].item() == column
    assert reason in rejected["reason"].item()


def test_validate_types_the_contract_and_accepts_late_events_and_added_columns():
    late = {**GOOD, "transaction_id": "t2", "event_time": "2025-12-30 23:59:59Z", "device_id": "d9"}
    valid, rejected = validate(
        bronze([{**GOOD, "terminal_id": "T1"}, {**late, "terminal_id": ""}]),
        TRANSACTIONS,
        "landing_date",
    )
    assert rejected.is_empty()
    native = valid.to_native()
    assert native.schema["amount"] == pl.Float64
    assert native.schema["event_time"] == pl.Datetime("us", "UTC")
    assert native["event_time"].to_list() == [
        datetime.datetime(2026, 1, 2, 10, 0, 0, 123456, tzinfo=datetime.UTC),
        datetime.datetime(2025, 12, 30, 23, 59, 59, tzinfo=datetime.UTC),
    ]
    # Empty optional values are missing values; an added source column is kept.
    assert native["device_id"].to_list() == [None, "d9"]
    assert native["terminal_id"].to_list() == ["T1", None]
    assert native.columns[: len(TRANSACTIONS.columns)] == list(TRANSACTIONS.columns)


def test_validate_fills_contract_columns_a_source_does_not_send():
    valid, _ = validate(bronze([GOOD]), TRANSACTIONS, "landing_date")
    assert valid["terminal_id"].to_list() == [None]


def test_labels_parse_booleans_and_refuse_other_values():
    rows = [
        {
            "transaction_id": "t1",
            "card_id": "c",
            "reported_at": "2026-01-02T01:00:00Z",
            "chargeback_reason": "fraud_card_not_present",
            "is_fraud": "1",
        },
        {
            "transaction_id": "t2",
            "card_id": "c",
            "reported_at": "2026-01-02T01:00:00Z",
            "chargeback_reason": "duplicate_processing",
            "is_fraud": "false",
        },
        {
            "transaction_id": "t3",
            "card_id": "c",
            "reported_at": "2026-01-02T01:00:00Z",
            "chargeback_reason": "x",
            "is_fraud": "maybe",
        },
    ]
    valid, rejected = validate(bronze(rows), LABELS, "landing_date")
    assert valid["is_fraud"].to_list() == [True, False]
    assert rejected["column"].to_list() == ["is_fraud"]


@pytest.mark.parametrize("shuffled", [False, True])
def test_resolution_keeps_the_first_copy_and_drops_records_published_elsewhere(shuffled):
    valid, _ = validate(
        bronze([GOOD, {**GOOD, "transaction_id": "t2"}, GOOD, {**GOOD, "transaction_id": "t3"}]),
        TRANSACTIONS,
        "landing_date",
    )
    if shuffled:
        valid = valid.sort("_line_number", descending=True)
    published = (
        valid.to_native()
        .filter(pl.col("transaction_id") == "t3")
        .with_columns(pl.lit(datetime.date(2026, 1, 1)).alias("landing_date"))
        .select(published_columns(TRANSACTIONS))
    )
    resolved = resolve_versions(valid, TRANSACTIONS, nw.from_native(published))
    assert resolved.unique["transaction_id"].to_list() == ["t1", "t2"]
    assert resolved.unique["_line_number"].to_list() == [2, 3]
    assert (resolved.in_batch, resolved.of_others, resolved.conflicts.height) == (1, 1, 0)


def test_quarantine_rows_keep_the_record_as_json_text():
    rejects = nw.from_native(
        pl.DataFrame(
            {
                "_source_file": ["f"],
                "_line_number": [3],
                "reason": ["bad"],
                "column": ["a"],
                "a": ['say "hi"'],
                "b": [None],
            },
            schema_overrides={"b": pl.String},
        )
    )
    rows = to_quarantine(
        rejects, stage="silver", landing_date=DAY, quarantined_at=INGESTED, raw_fields=["a", "b"]
    )
    assert tuple(rows.columns) == QUARANTINE_COLUMNS
    row = rows.to_native().row(0, named=True)
    assert row["raw"] == '{"a":"say \\"hi\\"","b":null}'
    assert (row["stage"], row["landing_date"], row["column"]) == ("silver", DAY, "a")


def test_merchant_category_daily_counts_volume_amount_and_known_fraud():
    transactions = pl.DataFrame(
        {
            "transaction_id": ["t1", "t2", "t3", "t4"],
            "event_time": [
                datetime.datetime(2026, 1, 2, h, tzinfo=datetime.UTC) for h in (1, 2, 3, 4)
            ],
            "card_id": ["c1", "c1", "c2", "c3"],
            "merchant_category": ["grocery", "grocery", "grocery", "travel"],
            "amount": [10.0, 20.0, 30.0, 400.0],
        }
    )
    labels = pl.DataFrame(
        {
            "transaction_id": ["t2", "t4"],
            "is_fraud": [True, False],
            "reported_at": [datetime.datetime(2026, 1, 5, tzinfo=datetime.UTC)] * 2,
        }
    )
    daily = merchant_category_daily(nw.from_native(transactions), nw.from_native(labels))
    rows = {r["merchant_category"]: r for r in daily.to_native().to_dicts()}
    assert rows["grocery"]["transactions"] == 3
    assert rows["grocery"]["cards"] == 2
    assert rows["grocery"]["amount_total"] == 60.0
    assert rows["grocery"]["fraud_transactions"] == 1
    assert rows["grocery"]["fraud_amount"] == 20.0
    assert rows["grocery"]["fraud_rate"] == pytest.approx(1 / 3)
    assert rows["travel"]["labelled"] == 1
    assert rows["travel"]["fraud_rate"] == 0.0


def test_quarantine_json_escapes_control_characters():
    rejects = nw.from_native(
        pl.DataFrame(
            {"_source_file": ["f"], "_line_number": [3], "reason": ["bad"], "a": ["x\ty\u0001"]}
        )
    )
    rows = to_quarantine(
        rejects, stage="silver", landing_date=DAY, quarantined_at=INGESTED, raw_fields=["a"]
    )
    assert json.loads(rows["raw"].item()) == {"a": "x\ty\u0001"}


def test_timestamps_must_match_the_pattern_before_parsing():
    valid, rejected = validate(
        bronze([GOOD, {**GOOD, "transaction_id": "t2", "event_time": "2026-1-2T10:00:00Z"}]),
        TRANSACTIONS,
        "landing_date",
    )
    assert valid["transaction_id"].to_list() == ["t1"]
    assert rejected["column"].to_list() == ["event_time"]
