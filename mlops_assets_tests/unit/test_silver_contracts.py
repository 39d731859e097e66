"""Silver contracts on polars: instants, bounded fields, re-sends and conflicts, label reports."""

import datetime

import narwhals as nw
import polars as pl
import pytest

from mlops_assets.simulate import Scenario, generate_day, transaction_columns
from mlops_assets.transforms.silver import (
    LABELS,
    TRANSACTIONS,
    published_columns,
    rescued_names,
    resolve_versions,
    validate,
)
from mlops_assets_tests.records import transaction

DAY = datetime.date(2026, 1, 2)
INGESTED = datetime.datetime(2026, 1, 3, tzinfo=datetime.UTC)
UTC = datetime.UTC
GOOD = transaction()
LABEL = {
    "transaction_id": "t1",
    "card_id": "card_1",
    "reported_at": "2026-01-02T08:00:00Z",
    "chargeback_reason": "fraud_card_not_present",
    "is_fraud": "1",
}


def bronze(
    rows: list[dict[str, str]], day: datetime.date = DAY, file: str = "a.csv"
) -> nw.DataFrame:
    frame = pl.DataFrame(rows).with_columns(
        pl.lit(f"transactions/{day}/{file}").alias("_source_file"),
        pl.int_range(2, len(rows) + 2, dtype=pl.Int64).alias("_line_number"),
        pl.lit(INGESTED).alias("_ingested_at"),
        pl.lit(day).alias("landing_date"),
    )
    return nw.from_native(frame)


def times(values: list[str], timezone: str | None = None, day: datetime.date = DAY):
    rows = [{**GOOD, "transaction_id": f"t{i}", "event_time": v} for i, v in enumerate(values)]
    valid, rejected = validate(bronze(rows, day), TRANSACTIONS, "landing_date", timezone=timezone)
    instants = dict(zip(valid["transaction_id"], valid["event_time"], strict=True))
    reasons = dict(zip(rejected["transaction_id"], rejected["reason"], strict=True))
    return [instants.get(f"t{i}", reasons.get(f"t{i}")) for i in range(len(values))]


def test_every_iso_offset_is_converted_to_utc():
    assert times(
        [
            "2026-01-02T10:00:00Z",
            "2026-01-02T10:00:00+02:00",
            "2026-01-02T10:00:00-0530",
            "2026-01-02 10:00:00+05",
            "2026-01-02T10:00:00.25+00:00",
            "2026-01-02T00:30:00+01:00",
        ]
    ) == [
        datetime.datetime(2026, 1, 2, 10, tzinfo=UTC),
        datetime.datetime(2026, 1, 2, 8, tzinfo=UTC),
        datetime.datetime(2026, 1, 2, 15, 30, tzinfo=UTC),
        datetime.datetime(2026, 1, 2, 5, tzinfo=UTC),
        datetime.datetime(2026, 1, 2, 10, 0, 0, 250000, tzinfo=UTC),
        datetime.datetime(2026, 1, 1, 23, 30, tzinfo=UTC),
    ]


def test_a_time_without_offset_is_refused_unless_the_source_declares_its_zone():
    [refused] = times(["2026-01-02T10:00:00"])
    assert refused == (
        "'2026-01-02T10:00:00' in event_time has no UTC offset and source transactions "
        "declares no time zone (MLOPS_SOURCE_TIMEZONES)"
    )
    # Berlin is an hour ahead of UTC in winter; a time with an offset keeps its own.
    assert times(["2026-01-02T10:00:00", "2026-01-02T10:00:00Z"], "Europe/Berlin") == [
        datetime.datetime(2026, 1, 2, 9, tzinfo=UTC),
        datetime.datetime(2026, 1, 2, 10, tzinfo=UTC),
    ]


