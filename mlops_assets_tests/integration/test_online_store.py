"""The online store on a temporary SQLite file: latest rows, defaults, atomic re-publish, types."""

import datetime
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from mlops_assets.features.online_store import (
    FeatureVector,
    OnlineStore,
    PublishResult,
    UnknownTableError,
)

UTC = datetime.UTC
T0 = datetime.datetime(2026, 1, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def at(hours: float) -> datetime.datetime:
    return T0 + datetime.timedelta(hours=hours)


def uniform(keys: list[str], value: int, n_features: int = 6) -> pl.DataFrame:
    """Every feature of every key equals `value`: a vector mixing two publishes is detectable."""
    return pl.DataFrame(
        {
            "card_id": keys,
            "ts": [at(value)] * len(keys),
            **{f"f{i}": [value] * len(keys) for i in range(n_features)},
        }
    )


def publish_uniform(store: OnlineStore, keys: list[str], value: int) -> PublishResult:
    features = [f"f{i}" for i in range(6)]
    return store.publish(
        "cards",
        uniform(keys, value),
        key="card_id",
        feature_time="ts",
        features=features,
        defaults=dict.fromkeys(features, -1),
    )


@pytest.fixture
def store(tmp_path) -> OnlineStore:
    with OnlineStore(tmp_path / "online" / "features.sqlite") as opened:
        yield opened


def test_latest_row_per_key_wins_with_ties_and_unordered_input(store):
    history = pl.DataFrame(
        {
            "card_id": ["a", "b", "a", "c", "a", "b", "a", "c"],
            "ts": [at(3), at(1), at(1), at(2), at(5), at(1), at(5), at(0)],
            "amount_sum_1h": [30.0, 10.0, 10.0, 20.0, 50.0, 11.0, 51.0, 0.0],
        }
    )
    result = store.publish(
        "cards",
        history,
        key="card_id",
        feature_time="ts",
        features=["amount_sum_1h"],
        defaults={"amount_sum_1h": 0.0},
    )
    assert (result.table, result.rows, result.version) == ("cards", 3, 1)
    assert result.latest_feature_time == at(5)
    assert Path(result.path).is_file()
    got = {k: store.lookup("cards", k) for k in "abc"}
    # a: two rows at the latest time, the later one in frame order wins; b: tie at its only time.
    assert {k: v.values["amount_sum_1h"] for k, v in got.items()} == {
        "a": 51.0,
        "b": 11.0,
        "c": 20.0,
    }
    assert {k: v.feature_time for k, v in got.items()} == {"a": at(5), "b": at(1), "c": at(2)}
    assert all(v.found for v in got.values())


def test_missing_keys_get_the_documented_defaults_and_are_counted(store):
    store.publish(
        "cards",
        pl.DataFrame({"card_id": ["a"], "ts": [T0], "n_tx_1h": [4], "mean_amount": [12.5]}),
        key="card_id",
        feature_time="ts",
        features=["n_tx_1h", "mean_amount"],
        defaults={"n_tx_1h": 0, "mean_amount": None},
    )
    assert store.describe("cards")["defaults"] == {"n_tx_1h": 0, "mean_amount": None}
    missing = store.lookup("cards", "nope")
    assert missing == FeatureVector(
        "cards", "nope", {"n_tx_1h": 0, "mean_amount": None}, False, None
    )
    # A caller changing a returned vector does not change what later lookups return.
    missing.values["n_tx_1h"] = 99
    assert store.lookup("cards", "nope").values["n_tx_1h"] == 0
    assert store.lookup("cards", "a").values == {"n_tx_1h": 4, "mean_amount": 12.5}
    many = store.lookup_many("cards", ["x", "a", "x"])
    assert [(v.key, v.found) for v in many] == [("x", False), ("a", True), ("x", False)]
    counts = store.stats()["cards"]
    assert (counts["lookups"], counts["hits"], counts["misses"]) == (6, 2, 4)


@pytest.mark.parametrize("cache", [True, False])
def test_republish_replaces_contents_for_another_reader(tmp_path, cache):
    path = tmp_path / "features.sqlite"
    writer = OnlineStore(path)
    reader = OnlineStore(path, cache=cache)
    publish_uniform(writer, ["a", "b", "c"], 1)
    assert [reader.lookup("cards", k).values["f0"] for k in "abc"] == [1, 1, 1]

    result = publish_uniform(writer, ["b", "c", "d"], 2)
    assert (result.version, result.rows) == (2, 3)
    assert reader.lookup("cards", "a") == FeatureVector(
        "cards", "a", {f"f{i}": -1 for i in range(6)}, False, None
    )
    assert [reader.lookup("cards", k).values["f0"] for k in "bcd"] == [2, 2, 2]
    assert [v.values["f5"] for v in reader.lookup_many("cards", ["b", "a", "d"])] == [2, -1, 2]
    described = reader.describe("cards")
    assert (described["version"], described["rows"]) == (2, 3)
    assert described["latest_feature_time"] == at(2)
    assert reader.tables() == ["cards"]
    # The old physical table is gone: the file holds the catalog and one table per feature table.
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert len(names) == 2
    # The batch after the single lookups is answered from the cache refilled with version 2.
    assert reader.stats()["cards"]["cache_hits"] == (3 if cache else 0)
    writer.close()
    reader.close()


def test_types_round_trip(store):
    paris = datetime.datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "card_id": [7, 8],
            "ts": [T0, at(1)],
            "n": pl.Series([3, None], dtype=pl.Int64),
            "small": pl.Series([1, 2], dtype=pl.Int16),
            "x": [0.25, None],
            "flag": [True, False],
            "maybe": [None, True],
            "name": ["grocery", None],
            "category": pl.Series(["travel", "food"], dtype=pl.Categorical),
            "seen_at": [at(0.5), None],
            "naive": [datetime.datetime(2026, 2, 2, 3, 4, 5), None],
            "local": pl.Series([paris, paris]).dt.convert_time_zone("Europe/Paris"),
            "day": [datetime.date(2026, 1, 3), None],
        }
    )
    features = [c for c in frame.columns if c not in ("card_id", "ts")]
    defaults = {
        "n": 0,
        "small": 1,
        "x": 0,  # an int default for a float feature is served as a float
        "flag": False,
        "maybe": None,
        "name": "unknown",
        "category": "none",
        "seen_at": T0,
        "naive": datetime.datetime(2000, 1, 1),
        "local": paris,
        "day": datetime.date(2000, 1, 1),
    }
    store.publish(
        "cards", frame, key="card_id", feature_time="ts", features=features, defaults=defaults
    )
    first, second = store.lookup("cards", "7"), store.lookup("cards", "8")
    assert first.values == {
        "n": 3,
        "small": 1,
        "x": 0.25,
        "flag": True,
        "maybe": None,
        "name": "grocery",
        "category": "travel",
        "seen_at": at(0.5),
        "naive": datetime.datetime(2026, 2, 2, 3, 4, 5),
        "local": paris,
        "day": datetime.date(2026, 1, 3),
    }
    assert second.values["n"] is None and second.values["x"] is None
    assert second.values["flag"] is False and second.values["maybe"] is True
    assert second.values["seen_at"] is None and second.values["day"] is None
    types = {k: type(v) for k, v in first.values.items()}
    assert types["n"] is int and types["x"] is float and types["flag"] is bool
    assert first.values["seen_at"].utcoffset() == datetime.timedelta(0)
    assert first.values["naive"].tzinfo is None
    assert str(first.values["local"].tzinfo) == "Europe/Paris"
    assert first.feature_time == T0 and second.feature_time == at(1)

    missing = store.lookup("cards", "9").values
    assert missing == {**defaults, "x": 0.0}
    assert type(missing["x"]) is float
    described = store.describe("cards")
    assert described["types"] == {
        "n": "int",
        "small": "int",
        "x": "float",
        "flag": "bool",
        "maybe": "bool",
        "name": "str",
        "category": "str",
        "seen_at": "datetime",
        "naive": "datetime",
        "local": "datetime",
        "day": "date",
    }
    assert described["time_zones"] == {"seen_at": "UTC", "local": "Europe/Paris"}
    assert described["key"] == "card_id" and described["feature_time"] == "ts"


