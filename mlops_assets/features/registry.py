"""Feature tables: their keys, timestamp key, features with descriptions and defaults, lineage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mlops_assets.lakehouse.catalog import TableRef
from mlops_assets.transforms.features import CARD_LOOKBACK_DAYS, MERCHANT_PRIOR_RATE


@dataclass(frozen=True)
class Feature:
    """One feature column.

    Attributes:
        name: Column name.
        dtype: `int`, `float`, `bool` or `str`.
        description: What it measures, for people.
        default: The value serving and training use when the key has no row (documented).
    """

    name: str
    dtype: str
    description: str
    default: Any


@dataclass(frozen=True)
class FeatureTable:
    """A Delta table of features with the metadata that makes it a feature table.

    Attributes:
        name: Table name in the `features` layer.
        entity_keys: Columns identifying the entity (e.g. `card_id`).
        timestamp_key: When a row's values became known; lookups use rows strictly before.
        row_keys: Columns identifying a row (for merges).
        partition_column: The daily partition column.
        description: What the table is for.
        owner: Who answers for it.
        features: Its feature columns.
        sources: Tables it is computed from.
        lookback_days: Earlier days a day's refresh reads.
        max_staleness_days: Rows older than this count as missing in lookups.
        online: Whether the latest row per key is published to the online store.
    """

    name: str
    entity_keys: tuple[str, ...]
    timestamp_key: str
    row_keys: tuple[str, ...]
    partition_column: str
    description: str
    owner: str
    features: tuple[Feature, ...]
    sources: tuple[str, ...]
    lookback_days: int
    max_staleness_days: int
    online: bool = True
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> TableRef:
        """Where the table lives."""
        return TableRef("features", self.name)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the feature columns."""
        return tuple(f.name for f in self.features)

    @property
    def defaults(self) -> dict[str, Any]:
        """Default value of every feature."""
        return {f.name: f.default for f in self.features}

    def feature(self, name: str) -> Feature:
        """One feature by name.

        Raises:
            KeyError: The table has no such feature; the message lists those it has.
        """
        for candidate in self.features:
            if candidate.name == name:
                return candidate
        raise KeyError(
            f"feature table {self.name} has no feature {name!r}; it has "
            f"{', '.join(self.feature_names)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The table's metadata as plain data."""
        data = asdict(self)
        data["table"] = str(self.ref)
        return data


CARD_BEHAVIOUR = FeatureTable(
    name="card_behaviour",
    entity_keys=("card_id",),
    timestamp_key="event_time",
    row_keys=("card_id", "transaction_id"),
    partition_column="event_date",
    description=(
        "How each card behaves over trailing windows, as of just after each of its "
        "transactions: counts, amounts, and the shares of online, foreign and night "
        "transactions. An event uses the card's latest row before it, so windows end at the "
        "card's previous transaction (counting it), not at the event. Request-time features "
        "(time since that row, amount relative to the card's mean) derive from these rows."
    ),
    owner="team:ml-platform",
    features=(
        Feature("txn_count_1h", "int", "Transactions of the card in the last hour.", 0),
        Feature("txn_count_24h", "int", "Transactions of the card in the last 24 hours.", 0),
        Feature("txn_count_7d", "int", "Transactions of the card in the last 7 days.", 0),
        Feature("amount_sum_24h", "float", "Amount spent in the last 24 hours.", 0.0),
        Feature("amount_max_24h", "float", "Largest amount in the last 24 hours.", 0.0),
        Feature("amount_mean_7d", "float", "Mean amount over the last 7 days.", 0.0),
        Feature("amount_std_7d", "float", "Standard deviation of amounts over 7 days.", 0.0),
        Feature("online_share_7d", "float", "Share of online transactions over 7 days.", 0.0),
        Feature(
            "foreign_share_7d",
            "float",
            "Share of transactions outside the card's country over 7 days.",
            0.0,
        ),
        Feature(
            "night_share_7d", "float", "Share of transactions at 00:00-06:00 UTC over 7 days.", 0.0
        ),
    ),
    sources=("silver/transactions",),
    lookback_days=CARD_LOOKBACK_DAYS,
    max_staleness_days=30,
)

MERCHANT_RISK = FeatureTable(
    name="merchant_risk",
    entity_keys=("merchant_id",),
    timestamp_key="as_of",
    row_keys=("merchant_id",),
    partition_column="day",
    description=(
        "Each merchant's fraud history over the 30 days ending with a day, as known at the "
        "end of that day (`as_of`, counting only chargebacks reported by then): volume, fraud "
        "reported, and the fraud rate smoothed towards the overall prior for merchants with "
        "few transactions."
    ),
    owner="team:ml-platform",
    features=(
        Feature("transactions_30d", "int", "Transactions at the merchant in the 30 days.", 0),
        Feature("fraud_reported_30d", "int", "Fraud chargebacks reported in the 30 days.", 0),
        Feature("chargebacks_30d", "int", "All chargebacks reported in the 30 days.", 0),
        Feature(
            "fraud_rate_30d",
            "float",
            "Fraud reported per transaction, smoothed towards the prior.",
            MERCHANT_PRIOR_RATE,
        ),
    ),
    sources=("features/merchant_daily",),
    lookback_days=30,
    max_staleness_days=3,
)

FEATURE_TABLES: dict[str, FeatureTable] = {t.name: t for t in (CARD_BEHAVIOUR, MERCHANT_RISK)}


def feature_table(name: str) -> FeatureTable:
    """A feature table by name.

    Raises:
        KeyError: No such table; the message lists those that exist.
    """
    try:
        return FEATURE_TABLES[name]
    except KeyError:
        raise KeyError(
            f"no feature table {name!r}; the feature tables are {', '.join(FEATURE_TABLES)}"
        ) from None
