"""Online feature store on a Redis server that several serving replicas share.

`RedisOnlineStore` has the interface and semantics of the embedded `OnlineStore`: the same
validation, latest-row-per-key rule, value types, defaults for unknown keys, catalog entries
and per-process counters. Only where the rows live differs. Under a key prefix `P`:

- `P:catalog`, a hash: feature table name -> its current generation (a random id);
- `P:meta:<generation>`, a string: the generation's catalog entry (JSON: columns, types,
  defaults, rows, publish time, version);
- `P:rows:<generation>`, a hash: entity key -> its row as a JSON object (`t` = feature time,
  `f0..fN` = features in declared order, encoded as the SQLite store encodes them).

Consistency: `publish` writes a new generation under new keys (with an expiry, so a publisher
that dies midway leaves nothing behind for long), then in one `MULTI`/`EXEC` transaction
(guarded by `WATCH` on the catalog, so concurrent publishers number versions one after another)
writes its entry, points the catalog at it and removes the expiry, and finally unlinks the
previous generation. Every lookup reads the catalog pointer and the rows in one transaction
too: when the pointer is not the generation the reader expected, it reloads the entry and asks
again, so a reader sees either the old or the new table, never a mix, and a publish through
any process is visible to the next lookup of every other. There is no in-process row cache:
the round trip that would check a cached row's freshness is the lookup itself.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import json
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import polars as pl
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from mlops_assets.access import ENVIRONMENT_STAMP, Resource, check_stamp
from mlops_assets.features.online_store import (
    FeatureVector,
    OnlineStoreUnavailableError,
    PublishResult,
    UnknownTableError,
    _decoder,
    _encode_column,
    _Feature,
    _prepare,
    _Table,
    _time_decoder,
)

# Fields per HSET while publishing, and HSETs per pipeline round trip.
_FIELDS_PER_COMMAND = 2_000
_COMMANDS_PER_ROUND_TRIP = 25
# Keys per HMGET in `lookup_many` (all in one transaction).
_CHUNK = 1_000
# A new generation expires unless its publish switches the catalog to it within this time.
_PENDING_SECONDS = 6 * 3600
_RETRIES = 5

_F = TypeVar("_F", bound=Callable[..., Any])


def redact(url: str) -> str:
    """The URL with its password (if any) replaced by `***`."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def _reachable(method: _F) -> _F:
    """Turn the client's connection errors into `OnlineStoreUnavailableError` naming the URL."""

    @functools.wraps(method)
    def wrapper(self: RedisOnlineStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise OnlineStoreUnavailableError(
                f"online store {self.location} is unreachable: {error}"
            ) from error

    return wrapper  # type: ignore[return-value]


class _View(_Table):
    """One generation of a feature table, decoding the JSON rows Redis holds."""

    __slots__ = ("columns",)

    def __init__(self, row: Sequence[Any]) -> None:
        super().__init__(tuple(row))
        # JSON numbers without a fraction read back as int, infinities are stored as text:
        # `float` makes every float feature a float again.
        decoders = (
            float if f.kind == "float" else _decoder(f.kind, f.time_zone) for f in self.features
        )
        self.decoders = tuple((i, d) for i, d in enumerate(decoders) if d is not None)
        self.columns = ("t", *(f"f{i}" for i in range(len(self.features))))

    def decode_raw(self, raw: bytes) -> tuple[dict[str, Any], datetime.datetime | None]:
        """Decode a stored JSON row into its values and feature time."""
        stored = json.loads(raw)
        return self.decode_row(tuple(stored.get(c) for c in self.columns))


class RedisOnlineStore:
    """The latest feature vector per entity key, in a Redis database shared by many processes.

    One instance serves many threads (the client keeps a pool of connections); any number of
    processes may publish and look up through their own instances.

    Args:
        url: `redis://[user:password@]host:port/db` (or `rediss://` for TLS).
        prefix: Start of every key the store writes, e.g. `mlops:dev:online`.
        socket_timeout: Seconds a command may take before it fails.
        connect_timeout: Seconds a connection may take before it fails.
        env: The environment using the store (`open_online_store` passes the active one):
            its first publish stamps the prefix with it (`<prefix>:mlops-environment`), a
            publish under a prefix stamped by another environment is refused before any key
            changes, and reads follow the read policy (`mlops_assets.access`). None:
            unchecked.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "mlops:online",
        socket_timeout: float = 10.0,
        connect_timeout: float = 2.0,
        env: str | None = None,
    ) -> None:
        if not url.startswith(("redis://", "rediss://")):
            raise ValueError(f"{redact(url)!r} is not a Redis URL (redis://host:port/db)")
        if not prefix or not isinstance(prefix, str):
            raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
        self.url = url
        self.location = redact(url)
        self.prefix = prefix
        self._pool = redis.ConnectionPool.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        )
        self._client = redis.Redis(connection_pool=self._pool)
        self._catalog = f"{prefix}:catalog"
        self.env = env
        self._stamp_key = f"{prefix}:{ENVIRONMENT_STAMP}"
        self._read_checked = env is None
        # table -> its newest generation seen by this process (views are immutable).
        self._views: dict[str, _View] = {}
        self._lock = threading.Lock()
        # table -> [lookups, hits, misses, cache_hits]
        self._counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])

    def __enter__(self) -> RedisOnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisOnlineStore({self.location!r}, prefix={self.prefix!r})"

    # -- environment -----------------------------------------------------------------------

    def environment(self) -> str | None:
        """The environment stamped under the prefix, None before its first checked publish."""
        stamp = self._client.get(self._stamp_key)
        return None if stamp is None else stamp.decode()

    def _check(self, stamp: str | None, rule: str) -> None:
        assert self.env is not None
        obj = f"{self.location} prefix {self.prefix}"
        check_stamp(self.env, stamp, Resource.ONLINE_STORE, obj, rule)

    def _claim(self) -> None:
        """Before a publish writes a key: refuse another's prefix, stamp a new one."""
        assert self.env is not None
        self._client.set(self._stamp_key, self.env, nx=True)
        self._check(self.environment(), "write")

    def _check_read(self) -> None:
        if not self._read_checked:
            self._check(self.environment(), "read")
            self._read_checked = True

    def _rows_key(self, generation: str) -> str:
        return f"{self.prefix}:rows:{generation}"

    def _meta_key(self, generation: str) -> str:
        return f"{self.prefix}:meta:{generation}"

    # -- publish ---------------------------------------------------------------------------

    @_reachable
    def publish(
        self,
        table: str,
        frame: pl.DataFrame | pl.LazyFrame,
        *,
        key: str,
        feature_time: str,
        features: Sequence[str],
        defaults: Mapping[str, Any],
    ) -> PublishResult:
        """Replace a feature table's contents with the latest row per key of `frame`.

        Same contract as `OnlineStore.publish`: the row with the greatest `feature_time` wins
        per key (the last in frame order among ties), keys absent from `frame` disappear, and
        readers in any process see either the old or the new version.

        Args:
            table: Feature table name, e.g. `card_features`.
            frame: Rows to publish.
            key: Entity key column (strings or integers; stored and looked up as strings).
            feature_time: Datetime or Date column ordering each key's rows.
            features: Feature columns to serve, in order; ints, floats, bools, strings,
                datetimes and dates.
            defaults: A value (or None) for every feature, served for keys not published.

        Returns:
            What was published, for asset metadata (`path` is the URL, password hidden).

        Raises:
            ValueError: A column is missing from the frame, a default names an unknown feature,
                a feature has no default, or the key or feature time holds nulls.
            TypeError: A feature, key or feature time has a type the store cannot hold, or a
                default does not match its feature's type.
            OnlineStoreUnavailableError: Redis could not be reached.
            AccessDeniedError: The store is stamped by another environment (nothing is
                written).
        """
        specs, time_spec, encoded_defaults, latest, stored_latest = _prepare(
            table, frame, key, feature_time, features, defaults
        )
        if self.env is not None:
            self._claim()
        generation = uuid.uuid4().hex
        rows_key = self._rows_key(generation)
        self._write_rows(rows_key, _encode_rows(latest, key, feature_time, time_spec, specs))

        while True:
            with self._client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self._catalog)
                    previous = pipe.hget(self._catalog, table)
                    previous = None if previous is None else previous.decode()
                    version = 1
                    if previous is not None:
                        entry = pipe.get(self._meta_key(previous))
                        version = 1 + (json.loads(entry)[10] if entry is not None else 0)
                    published_at = datetime.datetime.now(datetime.UTC)
                    entry = [
                        table,
                        generation,
                        key,
                        feature_time,
                        f"{time_spec.kind}:{time_spec.time_zone or ''}",
                        json.dumps([dataclasses.asdict(f) for f in specs]),
                        json.dumps(encoded_defaults),
                        latest.height,
                        published_at.isoformat(),
                        stored_latest,
                        version,
                    ]
                    pipe.multi()
                    pipe.set(self._meta_key(generation), json.dumps(entry))
                    pipe.persist(rows_key)
                    pipe.hset(self._catalog, table, generation)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue  # another publish switched a table meanwhile: number again
        if previous is not None:
            # Readers still on the old generation find the new pointer in the same transaction
            # as their rows, so they never read this half-deleted generation as current.
            self._client.unlink(self._rows_key(previous), self._meta_key(previous))
        return PublishResult(
            table=table,
            rows=latest.height,
            published_at=published_at,
            latest_feature_time=(
                None
                if stored_latest is None
                else _time_decoder(time_spec.kind, time_spec.time_zone)(stored_latest)
            ),
            path=self.location,
            version=version,
        )

    def _write_rows(self, rows_key: str, rows: pl.DataFrame) -> None:
        """Fill a new generation's hash, a few thousand fields per command, pipelined."""
        pipe = self._client.pipeline(transaction=False)
        starts = range(0, rows.height, _FIELDS_PER_COMMAND)
        for commands, start in enumerate(starts, start=1):
            chunk = rows.slice(start, _FIELDS_PER_COMMAND)
            mapping = dict(zip(chunk.get_column("k"), chunk.get_column("v"), strict=True))
            pipe.hset(rows_key, mapping=mapping)
            if commands == 1:
                pipe.expire(rows_key, _PENDING_SECONDS)
            if commands % _COMMANDS_PER_ROUND_TRIP == 0:
                pipe.execute()
        pipe.execute()

    # -- lookups ---------------------------------------------------------------------------

    def _view(self, table: str, refresh: bool = False) -> _View:
        """This process's view of a table's current generation, read from Redis if needed."""
        view = None if refresh else self._views.get(table)
        if view is not None:
            return view
        self._check_read()
        for _ in range(_RETRIES):
            generation = self._client.hget(self._catalog, table)
            if generation is None:
                self._views.pop(table, None)
                raise UnknownTableError(table, self._table_names())
            generation = generation.decode()
            known = self._views.get(table)
            if known is not None and known.physical == generation:
                return known
            entry = self._client.get(self._meta_key(generation))
            if entry is None:
                continue  # replaced and unlinked between the two reads
            view = _View(json.loads(entry))
            self._views[table] = view
            return view
        raise RuntimeError(f"feature table {table!r} kept changing while its entry was read")

    def _count(self, table: str, hits: int, misses: int) -> None:
        with self._lock:
            counts = self._counts[table]
            counts[0] += hits + misses
            counts[1] += hits
            counts[2] += misses

    @_reachable
    def lookup(self, table: str, key: str) -> FeatureVector:
        """The latest features of one key; the table's defaults (found=False) if it is unknown.

        Args:
            table: Feature table name.
            key: Entity key, as a string.

        Returns:
            The feature vector.

        Raises:
            UnknownTableError: The table was never published (a `KeyError`).
            OnlineStoreUnavailableError: Redis could not be reached.
        """
        view = self._view(table)
        for _ in range(_RETRIES):
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(self._catalog, table)
            pipe.hget(self._rows_key(view.physical), key)
            generation, raw = pipe.execute()
            if generation is None or generation.decode() != view.physical:
                view = self._view(table, refresh=True)
                continue
            decoded = None if raw is None else view.decode_raw(raw)
            self._count(table, int(raw is not None), int(raw is None))
            return view.vector(key, decoded)
        raise RuntimeError(f"feature table {table!r} kept changing during a lookup of {key!r}")

    @_reachable
    def lookup_many(self, table: str, keys: Sequence[str]) -> list[FeatureVector]:
        """The latest features of many keys, all from the same version of the table.

        Args:
            table: Feature table name.
            keys: Entity keys; the result follows their order, repeats included.

        Returns:
            One vector per key.

        Raises:
            UnknownTableError: The table was never published (a `KeyError`).
            OnlineStoreUnavailableError: Redis could not be reached.
        """
        if isinstance(keys, str):
            raise TypeError("keys must be a sequence of keys, not a single string")
        keys = list(keys)
        wanted = list(dict.fromkeys(keys))
        view = self._view(table)
        for _ in range(_RETRIES):
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(self._catalog, table)
            rows_key = self._rows_key(view.physical)
            for start in range(0, len(wanted), _CHUNK):
                pipe.hmget(rows_key, wanted[start : start + _CHUNK])
            generation, *chunks = pipe.execute()
            if generation is None or generation.decode() != view.physical:
                view = self._view(table, refresh=True)
                continue
            raws = [raw for chunk in chunks for raw in chunk]
            found = {
                k: None if raw is None else view.decode_raw(raw)
                for k, raw in zip(wanted, raws, strict=True)
            }
            vectors = [view.vector(k, found[k]) for k in keys]
            hits = sum(v.found for v in vectors)
            self._count(table, hits, len(vectors) - hits)
            return vectors
        raise RuntimeError(f"feature table {table!r} kept changing during a batch lookup")

    # -- catalog ---------------------------------------------------------------------------

    def _table_names(self) -> list[str]:
        self._check_read()
        return sorted(name.decode() for name in self._client.hkeys(self._catalog))

    @_reachable
    def tables(self) -> list[str]:
        """Names of the published feature tables, sorted."""
        return self._table_names()

    @_reachable
    def describe(self, table: str) -> dict[str, Any]:
        """A feature table's catalog entry, as `OnlineStore.describe` gives it.

        Returns:
            `table`, `key`, `feature_time`, `features`, `types`, `time_zones`, `defaults`,
            `rows`, `published_at`, `latest_feature_time`, `version` and `path` (the URL,
            password hidden).

        Raises:
            UnknownTableError: The table was never published (a `KeyError`).
            OnlineStoreUnavailableError: Redis could not be reached.
        """
        view = self._view(table, refresh=True)
        return {
            "table": view.name,
            "key": view.key_column,
            "feature_time": view.feature_time_column,
            "features": list(view.names),
            "types": {f.name: f.kind for f in view.features},
            "time_zones": {f.name: f.time_zone for f in view.features if f.time_zone},
            "defaults": dict(view.defaults),
            "rows": view.rows,
            "published_at": view.published_at,
            "latest_feature_time": view.latest_feature_time,
            "version": view.version,
            "path": self.location,
        }

    def stats(self) -> dict[str, dict[str, int]]:
        """Lookup counters of this process, per table.

        Returns:
            Per table: `lookups`, `hits` (key found), `misses` (defaults served) and
            `cache_hits` (always 0: this store keeps no row cache).
        """
        with self._lock:
            return {
                table: {"lookups": c[0], "hits": c[1], "misses": c[2], "cache_hits": c[3]}
                for table, c in sorted(self._counts.items())
            }

    def close(self) -> None:
        """Close the pooled connections and forget the table views; later calls reconnect."""
        self._pool.disconnect()
        self._views.clear()


def _encode_rows(
    latest: pl.DataFrame, key: str, feature_time: str, time_spec: _Feature, specs: list[_Feature]
) -> pl.DataFrame:
    """Columns `k` (the key as text) and `v` (the row as a JSON object) of a publish."""
    values = [_encode_column(feature_time, time_spec.kind, time_spec.time_zone).alias("t")]
    for i, f in enumerate(specs):
        encoded = _encode_column(f.name, f.kind, f.time_zone)
        if f.kind == "float":
            # NaN is served as None, as SQLite stores it; JSON has no infinities, so a column
            # holding any is stored as text ("inf"), which the float decoder reads back.
            encoded = pl.when(encoded.is_nan()).then(None).otherwise(encoded)
            column = latest.get_column(f.name)
            if column.len() and column.cast(pl.Float64).is_infinite().any():
                encoded = encoded.cast(pl.String)
        values.append(encoded.alias(f"f{i}"))
    return latest.select(
        pl.col(key).cast(pl.String).alias("k"),
        pl.struct(values).struct.json_encode().alias("v"),
    )
