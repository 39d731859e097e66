import datetime
import random

import narwhals as nw
import polars as pl
import pytest

from mlops_assets.features import point_in_time
from mlops_assets.features.point_in_time import (
    PointInTimeLookup,
    point_in_time_join,
    training_set,
)

UTC_US = pl.Datetime("us", "UTC")
T0 = datetime.datetime(2026, 1, 10, 12, 0, tzinfo=datetime.UTC)
MICROSECOND = datetime.timedelta(microseconds=1)


def at(minutes: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


def events_frame(rows, time_type=UTC_US) -> pl.DataFrame:
    """Rows of (card_id, event_time); transaction ids number them in order."""
    return pl.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(len(rows))],
            "card_id": [r[0] for r in rows],
            "event_time": [r[1] for r in rows],
            "is_fraud": [i % 3 == 0 for i in range(len(rows))],
        },
        schema={
            "transaction_id": pl.String,
            "card_id": pl.String,
            "event_time": time_type,
            "is_fraud": pl.Boolean,
        },
    )


def features_frame(rows, time_type=UTC_US) -> pl.DataFrame:
    """Rows of (card_id, feature_time, amount_mean[, version])."""
    return pl.DataFrame(
        {
            "card_id": [r[0] for r in rows],
            "feature_time": [r[1] for r in rows],
            "amount_mean": [r[2] for r in rows],
            "version": [r[3] if len(r) > 3 else 0 for r in rows],
        },
        schema={
            "card_id": pl.String,
            "feature_time": time_type,
            "amount_mean": pl.Float64,
            "version": pl.Int64,
        },
    )


def join(events, features, **options):
    arguments = {
        "keys": ["card_id"],
        "event_time": "event_time",
        "feature_time": "feature_time",
        "columns": ["amount_mean"],
    }
    return point_in_time_join(events, features, **{**arguments, **options})


@pytest.fixture(params=["composite", "by_keys"])
def route(request, monkeypatch):
    """Run a test through the sorted-composite matcher and through the keyed as-of join."""
    if request.param == "by_keys":
        monkeypatch.setattr(point_in_time, "_match_by_composite", lambda sides: None)
    return request.param


def test_values_known_at_or_after_the_event_never_leak_into_it(route):
    events = events_frame([("c1", at(60)), ("c2", at(60))])
    features = features_frame(
        [
            ("c1", at(0), 1.0),
            ("c1", at(59), 2.0),  # the latest value known before the event
            ("c1", at(60), 666.0),  # known at the very instant of the event: not yet usable
            ("c1", at(60) + MICROSECOND, 667.0),  # known after the event
            ("c1", at(120), 668.0),
            ("c2", at(60), 669.0),  # c2's only row is at its event time
            ("c2", at(61), 670.0),
        ]
    )
    out = join(events, features)
    assert out.get_column("amount_mean").to_list() == [2.0, None]
    assert out.get_column("feature_time").to_list() == [at(59), None]
    assert not out.get_column("amount_mean").is_in([666.0, 667.0, 668.0, 669.0, 670.0]).any()
    assert (out.get_column("feature_time").drop_nulls() < out.get_column("event_time")).all()


def test_tie_rule_a_row_at_the_event_time_counts_from_the_next_instant(route):
    events = events_frame(
        [("c1", at(10)), ("c1", at(10) + MICROSECOND), ("c2", at(5)), ("c2", at(5) + MICROSECOND)]
    )
    features = features_frame([("c1", at(0), 1.0), ("c1", at(10), 2.0), ("c2", at(5), 3.0)])
    out = join(events, features, prefix="card__")
    assert out.get_column("card__amount_mean").to_list() == [1.0, 2.0, None, 3.0]
    assert out.get_column("card__feature_time").to_list() == [at(0), at(10), None, at(5)]


def test_equal_keys_and_time_are_settled_by_the_greatest_tie_breaker(route):
    events = events_frame([("c1", at(10)), ("c2", at(10)), ("c1", at(3))])
    features = features_frame(
        [
            ("c1", at(5), 1.0, 1),
            ("c1", at(5), 3.0, 3),
            ("c1", at(5), 2.0, 2),
            ("c1", at(1), 9.0, 1),
            ("c2", at(5), 7.0, None),  # a null tie breaker ranks below any value
            ("c2", at(5), 8.0, -4),
        ]
    )
    out = join(events, features, tie_breaker="version")
    assert out.get_column("amount_mean").to_list() == [3.0, 8.0, 9.0]


