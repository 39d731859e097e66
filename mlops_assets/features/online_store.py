"""Online feature store: the latest feature vector per entity key, looked up in-process.

Serving (fraud scoring per card, for instance) needs the newest value of each feature for one
key in well under a millisecond. `OnlineStore` keeps one SQLite file (WAL mode) beside the
lake: a catalog table names, per feature table, the physical table holding its current rows
(`k` = entity key, `t` = feature time, `f0..fN` = features in declared order, one row per key)
together with the feature names, their types, their defaults and publish metadata.

Consistency: `publish` creates a new physical table, fills it, points the catalog at it and
drops the previous one, all in one write transaction, so every reader (threads or other
processes) sees either the old or the new version of a table and never a mix. Readers keep
one read-only connection per thread and check `PRAGMA data_version` (a counter SQLite bumps
when another connection commits) on every call, so a publish from any process is visible to
the next lookup; a lookup the cache does not answer reads that counter and its row in one
statement. Readers map the file into memory (`PRAGMA mmap_size`), so a page read is no system
call. The optional in-process cache of decoded rows is tagged with the physical table it was read
from, so a publish retires it without any coordination between threads.

`RedisOnlineStore` (`redis_store.py`) offers the same interface (`publish`, `lookup`,
`lookup_many`, `tables`, `describe`, `stats`, `close`) on a Redis server that several serving
replicas share; `open_online_store` picks the backend from the settings (`MLOPS_ONLINE_STORE`),
and this embedded store stays the default.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

_CATALOG = "online_catalog"
# Keys per `IN (...)` query in `lookup_many`; below SQLite's historical 999-variable limit.
_CHUNK = 500
# A lookup retries when a publish dropped the physical table between its catalog check and its
# query; one retry suffices unless publishes arrive back to back, a few cover that too.
_RETRIES = 5
_ABSENT = object()
# Bytes of the store file each reader maps into memory (SQLite maps at most the file's size).
_MMAP_BYTES = 1 << 30

_CATALOG_DDL = f"""
CREATE TABLE IF NOT EXISTS {_CATALOG} (
    name TEXT PRIMARY KEY,
    physical TEXT NOT NULL,
    key_column TEXT NOT NULL,
    feature_time_column TEXT NOT NULL,
    feature_time_type TEXT NOT NULL,
    features TEXT NOT NULL,
    defaults TEXT NOT NULL,
    rows INTEGER NOT NULL,
    published_at TEXT NOT NULL,
    latest_feature_time TEXT,
    version INTEGER NOT NULL
)
"""

# The store's environment, stamped by its first publish (see `mlops_assets.access`).
_META = "online_meta"
_META_DDL = f"CREATE TABLE IF NOT EXISTS {_META} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def _stamp(conn: sqlite3.Connection) -> str | None:
    """The environment stamped into a store file, None before its first publish."""
    from mlops_assets.access import ENVIRONMENT_STAMP

    try:
        row = conn.execute(
            f"SELECT value FROM {_META} WHERE key = ?", (ENVIRONMENT_STAMP,)
        ).fetchone()
    except sqlite3.OperationalError as error:
        if "no such table" not in str(error):
            raise
        return None
    return None if row is None else row[0]


_SQLITE_TYPES = {
    "int": "INTEGER",
    "float": "REAL",
    "bool": "INTEGER",
    "str": "TEXT",
    "datetime": "TEXT",
    "date": "TEXT",
}


class UnknownTableError(KeyError):
    """A lookup or describe named a feature table the store does not hold."""

    def __init__(self, table: str, known: Sequence[str]) -> None:
        super().__init__(
            f"online store has no feature table {table!r}; known tables: {sorted(known)}"
        )
        self.table = table
        self.known = sorted(known)

    def __str__(self) -> str:
        # KeyError's own __str__ shows the repr of its argument; the message reads better plain.
        return str(self.args[0])


class OnlineStoreUnavailableError(ConnectionError):
    """The online store's server could not be reached; the message names its URL."""


