"""The feature spec a model carries: the tables, features and keys it needs, and their fetching.

A model stores its spec beside itself (in MLflow), so anything holding the model and an event's
keys can build its input: offline by point-in-time joins against the feature tables, online by
lookups in the online store. Request-time features derive from the request and the looked-up
rows the same way in both places.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from mlops_assets.features.point_in_time import point_in_time_join
from mlops_assets.features.registry import (
    CARD_BEHAVIOUR,
    MERCHANT_RISK,
    FeatureTable,
    feature_table,
)

SPEC_VERSION = 1


@dataclass(frozen=True)
class FeatureLookup:
    """Features to fetch from one feature table.

    Attributes:
        table: Feature table name (see `registry.FEATURE_TABLES`).
        features: Its features to fetch.
        lookup_keys: Event or request fields holding the table's entity keys, in order
            (default: the entity key names themselves).
    """

    table: str
    features: tuple[str, ...]
    lookup_keys: tuple[str, ...] = ()

    @property
    def definition(self) -> FeatureTable:
        """The feature table's definition."""
        return feature_table(self.table)

    @property
    def keys(self) -> tuple[str, ...]:
        """Event fields holding the entity keys."""
        return self.lookup_keys or self.definition.entity_keys

    @property
    def time_column(self) -> str:
        """Column holding the time of the row used, in training sets and request vectors."""
        return f"{self.table}__feature_time"

    @property
    def prefix(self) -> str:
        """Prefix of the table's columns as the point-in-time join adds them (then renamed)."""
        return f"{self.table}__"

    def rows_in(self, tables: Mapping[str, Any]) -> Any:
        """The table's rows among a training set's feature tables (a frame of either engine).

        Raises:
            KeyError: `tables` does not hold the table.
        """
        if self.table not in tables:
            raise KeyError(f"training set needs feature table {self.table!r}")
        return tables[self.table]

    def join_arguments(self) -> dict[str, Any]:
        """The point-in-time join's arguments for this lookup, polars or Spark alike.

        Keys are the lookup's, times the events' `event_time` and the table's timestamp key;
        the table's extra row key breaks ties; rows older than its staleness count as missing.
        """
        definition = self.definition
        return {
            "keys": list(self.keys),
            "event_time": "event_time",
            "feature_time": definition.timestamp_key,
            "columns": list(self.features),
            "tie_breaker": tie_breaker(definition),
            "max_staleness": datetime.timedelta(days=definition.max_staleness_days),
            "prefix": self.prefix,
        }


@dataclass(frozen=True)
class OnDemandFeature:
    """A feature computed at request time from request fields and looked-up features.

    Attributes:
        name: Output column.
        description: What it measures.
        inputs: Columns it reads.
        expression: Builds the polars expression (used offline and online alike).
    """

    name: str
    description: str
    inputs: tuple[str, ...]
    expression: Callable[[], pl.Expr]


ON_DEMAND_FEATURES: dict[str, OnDemandFeature] = {
    f.name: f
    for f in (
        OnDemandFeature(
            "seconds_since_card_txn",
            "Seconds since the card's previous transaction (30 days when none is known).",
            ("event_time", "card_behaviour__feature_time"),
            lambda: (
                (pl.col("event_time") - pl.col("card_behaviour__feature_time"))
                .dt.total_seconds()
                .cast(pl.Float64)
                .fill_null(30 * 86_400.0)
            ),
        ),
        OnDemandFeature(
            "amount_to_card_mean_7d",
            "The amount divided by the card's mean amount over 7 days (1 when unknown).",
            ("amount", "amount_mean_7d"),
            lambda: (
                pl.when(pl.col("amount_mean_7d") > 0)
                .then(pl.col("amount") / pl.col("amount_mean_7d"))
                .otherwise(1.0)
            ),
        ),
        OnDemandFeature(
            "amount_zscore_7d",
            "How many 7-day standard deviations the amount lies above the card's mean.",
            ("amount", "amount_mean_7d", "amount_std_7d"),
            lambda: (
                pl.when(pl.col("amount_std_7d") > 0)
                .then((pl.col("amount") - pl.col("amount_mean_7d")) / pl.col("amount_std_7d"))
                .otherwise(0.0)
            ),
        ),
        OnDemandFeature(
            "is_foreign",
            "Whether the transaction's country differs from the card's.",
            ("country", "card_country"),
            lambda: (pl.col("country") != pl.col("card_country")).fill_null(False),
        ),
        OnDemandFeature(
            "card_without_history",
            "Whether no card-behaviour row was known before the event (within the table's "
            "staleness limit): a card's first transaction, or one silent for longer; the "
            "looked-up card features then hold their defaults.",
            ("card_behaviour__feature_time",),
            lambda: pl.col("card_behaviour__feature_time").is_null(),
        ),
        OnDemandFeature(
            "hour_of_day",
            "Hour of the event, UTC.",
            ("event_time",),
            lambda: pl.col("event_time").dt.hour().cast(pl.Int64),
        ),
    )
}