def test_equal_keys_and_time_without_tie_breaker_raise(route):
    events = events_frame([("c1", at(10))])
    features = features_frame([("c0", at(1), 0.0), ("c1", at(5), 1.0), ("c1", at(5), 2.0)])
    with pytest.raises(ValueError, match=r"sharing keys \['card_id'\] and feature time"):
        join(events, features)
    # Duplicates are refused even where no event would use them.
    with pytest.raises(ValueError, match="pass tie_breaker"):
        join(events_frame([("c9", at(10))]), features)


def test_equal_tie_breakers_are_ambiguous_and_raise(route):
    features = features_frame([("c1", at(5), 1.0, 1), ("c1", at(5), 2.0, 1)])
    with pytest.raises(ValueError, match="ambiguous"):
        join(events_frame([("c1", at(10))]), features, tie_breaker="version")


def test_every_event_once_in_its_order_whatever_its_keys(route):
    rows = [
        ("c2", at(30)),
        ("unknown", at(30)),  # no feature row at all
        (None, at(30)),  # null key: no match, no error
        ("c1", None),  # null time: no match, no error
        ("c1", at(2)),
        ("c1", at(0)),  # before any feature row
        ("c2", at(30)),  # same key and time as the first event
        ("c1", at(25)),
    ]
    events = events_frame(rows)
    features = features_frame(
        [
            ("c1", at(1), 1.0),
            ("c2", at(20), 2.0),
            ("c1", at(20), 3.0),
            (None, at(1), 99.0),  # null keys are ignored
            ("c1", None, 98.0),  # null times are ignored
        ]
    )
    out = join(events, features)
    assert out.height == events.height
    assert out.select(events.columns).equals(events)
    assert out.columns == [*events.columns, "amount_mean", "feature_time"]
    assert out.get_column("amount_mean").to_list() == [2.0, None, None, None, 1.0, None, 2.0, 3.0]


def test_max_staleness_treats_older_rows_as_missing(route):
    events = events_frame([("c1", at(10)), ("c1", at(20)), ("c1", at(31)), ("c2", at(10))])
    features = features_frame([("c1", at(0), 1.0), ("c1", at(21), 2.0), ("c2", at(9), 3.0)])
    out = join(events, features, max_staleness=datetime.timedelta(minutes=10))
    # Exactly 10 minutes old still counts; 10 minutes and a bit does not, even though an
    # older row exists.
    assert out.get_column("amount_mean").to_list() == [1.0, None, 2.0, 3.0]
    with pytest.raises(ValueError, match="positive"):
        join(events, features, max_staleness=datetime.timedelta(0))


def test_several_keys_must_all_match(route):
    events = pl.DataFrame(
        {
            "card_id": ["c1", "c1", "c2", "c1"],
            "merchant_id": ["m1", "m2", "m1", None],
            "event_time": [at(10)] * 4,
        },
        schema_overrides={"event_time": UTC_US},
    )
    features = pl.DataFrame(
        {
            "card_id": ["c1", "c1", "c2", "c2"],
            "merchant_id": ["m1", "m2", "m2", "m1"],
            "feature_time": [at(1), at(2), at(3), at(4)],
            "pair_count": [11, 12, 22, 21],
        },
        schema_overrides={"feature_time": UTC_US},
    )
    out = point_in_time_join(
        events,
        features,
        keys=["card_id", "merchant_id"],
        event_time="event_time",
        feature_time="feature_time",
        columns=["pair_count"],
        prefix="pair__",
    )
    assert out.get_column("pair__pair_count").to_list() == [11, 12, 21, None]
    assert out.get_column("pair__feature_time").to_list() == [at(1), at(2), at(4), None]


def test_same_inputs_give_the_same_rows_whatever_the_feature_order(route):
    events, features = random_frames(random.Random(7), n_events=150, n_features=300)
    expected = join(events, features, tie_breaker="version")
    for seed in range(3):
        shuffled = features.sample(fraction=1.0, shuffle=True, seed=seed)
        assert join(events, shuffled, tie_breaker="version").equals(expected)
    assert join(events, features, tie_breaker="version").equals(expected)


