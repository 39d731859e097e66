"""Silver's feed rules on both engines: the same instants, refusals, re-sends and conflicts.

One Spark session (local[2]) for the module; every result is compared with polars'.
"""

import datetime

import narwhals as nw
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.defs.resources import SparkResource
from mlops_assets.settings import load_settings
from mlops_assets.transforms.silver import (
    LABELS,
    TRANSACTIONS,
    published_columns,
    rescued_names,
    resolve_versions,
    validate,
)
from mlops_assets_tests.records import transaction

pytestmark = pytest.mark.slow

DAY = datetime.date(2026, 3, 29)
INGESTED = datetime.datetime(2026, 3, 30, tzinfo=datetime.UTC)
GOOD = transaction(transaction_id="t", event_time="2026-03-29T10:00:00Z", terminal_id="")
TIMES = [
    "2026-03-29T10:00:00Z",
    "2026-03-29T10:00:00+02:00",
    "2026-03-29T10:00:00-0530",
    "2026-03-29 10:00:00+05",
    "2026-03-29T10:00:00.1234569Z",
    "2026-03-29T10:00:00.999999999-01:00",
    "2026-03-29T10:00:00.5",
    "2026-03-29T02:30:00",  # does not exist in Berlin (clocks go forward at 02:00)
    "2026-03-29T03:30:00",
    "2026-03-28T12:00:00",
    "2026-03-29T10:00:00+19:00",
    "2026-03-29T10:00:00+02:",
    "2026-03-29t10:00:00z",
    " 2026-03-29T23:59:59+00:00 ",
    "2026-02-30T10:00:00Z",
]
TEXTS = [
    {"currency": "eur"},
    {"country": "DEU"},
    {"card_id": "c\x01"},
    {"merchant_id": "m" * 65},
    {"merchant_category": "Food & Drink"},
    {"entry_mode": ""},
    {"device_id": "   "},
    {"terminal_id": "t_1"},
    {"card_id": "   "},
    {"channel": "POS"},
]


@pytest.fixture(scope="module")
def spark():
    return SparkResource.from_settings(load_settings({"MLOPS_SPARK_MASTER": "local[2]"})).session


def bronze(rows: list[dict[str, str]], day: datetime.date = DAY, file: str = "a.csv"):
    return pl.DataFrame(rows).with_columns(
        pl.lit(f"transactions/{day}/{file}").alias("_source_file"),
        pl.int_range(2, len(rows) + 2, dtype=pl.Int64).alias("_line_number"),
        pl.lit(INGESTED).alias("_ingested_at"),
        pl.lit(day).alias("landing_date"),
    )


def on_spark(spark, frame: pl.DataFrame):
    return nw.from_native(spark.createDataFrame(frame.to_arrow()))


def to_polars(frame) -> pl.DataFrame:
    native = frame.to_native()
    return native if isinstance(native, pl.DataFrame) else pl.from_arrow(native.toArrow())


@pytest.mark.parametrize("timezone", [None, "Europe/Berlin"])
def test_both_engines_read_every_time_form_and_bounded_text_alike(spark, timezone):
    rows = [{**GOOD, "transaction_id": f"t{i:02d}", "event_time": t} for i, t in enumerate(TIMES)]
    rows += [{**GOOD, "transaction_id": f"x{i:02d}", **c} for i, c in enumerate(TEXTS)]
    frame = bronze(rows)
    results = []
    for native in (nw.from_native(frame), on_spark(spark, frame)):
        valid, rejected = validate(native, TRANSACTIONS, "landing_date", timezone=timezone)
        results.append(
            (to_polars(valid).sort("transaction_id"), to_polars(rejected).sort("transaction_id"))
        )
    (valid_pl, rejected_pl), (valid_sp, rejected_sp) = results
    assert_frame_equal(valid_sp, valid_pl)
    assert_frame_equal(rejected_sp, rejected_pl)
    instants = dict(zip(valid_pl["transaction_id"], valid_pl["event_time"], strict=True))
    utc = datetime.UTC
    assert instants["t01"] == datetime.datetime(2026, 3, 29, 8, tzinfo=utc)
    assert instants["t02"] == datetime.datetime(2026, 3, 29, 15, 30, tzinfo=utc)
    assert instants["t03"] == datetime.datetime(2026, 3, 29, 5, tzinfo=utc)
    assert instants["t04"] == datetime.datetime(2026, 3, 29, 10, 0, 0, 123456, tzinfo=utc)
    assert instants["t05"] == datetime.datetime(2026, 3, 29, 11, 0, 0, 999999, tzinfo=utc)
    reasons = dict(zip(rejected_pl["transaction_id"], rejected_pl["reason"], strict=True))
    if timezone is None:
        assert "has no UTC offset" in reasons["t06"]
        assert "has no UTC offset" in reasons["t07"]
    else:
        assert instants["t06"] == datetime.datetime(2026, 3, 29, 8, 0, 0, 500000, tzinfo=utc)
        assert "does not exist in time zone Europe/Berlin" in reasons["t07"]
        assert instants["t08"] == datetime.datetime(2026, 3, 29, 1, 30, tzinfo=utc)
        assert instants["t09"] == datetime.datetime(2026, 3, 28, 11, tzinfo=utc)
    for i in (10, 11, 12, 14):
        assert "is not an ISO-8601 timestamp" in reasons[f"t{i:02d}"]
    assert {"x05", "x06", "x07"} <= set(instants)  # empty optional values, a good terminal id
    assert set(rejected_pl.filter(pl.col("transaction_id").str.starts_with("x"))["column"]) == {
        "currency",
        "country",
        "card_id",
        "merchant_id",
        "merchant_category",
        "channel",
    }


