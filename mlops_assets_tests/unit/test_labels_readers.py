"""Label reports read as labels: the training set and performance monitoring.

A transaction's label at t is its latest report with `reported_at <= t`: a fraud reversed by
then is not fraud, a re-sent report changes nothing.
"""

import datetime

import narwhals as nw
import polars as pl
import pytest

from mlops_assets.models.windows import TrainingWindows, labelled_events, resolve_window
from mlops_assets.monitoring.windows import with_labels
from mlops_assets.transforms.labels import changes, day_reports, labels_as_of

UTC = datetime.UTC
D = datetime.date(2026, 1, 1)


def at(n: int, hour: int = 0) -> datetime.datetime:
    return datetime.datetime.combine(D + datetime.timedelta(days=n), datetime.time(hour), UTC)


# t1: fraud on day 1, reversed on day 3. t2: fraud on day 1, re-sent on day 2. t3: a dispute
# (not fraud) on day 2, reported fraud on day 4.
REPORTS = pl.DataFrame(
    {
        "transaction_id": ["t1", "t2", "t2", "t3", "t1", "t3"],
        "is_fraud": [True, True, True, False, False, True],
        "reported_at": [at(1, 10), at(1, 11), at(2, 8), at(2, 9), at(3, 9), at(4, 9)],
    },
    schema={
        "transaction_id": pl.String,
        "is_fraud": pl.Boolean,
        "reported_at": pl.Datetime("us", "UTC"),
    },
).with_columns(pl.col("reported_at").dt.date().alias("reported_date"))


def known(instant: datetime.datetime | None) -> dict[str, bool]:
    rows = labels_as_of(nw.from_native(REPORTS), instant).to_native()
    assert rows.get_column("transaction_id").is_unique().all()
    return dict(rows.select("transaction_id", "is_fraud").rows())


def test_a_transaction_takes_its_latest_report_by_the_instant():
    assert known(at(1)) == {}
    assert known(at(1, 10)) == {"t1": True}  # a report counts from its own instant
    assert known(at(2, 12)) == {"t1": True, "t2": True, "t3": False}
    assert known(at(3, 9)) == {"t1": False, "t2": True, "t3": False}
    assert known(None) == {"t1": False, "t2": True, "t3": True}


def test_an_instant_without_a_time_zone_is_refused():
    with pytest.raises(ValueError, match="needs a time zone"):
        labels_as_of(nw.from_native(REPORTS), datetime.datetime(2026, 1, 3))


def test_re_sends_are_left_out_and_reversals_kept():
    kept = changes(nw.from_native(REPORTS)).to_native().sort("reported_at")
    assert kept.select("transaction_id", "reported_at").rows() == [
        ("t1", at(1, 10)),
        ("t2", at(1, 11)),
        ("t3", at(2, 9)),
        ("t1", at(3, 9)),
        ("t3", at(4, 9)),
    ]


def test_a_days_reports_name_the_fraud_they_reverse():
    def of(n: int) -> list[tuple]:
        upto = REPORTS.filter(pl.col("reported_date") <= D + datetime.timedelta(days=n))
        frame = day_reports(nw.from_native(upto), D + datetime.timedelta(days=n)).to_native()
        return frame.sort("transaction_id").select("transaction_id", "is_fraud", "reverses").rows()

    assert of(1) == [("t1", True, None), ("t2", True, None)]
    assert of(2) == [("t3", False, None)]  # t2's re-send changes nothing
    assert of(3) == [("t1", False, D + datetime.timedelta(days=1))]
    assert of(4) == [("t3", True, None)]


def test_the_training_set_labels_each_event_at_the_cutoff():
    transactions = pl.LazyFrame(
        {
            "transaction_id": ["t1", "t2", "t3", "t4"],
            "event_time": [at(0, h) for h in (1, 2, 3, 4)],
        }
    ).with_columns(pl.col("event_time").dt.date().alias("event_date"))
    windows = TrainingWindows(days=1, label_maturity_days=0)

    def fraud(cutoff: datetime.datetime) -> dict[str, bool]:
        window = resolve_window(windows, cutoff=cutoff, latest_event_day=D, end_date=D)
        events = labelled_events(
            transactions, REPORTS.lazy(), window, ("transaction_id", "event_time")
        )
        assert events.height == 4
        return dict(events.select("transaction_id", "is_fraud").rows())

    assert fraud(at(2, 12)) == {"t1": True, "t2": True, "t3": False, "t4": False}
    # After the reversal t1 is learnt as legitimate; t3's later fraud report counts.
    assert fraud(at(5)) == {"t1": False, "t2": True, "t3": True, "t4": False}


def test_performance_labels_follow_the_latest_report_at_the_horizon():
    predictions = pl.DataFrame(
        {
            "transaction_id": ["t1", "t2", "t3", "t4"],
            "event_time": [at(0, h) for h in (1, 2, 3, 4)],
        }
    )

    def labels(horizon: datetime.datetime) -> dict[str, bool | None]:
        rows = with_labels(predictions, REPORTS, horizon, maturity_days=30)
        return dict(rows.select("transaction_id", "is_fraud").rows())

    # Before maturity: a reported transaction is known, an unreported one is not.
    assert labels(at(2, 12)) == {"t1": True, "t2": True, "t3": False, "t4": None}
    assert labels(at(3, 12)) == {"t1": False, "t2": True, "t3": False, "t4": None}
    # Mature: the unreported one is legitimate; t3 was reported fraud after its dispute.
    assert labels(at(40)) == {"t1": False, "t2": True, "t3": True, "t4": False}