def test_daylight_saving_ambiguous_times_take_the_earlier_instant_and_gaps_are_refused():
    spring, autumn = datetime.date(2026, 3, 29), datetime.date(2026, 10, 25)
    [gap] = times(["2026-03-29T02:30:00"], "Europe/Berlin", spring)
    assert gap == (
        "'2026-03-29T02:30:00' in event_time does not exist in time zone Europe/Berlin "
        "(skipped by a clock change)"
    )
    assert times(["2026-03-29T03:30:00"], "Europe/Berlin", spring) == [
        datetime.datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    ]
    # 02:30 happens twice on 25 October: first at +02:00 (00:30 UTC), then at +01:00.
    assert times(["2026-10-25T02:30:00"], "Europe/Berlin", autumn) == [
        datetime.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    ]


def test_digits_below_the_microsecond_are_truncated_not_rounded():
    assert times(["2026-01-02T10:00:00.1234569Z", "2026-01-02T10:00:00.999999999+01:00"]) == [
        datetime.datetime(2026, 1, 2, 10, 0, 0, 123456, tzinfo=UTC),
        datetime.datetime(2026, 1, 2, 9, 0, 0, 999999, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2026-01-02T10:00:00+19:00", "is not an ISO-8601 timestamp"),
        ("2026-01-02T10:00:00+02:", "is not an ISO-8601 timestamp"),
        ("2026-01-02T10:00:00 +02:00", "is not an ISO-8601 timestamp"),
        ("2026-01-02T10:00:00z", "is not an ISO-8601 timestamp"),
    ],
)
def test_malformed_offsets_are_not_timestamps(value, reason):
    [refused] = times([value])
    assert refused == f"'{value}' in event_time {reason}"


@pytest.mark.parametrize(
    ("change", "column", "reason"),
    [
        ({"transaction_id": "t" * 65}, "transaction_id", "is longer than 64 characters"),
        ({"card_id": "card\x07"}, "card_id", "in card_id contains a control character"),
        ({"merchant_id": "m 1"}, "merchant_id", "is not letters, digits and _.:-"),
        ({"device_id": "d\x00"}, "device_id", "contains a control character"),
        ({"currency": "eur"}, "currency", "is not 3 upper-case letters (ISO 4217)"),
        ({"currency": "EURO"}, "currency", "'EURO' in currency is longer than 3 characters"),
        ({"country": "DEU"}, "country", "is longer than 2 characters"),
        ({"card_country": "d1"}, "card_country", "is not 2 upper-case letters"),
        ({"merchant_category": "Grocery"}, "merchant_category", "is not lower-case letters"),
        ({"entry_mode": "chip\tpin"}, "entry_mode", "contains a control character"),
        ({"terminal_id": "x" * 65}, "terminal_id", "is longer than 64 characters"),
        ({"channel": "POS"}, "channel", "is not one of pos, online, atm"),
        ({"amount": "0"}, "amount", "is outside (0, 1000000]"),
    ],
)
def test_each_field_is_bounded_and_the_reason_names_field_and_limit(change, column, reason):
    rows = [GOOD, {**GOOD, "transaction_id": "t2", **change}]
    valid, rejected = validate(bronze(rows), TRANSACTIONS, "landing_date")
    assert valid["transaction_id"].to_list() == ["t1"]
    assert rejected["column"].to_list() == [column]
    assert reason in rejected["reason"].item()


def test_a_reason_quotes_at_most_a_hundred_characters_of_a_value():
    _, rejected = validate(bronze([{**GOOD, "card_id": "c" * 5000}]), TRANSACTIONS, "landing_date")
    assert rejected["reason"].item() == f"'{'c' * 100}' in card_id is longer than 64 characters"


def test_label_fields_are_bounded():
    rows = [LABEL, {**LABEL, "transaction_id": "t2", "chargeback_reason": "fraud\n"}]
    valid, rejected = validate(bronze(rows), LABELS, "landing_date")
    assert valid["transaction_id"].to_list() == ["t1"]
    assert (
        rejected["reason"].item() == "'fraud\n' in chargeback_reason contains a control character"
    )