@dataclasses.dataclass(frozen=True)
class PublishResult:
    """What a publish did, for asset metadata.

    Attributes:
        table: Feature table name.
        rows: Keys published (one row per key).
        published_at: When the publish committed (UTC).
        latest_feature_time: Newest feature time among the published rows, None if empty.
        path: The store file (the server's URL, password hidden, for Redis).
        version: The table's version after the publish (1 for the first publish).
    """

    table: str
    rows: int
    published_at: datetime.datetime
    latest_feature_time: datetime.datetime | None
    path: str
    version: int


@dataclasses.dataclass(frozen=True)
class FeatureVector:
    """The features of one key, or the table's defaults when the key is unknown.

    Attributes:
        table: Feature table name.
        key: The entity key looked up.
        values: Feature name to value, in the table's feature order. Stored nulls come back as
            None (also float NaN, which SQLite stores as null); defaults apply only to keys
            that are missing altogether.
        found: Whether the key was published; False means `values` are the defaults.
        feature_time: Feature time of the published row, None when the key was not found.
    """

    table: str
    key: str
    values: dict[str, Any]
    found: bool
    feature_time: datetime.datetime | None


@dataclasses.dataclass(frozen=True)
class _Feature:
    """One feature column: its name, value kind and, for datetimes, its time zone."""

    name: str
    kind: str
    time_zone: str | None
    dtype: str


def _kind_of(dtype: pl.DataType) -> tuple[str, str | None] | None:
    """Map a polars type to (kind, time zone), None when the store cannot hold it."""
    if dtype == pl.Boolean:
        return "bool", None
    if dtype == pl.UInt64:
        # Values above 2**63 - 1 do not fit SQLite's signed 64-bit INTEGER.
        return None
    if dtype.is_integer():
        return "int", None
    if dtype.is_float():
        return "float", None
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return "str", None
    if isinstance(dtype, pl.Datetime):
        return "datetime", dtype.time_zone
    if dtype == pl.Date:
        return "date", None
    return None


def _encode_column(column: str, kind: str, time_zone: str | None) -> pl.Expr:
    """Expression turning a column into the values SQLite stores for its kind."""
    col = pl.col(column)
    if kind == "datetime":
        # Aware datetimes are stored in UTC with an explicit offset, naive ones as written;
        # fixed-width ISO text keeps them readable with `datetime.fromisoformat`.
        if time_zone is None:
            return col.dt.strftime("%Y-%m-%dT%H:%M:%S%.6f")
        return col.dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00")
    if kind == "date":
        return col.dt.strftime("%Y-%m-%d")
    if kind == "str":
        return col.cast(pl.String)
    if kind == "float":
        return col.cast(pl.Float64)
    return col


def _encode_value(feature: _Feature, value: Any) -> Any:
    """Encode one Python value (a default, the latest feature time) as the store keeps it."""
    if value is None:
        return None
    kind = feature.kind
    ok = False
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "date":
        ok = isinstance(value, datetime.date) and not isinstance(value, datetime.datetime)
        value = value.isoformat() if ok else value
    elif kind == "datetime" and isinstance(value, datetime.datetime):
        aware = value.tzinfo is not None and value.utcoffset() is not None
        ok = aware == (feature.time_zone is not None)
        if ok and aware:
            value = value.astimezone(datetime.UTC).isoformat(timespec="microseconds")
        elif ok:
            value = value.isoformat(timespec="microseconds")
    if not ok:
        expected = kind
        if kind == "datetime":
            zone = feature.time_zone
            expected = f"time-zone-aware datetime ({zone})" if zone else "naive datetime"
        raise TypeError(
            f"default for feature {feature.name!r} must be a {expected} or None, "
            f"got {type(value).__name__} {value!r}"
        )
    return value


