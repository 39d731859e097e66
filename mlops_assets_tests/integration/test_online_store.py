"""The online store on SQLite and on a real Redis: latest rows, defaults, atomic re-publish, types.

Behaviour tests run against both backends (`backend` fixture); a test's stores share one
SQLite file, or one Redis server under a key prefix of their own, like serving replicas do.
"""

import datetime
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import polars as pl
import pytest
import redis

from mlops_assets.features.online_store import (
    FeatureVector,
    OnlineStore,
    OnlineStoreUnavailableError,
    PublishResult,
    UnknownTableError,
    open_online_store,
)
from mlops_assets.features.redis_store import RedisOnlineStore
from mlops_assets.settings import load_settings
from mlops_assets.stack.process import free_port

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


def publish_uniform(store, keys: list[str], value: int) -> PublishResult:
    features = [f"f{i}" for i in range(6)]
    return store.publish(
        "cards",
        uniform(keys, value),
        key="card_id",
        feature_time="ts",
        features=features,
        defaults=dict.fromkeys(features, -1),
    )


class Backend:
    """Opens stores of one backend that share their storage (a file, or a Redis key prefix)."""

    def __init__(self, name: str, tmp_path: Path, redis_url: str | None) -> None:
        self.name = name
        self.path = tmp_path / "online" / "features.sqlite"
        self.url = redis_url
        self.prefix = f"test:{uuid.uuid4().hex}"
        self.opened: list = []

    def open(self, cache: bool = True):
        if self.name == "sqlite":
            store = OnlineStore(self.path, cache=cache)
        else:
            store = RedisOnlineStore(self.url, prefix=self.prefix)
        self.opened.append(store)
        return store

    def script(self) -> str:
        """Python source opening a store on the same storage, for another process."""
        if self.name == "sqlite":
            return f"OnlineStore({str(self.path)!r})"
        return f"RedisOnlineStore({self.url!r}, prefix={self.prefix!r})"


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path) -> Backend:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    opened = Backend(request.param, tmp_path, url)
    yield opened
    for store in opened.opened:
        store.close()


@pytest.fixture
def store(backend):
    return backend.open()


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
    if isinstance(store, OnlineStore):
        assert Path(result.path).is_file()
    else:
        assert result.path == store.location
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
def test_republish_replaces_contents_for_another_reader(backend, cache):
    writer = backend.open()
    reader = backend.open(cache=cache)
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
    if backend.name == "sqlite":
        # The old physical table is gone: the file holds the catalog and one table per feature
        # table.
        with sqlite3.connect(backend.path) as conn:
            names = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
        assert len(names) == 2
        # The batch after the single lookups is answered from the cache refilled with version 2.
        assert reader.stats()["cards"]["cache_hits"] == (3 if cache else 0)
    else:
        # The old generation is gone: the catalog, one entry and one row hash remain, for good.
        client = redis.Redis.from_url(backend.url)
        names = sorted(k.decode() for k in client.scan_iter(f"{backend.prefix}:*"))
        generation = client.hget(f"{backend.prefix}:catalog", "cards").decode()
        assert names == [
            f"{backend.prefix}:catalog",
            f"{backend.prefix}:meta:{generation}",
            f"{backend.prefix}:rows:{generation}",
        ]
        assert client.ttl(f"{backend.prefix}:rows:{generation}") == -1
        assert reader.stats()["cards"]["cache_hits"] == 0
        client.close()


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


def test_tables_on_an_empty_store(backend, tmp_path):
    store = backend.open()
    assert store.tables() == []
    with pytest.raises(UnknownTableError, match=r"known tables: \[\]"):
        store.lookup("cards", "a")
    with pytest.raises(UnknownTableError, match=r"known tables: \[\]"):
        store.describe("cards")
    assert not (tmp_path / "online").exists()


def bad_publish(store, **change) -> None:
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