def test_an_ambiguous_local_time_takes_the_earlier_instant_on_both_engines(spark):
    day = datetime.date(2026, 10, 25)
    rows = [{**GOOD, "transaction_id": "a", "event_time": "2026-10-25T02:30:00"}]
    frame = bronze(rows, day)
    for native in (nw.from_native(frame), on_spark(spark, frame)):
        valid, _ = validate(native, TRANSACTIONS, "landing_date", timezone="Europe/Berlin")
        assert to_polars(valid)["event_time"].to_list() == [
            datetime.datetime(2026, 10, 25, 0, 30, tzinfo=datetime.UTC)
        ]


def resolved_on(engine, spark, contract, rows, published_rows):
    earlier = datetime.date(2026, 3, 28)
    published_valid, _ = validate(
        nw.from_native(bronze(published_rows, file="p.csv")), contract, "landing_date"
    )
    # The published rows as another partition holds them.
    published_frame = published_valid.to_native().with_columns(
        pl.col("_source_file").str.replace(str(DAY), str(earlier)),
        pl.lit(earlier).alias("landing_date"),
    )
    batch = bronze(rows)
    if engine == "spark":
        valid, _ = validate(on_spark(spark, batch), contract, "landing_date")
        published = on_spark(spark, published_frame)
    else:
        valid, _ = validate(nw.from_native(batch), contract, "landing_date")
        published = nw.from_native(published_frame)
    return resolve_versions(valid, contract, published.select(*published_columns(contract)))


def label(tx: str, at: str, fraud: str) -> dict[str, str]:
    return {
        "transaction_id": tx,
        "card_id": "card_1",
        "reported_at": at,
        "chargeback_reason": "fraud_card_not_present",
        "is_fraud": fraud,
    }


CASES = {
    "transactions": (
        TRANSACTIONS,
        [
            GOOD,
            {**GOOD, "transaction_id": "u"},
            GOOD,
            {**GOOD, "transaction_id": "v", "amount": "1.00"},
            {**GOOD, "transaction_id": "v", "amount": "2.00"},
            {**GOOD, "transaction_id": "w", "channel": "online"},
            {**GOOD, "transaction_id": "z"},
        ],
        [{**GOOD, "transaction_id": "w"}, {**GOOD, "transaction_id": "z"}],
    ),
    "labels": (
        LABELS,
        [
            label("a", "2026-03-29T01:00:00Z", "1"),
            label("a", "2026-03-29T02:00:00Z", "1"),
            label("a", "2026-03-29T03:00:00Z", "0"),
            label("b", "2026-03-29T01:00:00Z", "1"),
            label("b", "2026-03-29T01:00:00Z", "0"),
            label("c", "2026-03-29T05:00:00Z", "1"),
            label("d", "2026-03-29T05:00:00Z", "0"),
        ],
        [label("c", "2026-03-28T05:00:00Z", "1"), label("d", "2026-03-28T05:00:00Z", "1")],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_engines_tell_resends_from_conflicts_alike(spark, case):
    contract, rows, published = CASES[case]
    outcomes = [resolved_on(e, spark, contract, rows, published) for e in ("polars", "spark")]
    lines = ["_source_file", "_line_number"]
    expected, actual = outcomes
    assert_frame_equal(to_polars(actual.unique).sort(lines), to_polars(expected.unique))
    assert_frame_equal(actual.conflicts.sort(lines), expected.conflicts.sort(lines))
    assert (actual.in_batch, actual.of_others, actual.conflicting_keys) == (
        expected.in_batch,
        expected.of_others,
        expected.conflicting_keys,
    )
    unique = to_polars(expected.unique)
    if case == "transactions":
        assert unique["transaction_id"].to_list() == ["t", "u"]
        assert (expected.in_batch, expected.of_others, expected.conflicting_keys) == (1, 1, 2)
        assert expected.conflicts["_line_number"].to_list() == [5, 6, 7]
    else:
        # a: the re-send at 02:00 is dropped, the reversal at 03:00 kept; b: a conflict;
        # c: re-sent after the published report; d: a reversal of the published report.
        assert list(zip(unique["transaction_id"], unique["is_fraud"], strict=True)) == [
            ("a", True),
            ("a", False),
            ("d", False),
        ]
        assert (expected.in_batch, expected.of_others, expected.conflicting_keys) == (1, 1, 1)


def test_rescued_names_agree(spark):
    frame = bronze([GOOD, GOOD, GOOD]).with_columns(
        pl.Series("_rescued_data", ['{"loyalty":"gold"}', '{"note":"a,b","loyalty":"x"}', None])
    )
    assert rescued_names(nw.from_native(frame)) == ["loyalty", "note"]
    assert rescued_names(on_spark(spark, frame)) == ["loyalty", "note"]