def _decoder(kind: str, time_zone: str | None) -> Callable[[Any], Any] | None:
    """Function turning a stored value back into its Python value; None when none is needed."""
    if kind == "bool":
        return bool
    if kind == "date":
        return datetime.date.fromisoformat
    if kind == "datetime":
        if time_zone is None or time_zone == "UTC":
            # The stored offset (+00:00) already yields an aware UTC datetime.
            return datetime.datetime.fromisoformat
        zone = ZoneInfo(time_zone)
        return lambda text: datetime.datetime.fromisoformat(text).astimezone(zone)
    return None


def _time_decoder(kind: str, time_zone: str | None) -> Callable[[Any], Any]:
    """Decoder for feature times; a Date feature time reads back as midnight (naive)."""
    if kind == "date":
        return datetime.datetime.fromisoformat
    decode = _decoder(kind, time_zone)
    assert decode is not None
    return decode


class _Table:
    """A thread's view of one published feature table: its physical table and how to decode it."""

    __slots__ = (
        "name",
        "physical",
        "version",
        "key_column",
        "feature_time_column",
        "features",
        "names",
        "decoders",
        "decode_time",
        "defaults",
        "rows",
        "published_at",
        "latest_feature_time",
        "select_checked",
    )

    def __init__(self, row: tuple) -> None:
        (
            self.name,
            self.physical,
            self.key_column,
            self.feature_time_column,
            time_type,
            features,
            defaults,
            self.rows,
            published_at,
            latest,
            self.version,
        ) = row
        self.features = [_Feature(**f) for f in json.loads(features)]
        self.names = tuple(f.name for f in self.features)
        self.decoders = tuple(
            (i, decode)
            for i, f in enumerate(self.features)
            if (decode := _decoder(f.kind, f.time_zone)) is not None
        )
        time_kind, _, time_zone = time_type.partition(":")
        self.decode_time = _time_decoder(time_kind, time_zone or None)
        self.defaults = self._decode(json.loads(defaults))
        self.published_at = datetime.datetime.fromisoformat(published_at)
        self.latest_feature_time = None if latest is None else self.decode_time(latest)
        # A key's row with the connection's data version read in the same statement (one
        # snapshot): a lookup checks the catalog and reads its row in one round trip. The
        # left join always yields one row; `k` (never null when stored) tells a miss apart.
        columns = ", ".join(f"x.f{i}" for i in range(len(self.features)))
        self.select_checked = (
            f"SELECT d.data_version, x.k, x.t, {columns} FROM pragma_data_version AS d "
            f'LEFT JOIN "{self.physical}" AS x ON x.k = ?'
        )

    def _decode(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        values = [stored.get(name) for name in self.names]
        for i, decode in self.decoders:
            if values[i] is not None:
                values[i] = decode(values[i])
        return dict(zip(self.names, values, strict=True))

    def decode_row(self, row: tuple) -> tuple[dict[str, Any], datetime.datetime | None]:
        """Split a `SELECT t, f0..fN` row into decoded values and the feature time."""
        values = list(row[1:])
        for i, decode in self.decoders:
            if values[i] is not None:
                values[i] = decode(values[i])
        feature_time = None if row[0] is None else self.decode_time(row[0])
        return dict(zip(self.names, values, strict=True)), feature_time

    def vector(
        self, key: str, decoded: tuple[dict[str, Any], datetime.datetime | None] | None
    ) -> FeatureVector:
        """Build the vector for a key; copies the values so callers may change them freely."""
        if decoded is None:
            return FeatureVector(self.name, key, dict(self.defaults), False, None)
        return FeatureVector(self.name, key, dict(decoded[0]), True, decoded[1])


class _Reader:
    """One thread's read-only connection and its view of the catalog."""

    __slots__ = ("path", "check", "conn", "data_version", "tables", "__weakref__")

    def __init__(
        self, path: Path, check: Callable[[sqlite3.Connection], None] | None = None
    ) -> None:
        self.path = path
        self.check = check
        self.conn: sqlite3.Connection | None = None
        self.data_version: int | None = None
        self.tables: dict[str, _Table] = {}

    def sync(self) -> None:
        """Reload the catalog when another connection committed since the last call."""
        if self.conn is None:
            if not self.path.exists():
                self.tables = {}
                return
            # check_same_thread=False only so `OnlineStore.close` may close it from any thread;
            # the connection is otherwise used by its own thread alone.
            self.conn = sqlite3.connect(
                f"{self.path.as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=30,
            )
            # Pages read through a memory map: no read call and no copy per page. Publishes
            # never shrink the file (dropped tables go to its free list), so the map stays
            # valid.
            self.conn.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
            self.data_version = None
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self.data_version:
            # Recorded before reading the catalog, so a commit in between triggers a reload.
            self.data_version = version
            self.reload()

    def reload(self) -> None:
        """Read the catalog (inside the caller's transaction, if any) and refresh table views."""
        assert self.conn is not None
        if self.check is not None:
            self.check(self.conn)
        try:
            rows = self.conn.execute(f"SELECT * FROM {_CATALOG}").fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" not in str(error):
                raise
            rows = []  # the file exists but its first publish has not committed yet
        tables = {}
        for row in rows:
            known = self.tables.get(row[0])
            same = known is not None and known.physical == row[1]
            tables[row[0]] = known if same else _Table(row)
        self.tables = tables

    def table(self, name: str) -> _Table:
        """The current view of a feature table, after syncing with the store file."""
        self.sync()
        found = self.tables.get(name)
        if found is None:
            raise UnknownTableError(name, list(self.tables))
        return found

    def close(self) -> None:
        """Close the connection; the next call reopens it."""
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.data_version = None


class OnlineStore:
    """The latest feature vector per entity key, in a local SQLite file.

    One instance may serve many threads: each thread reads through its own read-only
    connection, created on first use. Publishes open their own short-lived write connection.

    Args:
        path: The store file, e.g. `data/<env>/online/features.sqlite`; parent folders are
            created by the first publish.
        cache: Keep decoded rows (and misses) in memory per table, retired as soon as a publish
            replaces the table. Lookups still check the file's version on every call.
        cache_size: Most cached keys per table; a full cache is cleared and refilled, which
            bounds memory without per-lookup bookkeeping.
        env: The environment using the store (`open_online_store` passes the active one):
            its first publish stamps the file with it, a publish into a file stamped by
            another environment is refused before anything changes, and reads follow the
            read policy (`mlops_assets.access`). None: unchecked (a bare file).
    """

    backend = "sqlite"

    def __init__(
        self,
        path: Path | str,
        *,
        cache: bool = True,
        cache_size: int = 100_000,
        env: str | None = None,
    ) -> None:
        self.path = Path(path).absolute()
        self.env = env
        self.location = str(self.path)
        self.cache_enabled = cache
        self.cache_size = cache_size
        self._local = threading.local()
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._lock = threading.Lock()
        # table -> [lookups, hits, misses, cache_hits]
        self._counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
        # table -> (physical table the entries were read from, key -> decoded row or None)
        self._cache: dict[str, tuple[str, dict[str, Any]]] = {}

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OnlineStore({str(self.path)!r}, cache={self.cache_enabled})"

    # -- publish ---------------------------------------------------------------------------

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

        `frame` may hold a feature table's history, many rows per key: the row with the
        greatest `feature_time` wins, and among rows with the same time the last one in frame
        order. The previous contents are replaced atomically: readers in any thread or process
        see either the old or the new version, and keys absent from `frame` disappear.

        Args:
            table: Feature table name, e.g. `card_features`.
            frame: Rows to publish.
            key: Entity key column (strings or integers; stored and looked up as strings).
            feature_time: Datetime or Date column ordering each key's rows.
            features: Feature columns to serve, in order; ints, floats, bools, strings,
                datetimes and dates.
            defaults: A value (or None) for every feature, served for keys not published.

        Returns:
            What was published, for asset metadata.

        Raises:
            ValueError: A column is missing from the frame, a default names an unknown feature,
                a feature has no default, or the key or feature time holds nulls.
            TypeError: A feature, key or feature time has a type the store cannot hold, or a
                default does not match its feature's type.
            AccessDeniedError: The store is stamped by another environment (nothing is
                written).
        """
        specs, time_spec, encoded_defaults, latest, stored_latest = _prepare(
            table, frame, key, feature_time, features, defaults
        )
        if self.env is not None and self.path.exists():
            # Refused before the write connection touches the file (journal mode, tables).
            self._check_stamp(self._read_stamp(), "write")
        rows = latest.select(
            pl.col(key).cast(pl.String).alias("k"),
            _encode_column(feature_time, time_spec.kind, time_spec.time_zone).alias("t"),
            *(
                _encode_column(f.name, f.kind, f.time_zone).alias(f"f{i}")
                for i, f in enumerate(specs)
            ),
        ).sort("k")  # key order fills the WITHOUT ROWID b-tree by appending

        self.path.parent.mkdir(parents=True, exist_ok=True)
        physical = f"ft_{uuid.uuid4().hex}"
        columns = ", ".join(f"f{i} {_SQLITE_TYPES[f.kind]}" for i, f in enumerate(specs))
        marks = ", ".join("?" * (len(specs) + 2))
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=60)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode keeps the file consistent on power loss (the last publishes
            # may be lost, never half-applied) and saves an fsync per commit.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA journal_size_limit = {64 * 2**20}")
            conn.execute(_CATALOG_DDL)
            conn.execute("BEGIN IMMEDIATE")
            try:
                if self.env is not None:
                    self._claim(conn)
                previous = conn.execute(
                    f"SELECT physical, version FROM {_CATALOG} WHERE name = ?", (table,)
                ).fetchone()
                version = 1 if previous is None else previous[1] + 1
                conn.execute(
                    f'CREATE TABLE "{physical}" '
                    f"(k TEXT PRIMARY KEY NOT NULL, t TEXT, {columns}) WITHOUT ROWID"
                )
                conn.executemany(
                    f'INSERT INTO "{physical}" VALUES ({marks})', rows.iter_rows(buffer_size=4096)
                )
                published_at = datetime.datetime.now(datetime.UTC)
                conn.execute(
                    f"INSERT OR REPLACE INTO {_CATALOG} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        table,
                        physical,
                        key,
                        feature_time,
                        f"{time_spec.kind}:{time_spec.time_zone or ''}",
                        json.dumps([dataclasses.asdict(f) for f in specs]),
                        json.dumps(encoded_defaults),
                        rows.height,
                        published_at.isoformat(),
                        stored_latest,
                        version,
                    ),
                )
                if previous is not None:
                    # Readers holding an older snapshot still see the dropped table until
                    # their statement ends; later ones find the catalog's new pointer.
                    conn.execute(f'DROP TABLE IF EXISTS "{previous[0]}"')
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()
        return PublishResult(
            table=table,
            rows=rows.height,
            published_at=published_at,
            latest_feature_time=(
                None
                if stored_latest is None
                else _time_decoder(time_spec.kind, time_spec.time_zone)(stored_latest)
            ),
            path=str(self.path),
            version=version,
        )

    # -- environment -----------------------------------------------------------------------

    def _read_stamp(self) -> str | None:
        conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return _stamp(conn)
        finally:
            conn.close()

    def _check_stamp(self, stamp: str | None, rule: str) -> None:
        from mlops_assets.access import Resource, check_stamp

        assert self.env is not None
        check_stamp(self.env, stamp, Resource.ONLINE_STORE, self.location, rule)

    def _check_read(self, conn: sqlite3.Connection) -> None:
        self._check_stamp(_stamp(conn), "read")

    def _claim(self, conn: sqlite3.Connection) -> None:
        """Inside the publish's transaction: refuse another's store, stamp a new one."""
        from mlops_assets.access import ENVIRONMENT_STAMP

        conn.execute(_META_DDL)
        stamp = _stamp(conn)
        self._check_stamp(stamp, "write")
        if stamp is None:
            conn.execute(f"INSERT INTO {_META} VALUES (?, ?)", (ENVIRONMENT_STAMP, self.env))

    def environment(self) -> str | None:
        """The environment stamped into the store, None before its first checked publish."""
        return self._read_stamp() if self.path.exists() else None

    # -- lookups ---------------------------------------------------------------------------

    def _reader(self) -> _Reader:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = _Reader(self.path, self._check_read if self.env is not None else None)
            self._local.reader = reader
            with self._lock:
                self._readers.add(reader)
        return reader

    def _entries(self, view: _Table) -> dict[str, Any] | None:
        """The cache for a table view, or None when caching is off.

        Entries are tagged with the physical table they were read from; a thread that sees a
        newer publish replaces the dict, and one still on an older view writes only to the dict
        it holds, so a cached row never outlives the version it came from.
        """
        if not self.cache_enabled:
            return None
        held = self._cache.get(view.name)
        if held is not None and held[0] == view.physical:
            entries = held[1]
            if len(entries) < self.cache_size:
                return entries
        entries = {}
        self._cache[view.name] = (view.physical, entries)
        return entries

    def _count(self, table: str, hits: int, misses: int, cache_hits: int) -> None:
        with self._lock:
            counts = self._counts[table]
            counts[0] += hits + misses
            counts[1] += hits
            counts[2] += misses
            counts[3] += cache_hits

    def lookup(self, table: str, key: str) -> FeatureVector:
        """The latest features of one key; the table's defaults (found=False) if it is unknown.

        Args:
            table: Feature table name.
            key: Entity key, as a string.

        Returns:
            The feature vector.

        Raises:
            UnknownTableError: The table was never published (a `KeyError`).
        """
        reader = self._reader()
        for _ in range(_RETRIES):
            view = reader.tables.get(table) if reader.data_version is not None else None
            if view is None:
                view = reader.table(table)  # opens, syncs, raises on an unknown table
            entries = self._entries(view)
            if entries is not None:
                decoded = entries.get(key, _ABSENT)
                if decoded is not _ABSENT:
                    # A cached row stands while the catalog still points at its table.
                    reader.sync()
                    if reader.tables.get(table) is not view:
                        continue
                    found = decoded is not None
                    self._count(table, int(found), int(not found), 1)
                    return view.vector(key, decoded)
            # The data version and the row in one statement, from one snapshot: when that
            # version is the one the view was read at, no commit came in between, so the
            # view's physical table is the table's current one and the row stands.
            try:
                row = reader.conn.execute(view.select_checked, (key,)).fetchone()
            except sqlite3.OperationalError as error:
                # A publish dropped the physical table after this thread's catalog check.
                if "no such table" not in str(error):
                    raise
                reader.data_version = None
                continue
            if row[0] != reader.data_version:
                reader.data_version = None  # another connection committed: read the catalog
                continue
            decoded = None if row[1] is None else view.decode_row(row[2:])
            if entries is not None:
                entries[key] = decoded
            self._count(table, int(decoded is not None), int(decoded is None), 0)
            return view.vector(key, decoded)
        raise RuntimeError(f"feature table {table!r} kept changing during a lookup of {key!r}")

    def lookup_many(self, table: str, keys: Sequence[str]) -> list[FeatureVector]:
        """The latest features of many keys, all from the same version of the table.

        Args:
            table: Feature table name.
            keys: Entity keys; the result follows their order, repeats included.

        Returns:
            One vector per key.

        Raises:
            UnknownTableError: The table was never published (a `KeyError`).
        """
        if isinstance(keys, str):
            raise TypeError("keys must be a sequence of keys, not a single string")
        keys = list(keys)
        reader = self._reader()
        reader.table(table)  # opens the connection and fails early on an unknown table
        conn = reader.conn
        assert conn is not None
        # One read transaction: the catalog pointer and every chunk come from one snapshot.
        conn.execute("BEGIN")
        try:
            physical = conn.execute(
                f"SELECT physical FROM {_CATALOG} WHERE name = ?", (table,)
            ).fetchone()
            view = reader.tables.get(table)
            if physical is None or view is None or view.physical != physical[0]:
                reader.reload()
                reader.data_version = None
                view = reader.tables.get(table)
                if view is None:
                    raise UnknownTableError(table, list(reader.tables))
            entries = self._entries(view)
            found: dict[str, Any] = {}
            cache_hits = 0
            if entries is not None:
                for k in keys:
                    decoded = entries.get(k, _ABSENT)
                    if decoded is not _ABSENT:
                        found[k] = decoded
                        cache_hits += 1
            wanted = [k for k in dict.fromkeys(keys) if k not in found]
            columns = ", ".join(f"f{i}" for i in range(len(view.names)))
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                query = (
                    f'SELECT k, t, {columns} FROM "{view.physical}" '
                    f"WHERE k IN ({', '.join('?' * len(chunk))})"
                )
                for row in conn.execute(query, chunk):
                    found[row[0]] = view.decode_row(row[1:])
                for k in chunk:
                    found.setdefault(k, None)
                    if entries is not None:
                        entries[k] = found[k]
        finally:
            conn.execute("COMMIT")
        vectors = [view.vector(k, found[k]) for k in keys]
        hits = sum(v.found for v in vectors)
        self._count(table, hits, len(vectors) - hits, cache_hits)
        return vectors

    # -- catalog ---------------------------------------------------------------------------

    def tables(self) -> list[str]:
        """Names of the published feature tables, sorted."""
        reader = self._reader()
        reader.sync()
        return sorted(reader.tables)

    def describe(self, table: str) -> dict[str, Any]:
        """A feature table's catalog entry.

        Returns:
            `table`, `key` (key column), `feature_time` (its column), `features` (names in
            order), `types` (feature to kind: int, float, bool, str, datetime, date),
            `time_zones` (datetime features with a zone), `defaults` (feature to the value
            served for unknown keys), `rows`, `published_at`, `latest_feature_time`, `version`
            and `path`.

        Raises:
            UnknownTableError: The table was never published (a `KeyError`).
        """
        view = self._reader().table(table)
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
            "path": str(self.path),
        }

    def stats(self) -> dict[str, dict[str, int]]:
        """Lookup counters of this process, per table.

        Returns:
            Per table: `lookups`, `hits` (key found), `misses` (defaults served) and
            `cache_hits` (answered from memory, found or not).
        """
        with self._lock:
            return {
                table: {"lookups": c[0], "hits": c[1], "misses": c[2], "cache_hits": c[3]}
                for table, c in sorted(self._counts.items())
            }

    def close(self) -> None:
        """Close every thread's connection and drop the cache; later calls reopen them.

        Call it when no thread is in the middle of a lookup.
        """
        with self._lock:
            readers = list(self._readers)
        for reader in readers:
            reader.close()
        self._cache.clear()


def open_online_store(settings: Any, **options: Any) -> Any:
    """The environment's online store: Redis when `online_store_url` is set, else SQLite.

    Args:
        settings: The environment's `Settings`: `online_store_url` empty means the embedded
            SQLite file at `online_store_path`, `redis://host:port/db` a shared Redis server
            whose keys start with `mlops:<env>:online` (so environments may share a database).
        **options: Passed to the backend: `cache` and `cache_size` for `OnlineStore`;
            `prefix`, `socket_timeout` and `connect_timeout` for `RedisOnlineStore`; `env`
            (default the active environment) for both: the environment stamped into the
            store on its first publish and checked before every publish and read.

    Returns:
        An `OnlineStore` or a `RedisOnlineStore`; both say which they are with `backend`
        (`sqlite`, `redis`) and `location` (the file, or the URL without its password).
    """
    url = settings.online_store_url
    options.setdefault("env", settings.env)
    if not url:
        return OnlineStore(settings.online_store_path, **options)
    from mlops_assets.features.redis_store import RedisOnlineStore

    options.setdefault("prefix", f"mlops:{settings.env}:online")
    return RedisOnlineStore(url, **options)


def _prepare(
    table: str,
    frame: pl.DataFrame | pl.LazyFrame,
    key: str,
    feature_time: str,
    features: Sequence[str],
    defaults: Mapping[str, Any],
) -> tuple[list[_Feature], _Feature, dict[str, Any], pl.DataFrame, Any]:
    """Validate a publish and keep the latest row per key, for any backend.

    Returns:
        The feature specs, the feature time's spec, the defaults as stored, the latest row
        per key (the key, feature time and feature columns, unordered) and the newest
        feature time as stored (None when the frame is empty).
    """
    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect()
    specs, time_spec = _validate(table, frame, key, feature_time, features, defaults)
    encoded_defaults = {f.name: _encode_value(f, defaults[f.name]) for f in specs}
    latest = frame.select(list(dict.fromkeys([key, feature_time, *features]))).sort(
        feature_time, maintain_order=True
    )
    # The sort is stable, so among rows with the same time the last in frame order is last.
    latest = latest.unique(subset=[key], keep="last", maintain_order=False)
    latest_time = latest.get_column(feature_time).max() if latest.height else None
    return specs, time_spec, encoded_defaults, latest, _encode_value(time_spec, latest_time)


def _validate(
    table: str,
    frame: pl.DataFrame,
    key: str,
    feature_time: str,
    features: Sequence[str],
    defaults: Mapping[str, Any],
) -> tuple[list[_Feature], _Feature]:
    """Check a publish's inputs; return the feature specs and the feature time's spec."""
    if not isinstance(table, str) or not table:
        raise ValueError(f"table must be a non-empty string, got {table!r}")
    if isinstance(features, str):
        raise TypeError(f"features must be a sequence of column names, not the string {features!r}")
    features = list(features)
    columns = frame.columns
    where = f"feature table {table!r}"
    for role, column in (("key column", key), ("feature_time column", feature_time)):
        if column not in columns:
            raise ValueError(f"{where}: {role} {column!r} is not in the frame; columns: {columns}")
    if not features:
        raise ValueError(f"{where}: features must name at least one column")
    duplicates = sorted({f for f in features if features.count(f) > 1})
    if duplicates:
        raise ValueError(f"{where}: features listed more than once: {duplicates}")
    missing = [f for f in features if f not in columns]
    if missing:
        raise ValueError(f"{where}: features not in the frame: {missing}; columns: {columns}")
    if key in features:
        raise ValueError(f"{where}: the key column {key!r} cannot also be a feature")
    unknown = sorted(set(defaults) - set(features))
    if unknown:
        raise ValueError(f"{where}: defaults for unknown features {unknown}; features: {features}")
    undefaulted = [f for f in features if f not in defaults]
    if undefaulted:
        raise ValueError(
            f"{where}: features without a default: {undefaulted}; give each a value or None"
        )

    schema = frame.schema
    key_type = schema[key]
    if not (key_type.is_integer() or _kind_of(key_type) == ("str", None)):
        raise TypeError(
            f"{where}: key column {key!r} must hold strings or integers, not {key_type}"
        )
    time_type = schema[feature_time]
    if not isinstance(time_type, pl.Datetime) and time_type != pl.Date:
        raise TypeError(
            f"{where}: feature_time column {feature_time!r} must be a Datetime or Date, "
            f"not {time_type}"
        )
    specs = []
    for name in features:
        kind = _kind_of(schema[name])
        if kind is None:
            raise TypeError(
                f"{where}: feature {name!r} has type {schema[name]}, not a scalar the online "
                "store holds (integers up to Int64, floats, Boolean, String, Categorical, "
                "Datetime, Date); cast it or leave it out"
            )
        specs.append(_Feature(name, kind[0], kind[1], str(schema[name])))
    for role, column in (("key column", key), ("feature_time column", feature_time)):
        nulls = frame.get_column(column).null_count()
        if nulls:
            raise ValueError(f"{where}: {role} {column!r} holds {nulls} null value(s)")
    time_kind = _kind_of(time_type)
    assert time_kind is not None
    time_spec = _Feature(feature_time, time_kind[0], time_kind[1], str(time_type))
    return specs, time_spec