def simulated_records(day_index: int) -> tuple[nw.DataFrame, object]:
    scenario = Scenario.demo(days=4, transactions_per_day=4_000, seed=5)
    batch = generate_day(scenario, day_index)
    columns = transaction_columns(scenario, day_index)
    rows = []
    for blob in batch.transaction_files:
        for line in blob.decode("utf-8", errors="replace").splitlines()[1:]:
            fields = line.split(",")
            if len(fields) == len(columns):
                rows.append(dict(zip(columns, fields, strict=True)))
    return bronze(rows, batch.date), batch


def test_the_simulators_values_pass_and_its_injected_bad_values_still_fail():
    # Day 3 carries the added terminal_id column and late events.
    records, batch = simulated_records(3)
    valid, rejected = validate(records, TRANSACTIONS, "landing_date")
    assert rejected.shape[0] == batch.wrong_type + batch.missing_field
    assert set(rejected["column"]) <= {"amount", "event_time", *batch.transaction_header.split(",")}
    wrong = set(batch.transaction_ids_wrong_type)
    assert wrong <= set(rejected["transaction_id"])
    assert not wrong & set(valid["transaction_id"])
    assert valid.shape[0] == records.shape[0] - rejected.shape[0]
    assert valid["terminal_id"].drop_nulls().len() > 0


def test_simulated_labels_pass():
    scenario = Scenario.demo(days=6, transactions_per_day=4_000, seed=5)
    text = generate_day(scenario, 5).label_file.decode()
    header, *lines = text.splitlines()
    rows = [dict(zip(header.split(","), line.split(","), strict=True)) for line in lines]
    assert rows
    valid, rejected = validate(bronze(rows, scenario.date_of(5)), LABELS, "landing_date")
    assert rejected.shape[0] == 0
    assert valid.shape[0] == len(rows)


def resolve(rows, contract=TRANSACTIONS, published_rows=None, published_day=DAY):
    valid, rejected = validate(bronze(rows), contract, "landing_date")
    assert rejected.shape[0] == 0, rejected["reason"].to_list()
    if published_rows:
        earlier, _ = validate(bronze(published_rows, file="p.csv"), contract, "landing_date")
        published = (
            earlier.to_native()
            .with_columns(
                pl.col("_source_file").str.replace(str(DAY), str(published_day)),
                pl.lit(published_day).alias("landing_date"),
            )
            .select(published_columns(contract))
        )
    else:
        published = valid.to_native().clear().select(published_columns(contract))
    return resolve_versions(valid, contract, nw.from_native(published))


def test_an_identical_resend_is_a_duplicate_and_a_different_payload_a_conflict():
    changed = {**GOOD, "amount": "13.00", "channel": "online"}
    resolved = resolve([GOOD, {**GOOD, "transaction_id": "t2"}, GOOD, changed])
    assert resolved.unique["transaction_id"].to_list() == ["t2"]
    assert (resolved.in_batch, resolved.of_others, resolved.conflicting_keys) == (0, 0, 1)
    conflicts = resolved.conflicts.sort("_line_number")
    assert conflicts["_line_number"].to_list() == [2, 4, 5]
    assert conflicts["reason"].to_list() == [
        "conflicting versions of transaction_id 't1': transactions/2026-01-02/a.csv:5 differs "
        "in amount, channel",
        "conflicting versions of transaction_id 't1': transactions/2026-01-02/a.csv:5 differs "
        "in amount, channel",
        "conflicting versions of transaction_id 't1': transactions/2026-01-02/a.csv:2 differs "
        "in amount, channel",
    ]
    assert conflicts["column"].to_list() == ["amount"] * 3


def test_identical_copies_are_dropped_and_counted():
    resolved = resolve([GOOD, {**GOOD, "transaction_id": "t2"}, GOOD, GOOD])
    assert resolved.unique["transaction_id"].to_list() == ["t1", "t2"]
    assert (resolved.in_batch, resolved.conflicts.height) == (2, 0)


