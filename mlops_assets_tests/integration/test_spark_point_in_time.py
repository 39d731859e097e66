"""The point-in-time join and training set on Spark equal the polars ones on awkward inputs.

One Spark session (local[2]) shared with the other Spark tests of the run; small frames.
"""

import datetime

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.defs.resources import SparkResource
from mlops_assets.features import point_in_time, spark_point_in_time
from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.settings import load_settings

pytestmark = pytest.mark.slow

T0 = datetime.datetime(2026, 1, 5, 12, tzinfo=datetime.UTC)
MICRO = datetime.timedelta(microseconds=1)
HOUR = datetime.timedelta(hours=1)


@pytest.fixture(scope="module")
def spark():
    return SparkResource.from_settings(load_settings({"MLOPS_SPARK_MASTER": "local[2]"})).session


def to_spark(spark, frame: pl.DataFrame):
    return spark.createDataFrame(frame.to_arrow())


def from_spark(frame) -> pl.DataFrame:
    return pl.from_arrow(frame.toArrow())


EVENTS = pl.DataFrame(
    {
        "event_id": [f"e{i}" for i in range(10)],
        "card_id": ["a", "a", "a", "a", "b", "b", None, "c", "a", "d"],
        "event_time": [
            T0,  # a feature row at this very instant: not used (the tie rule)
            T0 + MICRO,  # just after it: used
            T0 - 3 * HOUR,  # before every row of its card
            T0 + 30 * HOUR,  # the latest row is 29 h old: stale at 24 h
            T0,  # two events of one card at the same instant
            T0,
            T0,  # a null key matches nothing
            T0 + HOUR,  # a key without feature rows
            None,  # a null time matches nothing
            T0 + 2 * HOUR,  # the latest row has null values: it is used, nulls and all
        ],
        "label": [True, False, False, True, False, True, False, False, True, False],
    },
    schema_overrides={"event_time": pl.Datetime("us", "UTC")},
)

FEATURES = pl.DataFrame(
    {
        "card_id": ["a", "a", "a", "b", "b", "b", "d", "d", None, "e"],
        "feature_time": [
            T0 - HOUR,
            T0,
            T0 + 1 * HOUR,
            T0 - 2 * HOUR,
            T0 - HOUR,
            T0 - HOUR,  # same card and time as the row before: the tie breaker decides
            T0 - HOUR,
            T0,
            T0 - HOUR,  # a null key: ignored
            T0 - HOUR,  # a card without events
        ],
        "seq": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "count_1h": [1, 2, 3, 4, 5, 6, 7, None, 9, 10],
        "mean_amount": [1.0, 2.0, None, 4.0, 5.5, 6.5, 7.0, None, 9.0, 10.0],
    },
    schema_overrides={"feature_time": pl.Datetime("us", "UTC")},
)


def joined_both(spark, events: pl.DataFrame, features: pl.DataFrame, **options):
    expected = point_in_time.point_in_time_join(events, features, **options)
    actual = spark_point_in_time.point_in_time_join(
        to_spark(spark, events), to_spark(spark, features), **options
    )
    return expected, from_spark(actual)


@pytest.mark.parametrize("staleness", [None, datetime.timedelta(hours=24)])
def test_join_equals_polars_on_awkward_rows(spark, staleness):
    options = dict(
        keys="card_id",
        event_time="event_time",
        feature_time="feature_time",
        columns=["count_1h", "mean_amount"],
        tie_breaker="seq",
        max_staleness=staleness,
        prefix="f__",
    )
    expected, actual = joined_both(spark, EVENTS, FEATURES, **options)
    assert actual.schema == expected.schema
    assert_frame_equal(actual.sort("event_id"), expected.sort("event_id"))
    by_id = {r["event_id"]: r for r in expected.iter_rows(named=True)}
    # The rules the rows were built for, on the polars result the Spark one equals.
    assert by_id["e0"]["f__feature_time"] == T0 - HOUR
    assert by_id["e1"]["f__feature_time"] == T0
    assert by_id["e2"]["f__count_1h"] is None
    assert (by_id["e3"]["f__count_1h"] is None) == (staleness is not None)
    assert by_id["e4"]["f__count_1h"] == by_id["e5"]["f__count_1h"] == 6
    assert by_id["e6"]["f__count_1h"] is by_id["e7"]["f__count_1h"] is None
    assert by_id["e8"]["f__feature_time"] is None
    assert by_id["e9"]["f__feature_time"] == T0 and by_id["e9"]["f__count_1h"] is None


def test_staleness_is_inclusive_and_dates_join_too(spark):
    events = pl.DataFrame(
        {
            "k": [1, 1, 2, 2],
            "day": [datetime.date(2026, 1, d) for d in (3, 4, 3, 9)],
        }
    )
    features = pl.DataFrame(
        {"k": [1, 2, 2], "as_of": [datetime.date(2026, 1, d) for d in (2, 2, 3)], "v": [1, 2, 3]}
    )
    options = dict(
        keys=["k"],
        event_time="day",
        feature_time="as_of",
        columns="v",
        max_staleness=datetime.timedelta(days=2),
        prefix="x_",
    )
    expected, actual = joined_both(spark, events, features, **options)
    assert_frame_equal(actual.sort("k", "day"), expected.sort("k", "day"))
    assert expected.sort("k", "day")["x_v"].to_list() == [1, 1, 2, None]