def random_frames(rng, *, n_events, n_features, time_type=UTC_US, origin=T0, step=None):
    step = step or datetime.timedelta(minutes=1)
    cards = [f"c{i}" for i in range(12)]
    events = events_frame(
        [
            (
                None if rng.random() < 0.05 else rng.choice(cards),
                None if rng.random() < 0.05 else origin + step * rng.randrange(60),
            )
            for _ in range(n_events)
        ],
        time_type,
    )
    versions = rng.sample(range(10 * n_features), n_features)
    features = features_frame(
        [
            (
                None if rng.random() < 0.03 else rng.choice(cards[:-2]),
                None if rng.random() < 0.03 else origin + step * rng.randrange(60),
                round(rng.random() * 100, 3),
                versions[i],
            )
            for i in range(n_features)
        ],
        time_type,
    )
    return events, features


def brute_force(events, features, max_staleness):
    """For each event, scan every feature row: the textbook definition, slowly."""
    rows = features.to_dicts()
    expected = []
    for event in events.iter_rows(named=True):
        key, when = event["card_id"], event["event_time"]
        candidates = [
            r
            for r in rows
            if key is not None
            and when is not None
            and r["card_id"] == key
            and r["feature_time"] is not None
            and r["feature_time"] < when
            and (max_staleness is None or when - r["feature_time"] <= max_staleness)
        ]
        best = max(candidates, key=lambda r: (r["feature_time"], r["version"]), default=None)
        expected.append(
            (None, None) if best is None else (best["amount_mean"], best["feature_time"])
        )
    return expected