def test_a_record_conflicting_with_another_partition_is_quarantined_and_the_published_stays():
    earlier = datetime.date(2026, 1, 1)
    resolved = resolve(
        [
            {**GOOD, "amount": "99.00"},
            {**GOOD, "transaction_id": "t2"},
            {**GOOD, "transaction_id": "t3"},
        ],
        published_rows=[GOOD, {**GOOD, "transaction_id": "t2"}],
        published_day=earlier,
    )
    assert resolved.unique["transaction_id"].to_list() == ["t3"]
    assert (resolved.in_batch, resolved.of_others, resolved.conflicting_keys) == (0, 1, 1)
    assert resolved.conflicts["reason"].item() == (
        "transaction_id 't1' conflicts with the published record of partition "
        "landing_date=2026-01-01 (transactions/2026-01-01/p.csv:2), which stays: it differs "
        "in amount"
    )


def label(at: str, fraud: str, **more) -> dict[str, str]:
    return {**LABEL, "reported_at": at, "is_fraud": fraud, **more}


def test_a_resent_label_is_dropped_keeping_the_earliest_report_and_a_reversal_is_kept():
    resolved = resolve(
        [
            label("2026-01-02T08:00:00Z", "1"),
            label("2026-01-02T09:00:00Z", "1", chargeback_reason="fraud_card_present"),
            label("2026-01-02T10:00:00Z", "0"),
            label("2026-01-02T11:00:00Z", "0"),
            label("2026-01-02T12:00:00Z", "1"),
        ],
        LABELS,
    )
    unique = resolved.unique.to_native()
    assert unique["reported_at"].dt.hour().to_list() == [8, 10, 12]
    assert unique["is_fraud"].to_list() == [True, False, True]
    assert (resolved.in_batch, resolved.conflicts.height) == (2, 0)


def test_a_label_resent_on_a_later_day_is_dropped_against_the_published_report():
    resolved = resolve(
        [
            label("2026-01-02T09:00:00Z", "1"),
            label("2026-01-02T09:00:00Z", "0", transaction_id="t2"),
        ],
        LABELS,
        published_rows=[label("2026-01-01T09:00:00Z", "1")],
        published_day=datetime.date(2026, 1, 1),
    )
    assert resolved.unique["transaction_id"].to_list() == ["t2"]
    assert (resolved.in_batch, resolved.of_others) == (0, 1)


def test_two_label_reports_at_one_time_that_differ_are_a_conflict():
    resolved = resolve(
        [
            label("2026-01-02T08:00:00Z", "1"),
            label("2026-01-02T08:00:00Z", "0"),
            label("2026-01-02T08:00:00Z", "1", transaction_id="t2"),
        ],
        LABELS,
    )
    assert resolved.unique["transaction_id"].to_list() == ["t2"]
    assert resolved.conflicts["reason"].to_list() == [
        "conflicting versions of transaction_id 't1' reported_at 2026-01-02T08:00:00+00:00: "
        "transactions/2026-01-02/a.csv:3 differs in is_fraud",
        "conflicting versions of transaction_id 't1' reported_at 2026-01-02T08:00:00+00:00: "
        "transactions/2026-01-02/a.csv:2 differs in is_fraud",
    ]


def test_rescued_column_names_come_from_the_rescued_json():
    frame = bronze([GOOD, GOOD]).with_columns(
        nw.new_series(
            "_rescued_data",
            ['{"loyalty_tier":"gold","note":"x"}', None],
            nw.String,
            backend="polars",
        )
    )
    assert rescued_names(frame) == ["loyalty_tier", "note"]
    assert rescued_names(bronze([GOOD])) == []
    valid, _ = validate(frame, TRANSACTIONS, "landing_date")
    assert "_rescued_data" not in valid.columns