def test_a_date_feature_time_and_an_empty_publish(store):
    frame = pl.DataFrame({"card_id": ["a"], "day": [datetime.date(2026, 1, 2)], "v": [1]})
    result = store.publish(
        "daily", frame, key="card_id", feature_time="day", features=["v"], defaults={"v": 0}
    )
    assert result.latest_feature_time == datetime.datetime(2026, 1, 2)
    assert store.lookup("daily", "a").feature_time == datetime.datetime(2026, 1, 2)
    empty = store.publish(
        "daily", frame.clear(), key="card_id", feature_time="day", features=["v"], defaults={"v": 0}
    )
    assert (empty.rows, empty.latest_feature_time, empty.version) == (0, None, 2)
    assert store.lookup("daily", "a").found is False


def test_lookup_many_matches_lookup(store):
    keys = [f"card-{i}" for i in range(1_200)]
    publish_uniform(store, keys, 3)
    asked = [*keys[::-1], "missing", keys[5], keys[5]]
    many = store.lookup_many("cards", asked)
    assert [v.key for v in many] == asked
    assert many == [store.lookup("cards", k) for k in asked]
    assert store.lookup_many("cards", []) == []


def test_tables_on_an_empty_store(tmp_path):
    store = OnlineStore(tmp_path / "none" / "features.sqlite")
    assert store.tables() == []
    with pytest.raises(UnknownTableError, match=r"known tables: \[\]"):
        store.lookup("cards", "a")
    assert not (tmp_path / "none").exists()


