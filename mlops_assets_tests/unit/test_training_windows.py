"""The training-set windows: label horizon, window resolution, labelled events, feature rows."""

import datetime

import polars as pl
import pytest

from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.models.windows import (
    TrainingWindows,
    WindowError,
    feature_rows,
    label_horizon,
    labelled_events,
    parse_cutoff,
    resolve_window,
)

UTC = datetime.UTC
CUTOFF = datetime.datetime(2026, 1, 13, tzinfo=UTC)


def test_label_horizon_is_the_end_of_the_latest_label_day_or_now_if_earlier():
    now = datetime.datetime(2026, 1, 20, 9, tzinfo=UTC)
    assert label_horizon(datetime.date(2026, 1, 12), now) == CUTOFF
    assert label_horizon(datetime.date(2026, 1, 20), now) == now
    assert label_horizon(None, now) == now
    with pytest.raises(WindowError, match="needs a time zone"):
        label_horizon(None, now.replace(tzinfo=None))


def test_the_window_ends_at_the_last_day_whose_labels_are_mature():
    window = resolve_window(
        TrainingWindows(days=7, label_maturity_days=3),
        cutoff=CUTOFF,
        latest_event_day=datetime.date(2026, 1, 12),
    )
    assert window.mature_until == CUTOFF - datetime.timedelta(days=3)
    assert (window.start, window.end) == (datetime.date(2026, 1, 4), datetime.date(2026, 1, 10))
    # Fewer event days than mature ones: the window ends at the latest event day.
    early = resolve_window(
        TrainingWindows(days=2, label_maturity_days=0),
        cutoff=CUTOFF,
        latest_event_day=datetime.date(2026, 1, 5),
    )
    assert (early.start, early.end) == (datetime.date(2026, 1, 4), datetime.date(2026, 1, 5))


def test_an_end_date_after_the_mature_labels_is_refused_with_the_reason():
    with pytest.raises(WindowError, match="end_date 2026-01-12 is after 2026-01-10.*3 days mature"):
        resolve_window(
            TrainingWindows(days=7, label_maturity_days=3),
            cutoff=CUTOFF,
            latest_event_day=datetime.date(2026, 1, 12),
            end_date=datetime.date(2026, 1, 12),
        )
    with pytest.raises(WindowError, match="no events"):
        resolve_window(TrainingWindows(), cutoff=CUTOFF, latest_event_day=None)


def test_bad_windows_and_cutoffs_name_the_input():
    with pytest.raises(WindowError, match="days must be at least 1, got 0"):
        TrainingWindows(days=0)
    with pytest.raises(WindowError, match="label_maturity_days must be at least 0, got -1"):
        TrainingWindows(label_maturity_days=-1)
    with pytest.raises(WindowError, match="look-back of card_behaviour must be at least 0"):
        TrainingWindows(feature_lookback_days={"card_behaviour": -2})
    with pytest.raises(KeyError, match="no feature table 'cards'"):
        TrainingWindows(feature_lookback_days={"cards": 3})
    with pytest.raises(WindowError, match="no feature look-back declared for 'merchant_risk'"):
        TrainingWindows(feature_lookback_days={"card_behaviour": 30}).lookback("merchant_risk")
    with pytest.raises(WindowError, match="needs a time zone"):
        parse_cutoff("2026-01-13T00:00:00")
    with pytest.raises(WindowError, match="is not an ISO 8601 instant"):
        parse_cutoff("yesterday")
    assert parse_cutoff("2026-01-13T00:00:00+00:00") == CUTOFF


def test_overrides_replace_only_what_they_name():
    declared = TrainingWindows(days=21, label_maturity_days=3)
    assert declared.replace().to_dict() == declared.to_dict()
    assert declared.replace(days=7).days == 7
    assert declared.replace(days=7).label_maturity_days == 3
    assert declared.replace(label_maturity_days=1).days == 21


def test_labelled_events_keep_mature_events_with_labels_reported_by_the_cutoff():
    times = [
        datetime.datetime(2026, 1, 9, 12, tzinfo=UTC),
        datetime.datetime(2026, 1, 10, 1, tzinfo=UTC),
        datetime.datetime(2026, 1, 10, 23, tzinfo=UTC),
        datetime.datetime(2026, 1, 3, 23, tzinfo=UTC),
    ]
    transactions = pl.DataFrame(
        {
            "transaction_id": ["a", "b", "c", "old"],
            "event_time": times,
            "event_date": [t.date() for t in times],
            "amount": [1.0, 2.0, 3.0, 4.0],
        }
    ).lazy()
    labels = pl.DataFrame(
        {
            "transaction_id": ["a", "b", "b"],
            "is_fraud": [True, True, True],
            # a's chargeback came after the cutoff: not known at training time.
            "reported_at": [CUTOFF + datetime.timedelta(hours=13), CUTOFF, CUTOFF],
        }
    ).lazy()
    window = resolve_window(
        TrainingWindows(days=7, label_maturity_days=2),
        cutoff=CUTOFF + datetime.timedelta(hours=12),
        latest_event_day=datetime.date(2026, 1, 10),
    )
    events = labelled_events(transactions, labels, window, ("transaction_id", "event_time"))
    # Mature until 2026-01-11 12:00: a, b and c are kept; old is before the first day.
    assert window.start == datetime.date(2026, 1, 4)
    assert events.get_column("transaction_id").to_list() == ["a", "b", "c"]
    assert events.get_column("is_fraud").to_list() == [False, True, False]
    strict = resolve_window(
        TrainingWindows(days=7, label_maturity_days=2),
        cutoff=datetime.datetime(2026, 1, 12, 12, tzinfo=UTC),
        latest_event_day=datetime.date(2026, 1, 10),
        end_date=datetime.date(2026, 1, 10),
    )
    # Mature until 2026-01-10 12:00: c (23:00 that day) is left out; b's chargeback came
    # after this cutoff, so b is legitimate as far as this training set knows.
    kept = labelled_events(transactions, labels, strict, ("transaction_id", "event_time"))
    assert kept.get_column("transaction_id").to_list() == ["a", "b"]
    assert kept.get_column("is_fraud").to_list() == [False, False]


def test_feature_rows_read_each_table_back_to_its_declared_lookback():
    days = [datetime.date(2026, 1, 1) + datetime.timedelta(days=i) for i in range(40)]
    tables = {
        "features/card_behaviour": pl.DataFrame({"event_date": days, "row": range(40)}),
        "features/merchant_risk": pl.DataFrame({"day": days, "row": range(40)}),
    }
    windows = TrainingWindows(feature_lookback_days={"card_behaviour": 10, "merchant_risk": 2})
    start, end = datetime.date(2026, 1, 20), datetime.date(2026, 1, 25)
    rows = feature_rows(lambda name: tables[name].lazy(), FRAUD_SPEC, windows, start, end)
    assert rows["card_behaviour"].get_column("event_date").min() == datetime.date(2026, 1, 10)
    assert rows["card_behaviour"].get_column("event_date").max() == end
    assert rows["merchant_risk"].get_column("day").min() == datetime.date(2026, 1, 18)
    assert rows["merchant_risk"].height == 8