def test_duplicates_are_refused_alike(spark):
    twice = FEATURES.filter(pl.col("card_id") == "b")
    options = dict(
        keys="card_id", event_time="event_time", feature_time="feature_time", columns="count_1h"
    )
    for tie, match in ((None, "pass tie_breaker"), ("feature_time", "ambiguous")):
        rows = twice.with_columns(pl.col("feature_time").alias("tb")) if tie else twice
        tie_breaker = "tb" if tie else None
        with pytest.raises(ValueError, match=match):
            point_in_time.point_in_time_join(EVENTS, rows, tie_breaker=tie_breaker, **options)
        with pytest.raises(ValueError, match=match):
            spark_point_in_time.point_in_time_join(
                to_spark(spark, EVENTS), to_spark(spark, rows), tie_breaker=tie_breaker, **options
            )


def test_bad_inputs_are_named(spark):
    events = to_spark(spark, EVENTS)
    with pytest.raises(ValueError, match=r"features lack column\(s\) \['missing'\]"):
        spark_point_in_time.point_in_time_join(
            events,
            to_spark(spark, FEATURES),
            keys="card_id",
            event_time="event_time",
            feature_time="feature_time",
            columns="missing",
        )
    other = to_spark(spark, FEATURES.with_columns(pl.col("feature_time").dt.date()))
    with pytest.raises(ValueError, match="event time 'event_time' is timestamp"):
        spark_point_in_time.point_in_time_join(
            events,
            other,
            keys="card_id",
            event_time="event_time",
            feature_time="feature_time",
            columns="count_1h",
        )
    with pytest.raises(ValueError, match="would clash"):
        spark_point_in_time.point_in_time_join(
            events,
            to_spark(spark, FEATURES.rename({"count_1h": "label"})),
            keys="card_id",
            event_time="event_time",
            feature_time="feature_time",
            columns="label",
        )


def fraud_inputs() -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """Events and both feature tables of the fraud spec, with equal times and gaps."""
    from mlops_assets.features.registry import feature_table

    times = [T0, T0 + MICRO, T0 + HOUR, T0 + 50 * HOUR, T0, T0 + 2 * HOUR]
    events = pl.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(len(times))],
            "card_id": ["c1", "c1", "c2", "c1", "c3", "c2"],
            "merchant_id": ["m1", "m2", "m1", "m1", "m9", "m2"],
            "event_time": times,
            "amount": [10.0, 250.0, 3.5, 80.0, 12.0, 0.5],
            "merchant_category": ["food"] * len(times),
            "channel": ["pos", "online", "pos", "atm", "pos", "online"],
            "entry_mode": ["chip"] * len(times),
            "device_type": ["none"] * len(times),
            "country": ["DE", "FR", None, "DE", "DE", "DE"],
            "card_country": ["DE", "DE", "DE", "DE", None, "DE"],
            "is_fraud": [False, True, False, False, False, True],
        },
        schema_overrides={"event_time": pl.Datetime("us", "UTC")},
    )
    types = {"int": pl.Int64, "float": pl.Float64, "bool": pl.Boolean, "str": pl.String}
    tables = {}
    for lookup in FRAUD_SPEC.lookups:
        definition = feature_table(lookup.table)
        rows = []
        for n, (key, at) in enumerate(
            [("1", T0 - HOUR), ("1", T0), ("2", T0 - 30 * HOUR), ("2", T0 + HOUR)]
        ):
            row = {
                definition.entity_keys[0]: f"{lookup.keys[0][0]}{key}",
                definition.timestamp_key: at,
                definition.partition_column: at.date(),
            }
            for extra in definition.row_keys[1:]:
                row[extra] = f"r{n}"
            for feature in definition.features:
                if feature.dtype == "bool":
                    row[feature.name] = n % 2 == 0
                elif n == 2 and feature.dtype != "str":
                    row[feature.name] = None  # a row whose values are null
                else:
                    row[feature.name] = (n + 1) if feature.dtype == "int" else (n + 1) * 1.5
            rows.append(row)
        schema = {
            definition.entity_keys[0]: pl.String,
            definition.timestamp_key: pl.Datetime("us", "UTC"),
            definition.partition_column: pl.Date,
            **{extra: pl.String for extra in definition.row_keys[1:]},
            **{f.name: types[f.dtype] for f in definition.features},
        }
        tables[lookup.table] = pl.DataFrame(rows, schema=schema)
    return events, tables


def test_training_set_of_the_fraud_spec_equals_polars(spark):
    events, tables = fraud_inputs()
    expected = FRAUD_SPEC.training_set(events, tables)
    actual = spark_point_in_time.training_set(
        to_spark(spark, events), {n: to_spark(spark, t) for n, t in tables.items()}, FRAUD_SPEC
    )
    actual = from_spark(actual)
    assert actual.schema == expected.schema
    assert_frame_equal(actual.sort("transaction_id"), expected.sort("transaction_id"))
    # Some events found rows, some took the defaults.
    time_columns = [lookup.time_column for lookup in FRAUD_SPEC.lookups]
    assert 0 < expected.select(time_columns[0]).null_count().item() < expected.height