def bad_publish(store: OnlineStore, **change) -> None:
    frame = pl.DataFrame(
        {
            "card_id": ["a", "b"],
            "ts": [T0, T0],
            "amount": [1.0, 2.0],
            "recent": [[1, 2], [3]],
            "seen_at": [T0, T0],
        }
    )
    args = {
        "frame": frame,
        "key": "card_id",
        "feature_time": "ts",
        "features": ["amount"],
        "defaults": {"amount": 0.0},
    }
    args.update(change)
    store.publish("cards", **args)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"key": "card"}, ValueError, "key column 'card' is not in the frame"),
        ({"feature_time": "when"}, ValueError, "feature_time column 'when' is not in the frame"),
        ({"features": ["amount", "count"]}, ValueError, r"features not in the frame: \['count'\]"),
        (
            {"defaults": {"amount": 0.0, "count": 0}},
            ValueError,
            r"defaults for unknown features \['count'\]",
        ),
        (
            {"features": ["amount", "seen_at"]},
            ValueError,
            r"features without a default: \['seen_at'\]",
        ),
        (
            {"features": ["recent"], "defaults": {"recent": None}},
            TypeError,
            r"feature 'recent' has type List\(Int64\), not a scalar",
        ),
        ({"defaults": {"amount": "zero"}}, TypeError, "default for feature 'amount' must be"),
        (
            {"features": ["seen_at"], "defaults": {"seen_at": datetime.datetime(2026, 1, 1)}},
            TypeError,
            r"must be a time-zone-aware datetime \(UTC\)",
        ),
        ({"feature_time": "amount"}, TypeError, "must be a Datetime or Date"),
        ({"features": "amount"}, TypeError, "not the string 'amount'"),
        ({"features": ["card_id"], "defaults": {"card_id": ""}}, ValueError, "cannot also be"),
        (
            {"frame": pl.DataFrame({"card_id": ["a", None], "ts": [T0, T0], "amount": [1.0, 2.0]})},
            ValueError,
            r"key column 'card_id' holds 1 null",
        ),
    ],
)
def test_bad_input_gives_a_clear_error(store, change, error, message):
    with pytest.raises(error, match=message):
        bad_publish(store, **change)
    assert store.tables() == []


def test_unknown_table_lists_the_known_ones(store):
    publish_uniform(store, ["a"], 1)
    for call in (
        lambda: store.lookup("card", "a"),
        lambda: store.lookup_many("card", ["a"]),
        lambda: store.describe("card"),
    ):
        with pytest.raises(KeyError) as raised:
            call()
        assert (
            str(raised.value) == "online store has no feature table 'card'; known tables: ['cards']"
        )


def test_a_publish_from_another_process_reaches_a_running_reader_within_a_second(tmp_path):
    path = tmp_path / "features.sqlite"
    reader = OnlineStore(path)
    publish_uniform(reader, ["a", "b"], 1)
    assert reader.lookup("cards", "a").values["f0"] == 1  # connection open, row cached
    script = textwrap.dedent(
        f"""
        import datetime
        import polars as pl
        from mlops_assets.features.online_store import OnlineStore

        features = [f"f{{i}}" for i in range(6)]
        frame = pl.DataFrame(
            {{
                "card_id": ["a", "b"],
                "ts": [datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)] * 2,
                **{{f: [2, 2] for f in features}},
            }}
        )
        OnlineStore({str(path)!r}).publish(
            "cards", frame, key="card_id", feature_time="ts", features=features,
            defaults=dict.fromkeys(features, -1),
        )
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=120)
    published = time.monotonic()
    while reader.lookup("cards", "a").values["f0"] != 2:
        assert time.monotonic() - published < 1.0, "the other process's publish is not visible"
        time.sleep(0.01)
    assert reader.describe("cards")["version"] == 2


@pytest.mark.parametrize("cache", [True, False])
def test_concurrent_readers_never_see_a_mixed_state(tmp_path, cache):
    path = tmp_path / "features.sqlite"
    keys = [f"card-{i}" for i in range(300)]
    writer = OnlineStore(path)
    publish_uniform(writer, keys, 1)
    store = OnlineStore(path, cache=cache)  # one instance shared by the reader threads
    stop = threading.Event()
    seen: set[int] = set()
    failures: list[str] = []

    def read(worker: int) -> None:
        i = worker
        try:
            while not stop.is_set():
                i += 7
                vector = store.lookup("cards", keys[i % len(keys)])
                values = set(vector.values.values())
                batch = store.lookup_many("cards", keys[i % 250 : i % 250 + 40])
                batch_values = {v for b in batch for v in b.values.values()}
                if not vector.found or len(values) != 1 or len(batch_values) != 1:
                    failures.append(f"mixed: {vector} / {batch_values}")
                    return
                seen.update(values | batch_values)
        except Exception as error:  # noqa: BLE001 - reported to the main thread below
            failures.append(repr(error))

    threads = [threading.Thread(target=read, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    try:
        for n in range(12):
            publish_uniform(writer, keys, 2 if n % 2 == 0 else 1)
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert failures == []
    assert seen == {1, 2}
    assert writer.describe("cards")["version"] == 13
    store.close()