@pytest.mark.parametrize(
    ("time_type", "step", "max_staleness"),
    [
        (UTC_US, datetime.timedelta(minutes=1), None),
        (UTC_US, datetime.timedelta(minutes=1), datetime.timedelta(minutes=7)),
        (pl.Datetime("ms"), datetime.timedelta(seconds=1), datetime.timedelta(seconds=12)),
        (pl.Date, datetime.timedelta(days=1), datetime.timedelta(days=5)),
        # Two centuries in nanoseconds overflow the composite: the keyed route takes over.
        (pl.Datetime("ns", "UTC"), datetime.timedelta(days=1300), None),
        # Far before 1970 in nanoseconds: large negative times near the Int64 limit.
        (pl.Datetime("ns"), datetime.timedelta(days=6), datetime.timedelta(days=30)),
    ],
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_a_brute_force_reference_on_random_rows(
    route, time_type, step, max_staleness, seed
):
    rng = random.Random(seed)
    origin = T0.date() if time_type == pl.Date else T0
    if isinstance(time_type, pl.Datetime) and time_type.time_zone is None:
        origin = origin.replace(tzinfo=None)
    if time_type == pl.Datetime("ns", "UTC"):
        origin = datetime.datetime(1800, 1, 1, tzinfo=datetime.UTC)
    elif time_type == pl.Datetime("ns"):
        origin = datetime.datetime(1680, 1, 1)
    events, features = random_frames(
        rng, n_events=300, n_features=400, time_type=time_type, origin=origin, step=step
    )
    out = join(events, features, tie_breaker="version", max_staleness=max_staleness)
    got = list(zip(out["amount_mean"].to_list(), out["feature_time"].to_list(), strict=True))
    assert got == brute_force(events, features, max_staleness)


def test_a_hash_collision_never_mixes_entities(monkeypatch):
    # Every key hashes alike: the composite route must notice and give exact answers anyway.
    monkeypatch.setattr(
        pl.DataFrame,
        "hash_rows",
        lambda self, *args, **kwargs: pl.repeat(7, self.height, dtype=pl.UInt64, eager=True),
    )
    for seed in range(4):
        events, features = random_frames(random.Random(seed), n_events=200, n_features=300)
        out = join(events, features, tie_breaker="version")
        got = list(zip(out["amount_mean"].to_list(), out["feature_time"].to_list(), strict=True))
        assert got == brute_force(events, features, None)


def test_nanosecond_times_keep_the_strict_rule():
    ns = pl.Datetime("ns", "UTC")
    base = 1_767_225_600_000_000_000
    events = pl.DataFrame(
        {"card_id": ["c1", "c1"], "event_time": pl.Series([base + 5, base + 6]).cast(ns)}
    )
    features = pl.DataFrame(
        {
            "card_id": ["c1", "c1"],
            "feature_time": pl.Series([base + 4, base + 5]).cast(ns),
            "amount_mean": [1.0, 2.0],
        }
    )
    out = join(events, features, max_staleness=datetime.timedelta(microseconds=1))
    assert out.get_column("amount_mean").to_list() == [1.0, 2.0]


@pytest.mark.parametrize(
    ("event_type", "feature_type"),
    [
        (UTC_US, pl.Datetime("ms", "UTC")),
        (UTC_US, pl.Datetime("us")),
        (pl.Date, UTC_US),
    ],
)
def test_mismatched_time_types_raise_naming_both(event_type, feature_type):
    events = events_frame([("c1", at(10))]).with_columns(pl.col("event_time").cast(event_type))
    features = features_frame([("c1", at(1), 1.0)]).with_columns(
        pl.col("feature_time").cast(feature_type)
    )
    with pytest.raises(ValueError, match="event time 'event_time' is .* feature time") as raised:
        join(events, features)
    assert str(event_type) in str(raised.value)
    assert str(feature_type) in str(raised.value)


def test_invalid_requests_raise_clearly():
    events = events_frame([("c1", at(10))])
    features = features_frame([("c1", at(1), 1.0)])
    with pytest.raises(ValueError, match="key 'card_id' is String in events but Int64"):
        join(events, features.with_columns(pl.col("card_id").str.slice(1).cast(pl.Int64)))
    with pytest.raises(ValueError, match=r"features lack column\(s\) \['missing'\]"):
        join(events, features, columns=["missing"])
    with pytest.raises(ValueError, match="clash"):
        join(events.with_columns(amount_mean=pl.lit(0.0)), features)
    with pytest.raises(ValueError, match="must be Date or Datetime"):
        join(
            events.with_columns(pl.col("event_time").dt.epoch("s")),
            features.with_columns(pl.col("feature_time").dt.epoch("s")),
        )


def test_frames_come_back_as_they_were_given():
    events = events_frame([("c1", at(10)), ("c2", at(10))])
    features = features_frame([("c1", at(1), 1.0)])
    eager = join(events, features)
    assert isinstance(eager, pl.DataFrame)
    lazy = join(events.lazy(), features.lazy())
    assert isinstance(lazy, pl.LazyFrame)
    assert lazy.collect().equals(eager)
    wrapped = join(nw.from_native(events), nw.from_native(features.lazy()))
    assert isinstance(wrapped, nw.DataFrame)
    assert wrapped.to_native().equals(eager)
    wrapped_lazy = join(nw.from_native(events.lazy()), nw.from_native(features))
    assert isinstance(wrapped_lazy, nw.LazyFrame)
    assert wrapped_lazy.to_native().collect().equals(eager)
    with pytest.raises(NotImplementedError, match="polars"):
        join(nw.from_native(events.to_pandas()), features)


def test_empty_frames_give_null_features():
    events = events_frame([("c1", at(10))])
    out = join(events, features_frame([]))
    assert out.get_column("amount_mean").to_list() == [None]
    assert out.schema["feature_time"] == UTC_US
    empty = join(events_frame([]), features_frame([("c1", at(1), 1.0)]))
    assert empty.height == 0
    assert empty.columns == [*events.columns, "amount_mean", "feature_time"]


def test_training_set_joins_each_table_in_turn():
    events = events_frame([("c1", at(10)), ("c2", at(10))]).with_columns(
        merchant_id=pl.Series(["m1", "m2"])
    )
    cards = features_frame([("c1", at(1), 1.0), ("c2", at(11), 2.0)])
    merchants = pl.DataFrame(
        {"merchant_id": ["m1", "m2"], "updated_at": [at(2), at(3)], "fraud_rate": [0.1, 0.2]},
        schema_overrides={"updated_at": UTC_US},
    )
    out = training_set(
        events,
        [
            PointInTimeLookup(
                table=cards,
                keys=["card_id"],
                feature_time="feature_time",
                columns=["amount_mean"],
                prefix="card__",
            ),
            {
                "table": merchants,
                "keys": ["merchant_id"],
                "feature_time": "updated_at",
                "columns": ["fraud_rate"],
                "prefix": "merchant__",
            },
        ],
        event_time="event_time",
    )
    assert out.columns == [
        *events.columns,
        "card__amount_mean",
        "card__feature_time",
        "merchant__fraud_rate",
        "merchant__updated_at",
    ]
    assert out.get_column("card__amount_mean").to_list() == [1.0, None]
    assert out.get_column("merchant__fraud_rate").to_list() == [0.1, 0.2]