def test_a_publish_from_another_process_reaches_a_running_reader_within_a_second(backend):
    reader = backend.open()
    publish_uniform(reader, ["a", "b"], 1)
    assert reader.lookup("cards", "a").values["f0"] == 1  # connection open, row cached
    script = textwrap.dedent(
        f"""
        import datetime
        import polars as pl
        from mlops_assets.features.online_store import OnlineStore
        from mlops_assets.features.redis_store import RedisOnlineStore

        features = [f"f{{i}}" for i in range(6)]
        frame = pl.DataFrame(
            {{
                "card_id": ["a", "b"],
                "ts": [datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)] * 2,
                **{{f: [2, 2] for f in features}},
            }}
        )
        {backend.script()}.publish(
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
def test_concurrent_readers_never_see_a_mixed_state(backend, cache):
    keys = [f"card-{i}" for i in range(300)]
    writer = backend.open()
    publish_uniform(writer, keys, 1)
    store = backend.open(cache=cache)  # one instance shared by the reader threads
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


def test_nan_is_served_as_none_and_infinities_survive(store):
    frame = pl.DataFrame(
        {
            "card_id": ["a", "b", "c"],
            "ts": [T0] * 3,
            "ratio": [float("nan"), float("inf"), -float("inf")],
            "whole": [2.0, 3.0, 4.0],
        }
    )
    store.publish(
        "cards",
        frame,
        key="card_id",
        feature_time="ts",
        features=["ratio", "whole"],
        defaults={"ratio": None, "whole": 1},
    )
    got = store.lookup_many("cards", ["a", "b", "c", "d"])
    assert [v.values["ratio"] for v in got[:3]] == [None, float("inf"), -float("inf")]
    assert [type(v.values["whole"]) for v in got] == [float] * 4
    assert got[3].values == {"ratio": None, "whole": 1.0}


# -- Redis: replicas sharing one server, failures, the settings' choice --------------------


@pytest.fixture
def redis_backend(redis_url, tmp_path) -> Backend:
    opened = Backend("redis", tmp_path, redis_url)
    yield opened
    for store in opened.opened:
        store.close()


def test_two_replicas_sharing_one_redis_see_each_others_publishes(redis_backend):
    first, second = redis_backend.open(), redis_backend.open()
    publish_uniform(first, ["a", "b"], 1)
    assert second.tables() == ["cards"]
    assert [v.values["f0"] for v in second.lookup_many("cards", ["a", "b"])] == [1, 1]
    # The other way round, and the first replica's view of version 1 gives way at once.
    assert publish_uniform(second, ["b", "c"], 2).version == 2
    assert first.lookup("cards", "a").found is False
    assert [first.lookup("cards", k).values["f3"] for k in "bc"] == [2, 2]
    assert first.describe("cards")["version"] == 2 == second.describe("cards")["version"]
    assert first.stats()["cards"]["lookups"] == 3 and second.stats()["cards"]["lookups"] == 2
    # A store under another prefix (another environment) shares the server, not the tables.
    other = RedisOnlineStore(redis_backend.url, prefix=f"{redis_backend.prefix}-other")
    assert other.tables() == []
    other.close()


def test_close_then_use_again_reconnects(redis_backend):
    store = redis_backend.open()
    publish_uniform(store, ["a"], 1)
    store.close()
    assert store.lookup("cards", "a").values["f0"] == 1


def test_concurrent_publishers_number_versions_one_after_another(redis_backend):
    stores = [redis_backend.open() for _ in range(4)]
    versions: list[int] = []
    errors: list[str] = []

    def publish(store, value: int) -> None:
        try:
            for _ in range(5):
                versions.append(publish_uniform(store, ["a", "b"], value).version)
        except Exception as error:  # noqa: BLE001 - reported to the main thread below
            errors.append(repr(error))

    threads = [threading.Thread(target=publish, args=(s, i)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(versions) == list(range(1, 21))
    # Every superseded generation was removed: one entry and one row hash are left.
    client = redis.Redis.from_url(redis_backend.url)
    assert len(list(client.scan_iter(f"{redis_backend.prefix}:*"))) == 3
    client.close()


def test_an_unreachable_redis_gives_an_error_naming_the_url():
    url = f"redis://reader:s3cret@127.0.0.1:{free_port()}/0"
    store = RedisOnlineStore(url, connect_timeout=0.5)
    shown = f"redis://reader:***@127.0.0.1:{url.rsplit(':', 1)[1]}"
    assert store.location == shown and "s3cret" not in repr(store)
    calls = (
        store.tables,
        lambda: store.lookup("cards", "a"),
        lambda: store.lookup_many("cards", ["a"]),
        lambda: store.describe("cards"),
        lambda: publish_uniform(store, ["a"], 1),
    )
    for call in calls:
        with pytest.raises(OnlineStoreUnavailableError) as raised:
            call()
        message = str(raised.value)
        assert message.startswith(f"online store {shown} is unreachable")
        assert "s3cret" not in message
        assert isinstance(raised.value, ConnectionError)
    store.close()


def test_open_online_store_follows_the_settings(tmp_path, redis_url):
    local = load_settings({"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ENV": "dev"})
    with open_online_store(local, cache=False) as store:
        assert isinstance(store, OnlineStore) and store.backend == "sqlite"
        assert store.path == local.online_store_path and not store.cache_enabled
        assert store.location == str(local.online_store_path)
    shared = {"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ONLINE_STORE": redis_url}
    dev = open_online_store(load_settings({**shared, "MLOPS_ENV": "dev"}))
    staging = open_online_store(load_settings({**shared, "MLOPS_ENV": "staging"}))
    assert isinstance(dev, RedisOnlineStore) and dev.backend == "redis"
    assert dev.location == redis_url and dev.prefix == "mlops:dev:online"
    # Environments sharing one Redis database keep their tables apart.
    publish_uniform(dev, ["a"], 1)
    try:
        assert staging.tables() == [] and dev.tables() == ["cards"]
        assert dev.describe("cards")["path"] == redis_url
    finally:
        client = redis.Redis.from_url(redis_url)
        client.delete(*client.keys("mlops:dev:online:*"))
        client.close()
        dev.close()
        staging.close()