@dataclass(frozen=True)
class FeatureSpec:
    """Everything needed to build a model's input from an event's fields.

    Attributes:
        request_fields: Fields the caller sends (keys, event time, amount, ...).
        lookups: Feature tables to look up by key.
        on_demand: Names of request-time features (see `ON_DEMAND_FEATURES`).
        model_inputs: Request fields passed to the model as they are (categoricals, amount).
        categorical: The `model_inputs` the model encodes as categories (strings); the others
            are numbers. None for specs stored before it was declared: every model input but
            `amount` is categorical.
    """

    request_fields: tuple[str, ...]
    lookups: tuple[FeatureLookup, ...]
    on_demand: tuple[str, ...] = ()
    model_inputs: tuple[str, ...] = ()
    version: int = SPEC_VERSION
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    categorical: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.categorical is not None:
            strays = [c for c in self.categorical if c not in self.model_inputs]
            if strays:
                raise ValueError(
                    f"categorical inputs {strays} are not model inputs "
                    f"({', '.join(self.model_inputs) or 'none'})"
                )
        seen: set[str] = set()
        for lookup in self.lookups:
            for name in lookup.features:
                lookup.definition.feature(name)
                if name in seen:
                    raise ValueError(f"feature {name!r} is looked up twice")
                seen.add(name)
            missing = [k for k in lookup.keys if k not in self.request_fields]
            if missing:
                raise ValueError(
                    f"lookup of {lookup.table} needs request fields {missing} the spec lacks"
                )
        for name in self.on_demand:
            if name not in ON_DEMAND_FEATURES:
                raise ValueError(
                    f"unknown on-demand feature {name!r}; known: {', '.join(ON_DEMAND_FEATURES)}"
                )

    @property
    def categorical_inputs(self) -> tuple[str, ...]:
        """The model inputs encoded as categories: declared, or (older specs) all but amount."""
        if self.categorical is not None:
            return self.categorical
        return tuple(c for c in self.model_inputs if c != "amount")

    @property
    def numeric_inputs(self) -> tuple[str, ...]:
        """The request fields passed to the model as numbers."""
        categorical = set(self.categorical_inputs)
        return tuple(c for c in self.model_inputs if c not in categorical)

    @property
    def feature_columns(self) -> list[str]:
        """The model's input columns, in order."""
        looked_up = [f for lookup in self.lookups for f in lookup.features]
        return [*self.model_inputs, *looked_up, *self.on_demand]

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what is stored with a model)."""
        data = asdict(self)
        data["lookups"] = [
            {
                "table": lk.table,
                "features": list(lk.features),
                "lookup_keys": list(lk.lookup_keys),
                # Resolved keys, for readers without the feature registry.
                "keys": list(lk.keys),
            }
            for lk in self.lookups
        ]
        return data

    def to_json(self) -> str:
        """The spec as JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Rebuild a spec from `to_dict` output.

        Raises:
            ValueError: The data is not a spec of a version this code reads.
        """
        if data.get("version") != SPEC_VERSION:
            raise ValueError(f"feature spec version {data.get('version')!r} is not {SPEC_VERSION}")
        return cls(
            request_fields=tuple(data["request_fields"]),
            lookups=tuple(
                FeatureLookup(lk["table"], tuple(lk["features"]), tuple(lk["lookup_keys"]))
                for lk in data["lookups"]
            ),
            on_demand=tuple(data.get("on_demand", ())),
            model_inputs=tuple(data.get("model_inputs", ())),
            description=data.get("description", ""),
            extra=dict(data.get("extra", {})),
            categorical=(
                tuple(data["categorical"]) if data.get("categorical") is not None else None
            ),
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        """Rebuild a spec from `to_json` output."""
        return cls.from_dict(json.loads(text))

    def training_set(
        self, events: pl.DataFrame, tables: Mapping[str, pl.DataFrame]
    ) -> pl.DataFrame:
        """Join events to the features known strictly before each event, then derive the rest.

        Args:
            events: Labelled events with the request fields (and any label columns).
            tables: Feature table name to its rows (at least the keys, timestamp key and the
                features looked up).

        Returns:
            The events in their order with every feature column; missing values take the
            features' documented defaults.
        """
        frame = events
        for lookup in self.lookups:
            definition = lookup.definition
            rows = lookup.rows_in(tables).rename(
                dict(zip(definition.entity_keys, lookup.keys, strict=True))
            )
            prefix = lookup.prefix
            frame = point_in_time_join(frame, rows, **lookup.join_arguments())
            time_name = next(
                c
                for c in (f"{prefix}feature_time", f"{prefix}{definition.timestamp_key}")
                if c in frame.columns
            )
            frame = frame.rename(
                {time_name: lookup.time_column, **{f"{prefix}{f}": f for f in lookup.features}}
            )
            frame = frame.with_columns(
                pl.col(f).fill_null(definition.feature(f).default) for f in lookup.features
            )
        return self._derive(frame)

    def request_frame(
        self, request: Mapping[str, Any], looked_up: Mapping[str, Mapping[str, Any]]
    ) -> pl.DataFrame:
        """One request's model input: its fields, looked-up features and derived features.

        Args:
            request: The request's fields.
            looked_up: Table name to `{"values": {...}, "feature_time": datetime | None}` as
                the online store returns them (defaults already applied for unknown keys).

        Returns:
            A one-row frame with the request fields and `feature_columns`.
        """
        row: dict[str, Any] = {name: request.get(name) for name in self.request_fields}
        event_time = request.get("event_time")
        if not isinstance(event_time, datetime.datetime) or event_time.tzinfo is None:
            raise ValueError(
                f"request field event_time must be a datetime with a time zone, got {event_time!r}"
            )
        for lookup in self.lookups:
            definition = lookup.definition
            found = looked_up[lookup.table]
            feature_time = found.get("feature_time")
            # The same rules as the point-in-time join: only a row from strictly before the
            # event, and not older than the table's staleness limit; otherwise the defaults.
            limit = datetime.timedelta(days=definition.max_staleness_days)
            usable = feature_time is not None and (event_time - limit <= feature_time < event_time)
            for name in lookup.features:
                row[name] = found["values"][name] if usable else definition.feature(name).default
            row[lookup.time_column] = feature_time if usable else None
        frame = pl.DataFrame([row]).with_columns(
            pl.col("event_time").cast(pl.Datetime("us", "UTC")),
            *[pl.col(lookup.time_column).cast(pl.Datetime("us", "UTC")) for lookup in self.lookups],
        )
        return self._derive(frame)

    def requests_frame(
        self, requests: pl.DataFrame, looked_up: Mapping[str, pl.DataFrame]
    ) -> pl.DataFrame:
        """Many requests' model input at once, by the rules of `request_frame` row for row.

        Args:
            requests: One request per row with the request fields (a missing field reads as
                null); `event_time` a datetime column with a time zone. Other columns stay.
            looked_up: Table name to a frame aligned with `requests` (its row i is request i's
                vector): the lookup's features and `feature_time` (null for unknown keys).

        Returns:
            `requests` in their order with the looked-up features (their defaults where the
            row is unusable), each lookup's time column and the request-time features.
        """
        dtype = requests.schema.get("event_time")
        if not isinstance(dtype, pl.Datetime) or dtype.time_zone is None:
            raise ValueError(
                f"requests' event_time must be a datetime column with a time zone, got {dtype}"
            )
        frame = requests.with_columns(
            *[
                pl.lit(None).alias(name)
                for name in self.request_fields
                if name not in requests.columns
            ],
            pl.col("event_time").cast(pl.Datetime("us", "UTC")),
        )
        event_time = frame.get_column("event_time")
        columns: list[pl.Series] = []
        for lookup in self.lookups:
            definition = lookup.definition
            found = looked_up[lookup.table]
            if found.height != frame.height:
                raise ValueError(
                    f"{lookup.table}: {found.height} looked-up rows for {frame.height} requests"
                )
            # The rules of `request_frame`: only a row from strictly before the event and
            # within the table's staleness limit is used; otherwise the features' defaults.
            limit = datetime.timedelta(days=definition.max_staleness_days)
            checked = pl.DataFrame(
                {
                    "event_time": event_time,
                    "feature_time": found.get_column("feature_time").cast(pl.Datetime("us", "UTC")),
                }
            ).select(
                (
                    pl.col("feature_time").is_not_null()
                    & (pl.col("event_time") - limit <= pl.col("feature_time"))
                    & (pl.col("feature_time") < pl.col("event_time"))
                ).alias("usable"),
                "feature_time",
            )
            usable = checked.get_column("usable").fill_null(False)
            values = found.select(
                pl.when(pl.lit(usable))
                .then(pl.col(name))
                .otherwise(_default(definition.feature(name).default, found.schema[name]))
                .alias(name)
                for name in lookup.features
            )
            columns.extend(values.get_columns())
            columns.append(
                checked.select(
                    pl.when(pl.lit(usable)).then(pl.col("feature_time")).alias(lookup.time_column)
                ).to_series()
            )
        return self._derive(frame.with_columns(columns))

    def fetch(self, store: Any, request: Mapping[str, Any]) -> pl.DataFrame:
        """A request's model input, with its features looked up in the online store by key.

        Args:
            store: An `OnlineStore` (anything with `lookup(table, key)` returning a vector
                with `values` and `feature_time`).
            request: The request's fields, `event_time` a datetime with a time zone.

        Returns:
            The one-row frame of `request_frame`.
        """
        looked_up = {}
        for lookup in self.lookups:
            if len(lookup.keys) != 1:
                raise ValueError(f"online lookups take one key; {lookup.table} has {lookup.keys}")
            vector = store.lookup(lookup.table, str(request[lookup.keys[0]]))
            looked_up[lookup.table] = {
                "values": vector.values,
                "feature_time": vector.feature_time,
            }
        return self.request_frame(request, looked_up)

    def _derive(self, frame: pl.DataFrame) -> pl.DataFrame:
        if not self.on_demand:
            return frame
        return frame.with_columns(
            ON_DEMAND_FEATURES[name].expression().alias(name) for name in self.on_demand
        )


def _default(value: Any, dtype: pl.DataType) -> pl.Expr:
    """A feature's default as a literal of its looked-up column's type (when it has one)."""
    return pl.lit(value, dtype=None if dtype == pl.Null else dtype)


def tie_breaker(table: FeatureTable) -> str | None:
    """The column settling a key's rows with the same time: its first other row key."""
    extra = [k for k in table.row_keys if k not in table.entity_keys]
    return extra[0] if extra else None


FRAUD_SPEC = FeatureSpec(
    request_fields=(
        "transaction_id",
        "card_id",
        "merchant_id",
        "event_time",
        "amount",
        "merchant_category",
        "channel",
        "entry_mode",
        "device_type",
        "country",
        "card_country",
    ),
    lookups=(
        FeatureLookup("card_behaviour", CARD_BEHAVIOUR.feature_names),
        FeatureLookup("merchant_risk", MERCHANT_RISK.feature_names),
    ),
    on_demand=(
        "seconds_since_card_txn",
        "amount_to_card_mean_7d",
        "amount_zscore_7d",
        "is_foreign",
        "hour_of_day",
        "card_without_history",
    ),
    model_inputs=("amount", "merchant_category", "channel", "entry_mode", "device_type"),
    categorical=("merchant_category", "channel", "entry_mode", "device_type"),
    description="Card-fraud detector inputs: card behaviour, merchant risk, request fields.",
)
