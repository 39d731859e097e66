"""Configuration dataclasses that fully determine a simulated card-transaction feed."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any


def _check_rate(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")


def _check_day(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{name} must be a day index >= 0 or None, got {value!r}")


def _active(from_day: int | None, day_index: int) -> bool:
    return from_day is not None and day_index >= from_day


@dataclass(frozen=True)
class DirtyData:
    """Kinds and rates of bad data injected into the transaction files.

    Rates are fractions of the day's transaction events; every dirty line carries exactly one
    defect and is derived from an ordinary (non-fraud, non-disputed) transaction.

    Attributes:
        malformed_rate: Lines whose field count differs from the header's (truncated, extra
            fields, junk text) plus a few lines that are not valid UTF-8.
        wrong_type_rate: Well-formed lines whose amount or event_time cannot be parsed.
        missing_field_rate: Well-formed lines with one required field left empty.
        duplicate_rate: Valid lines re-sent verbatim, half in the same day's file and half in
            the next day's file.
        late_event_rate: Valid lines whose event_time lies 1-3 days before the file's date.
        added_column_from_day: From this day index on, header and lines get an extra last
            column ``terminal_id``.
    """

    malformed_rate: float = 0.0
    wrong_type_rate: float = 0.0
    missing_field_rate: float = 0.0
    duplicate_rate: float = 0.0
    late_event_rate: float = 0.0
    added_column_from_day: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "malformed_rate",
            "wrong_type_rate",
            "missing_field_rate",
            "duplicate_rate",
            "late_event_rate",
        ):
            _check_rate(name, getattr(self, name))
        # Dirt is carved out of the ordinary transactions, so it has to leave most of them intact.
        if self.total_rate > 0.5:
            raise ValueError(f"dirty-data rates add up to {self.total_rate:.3f}, at most 0.5")
        _check_day("added_column_from_day", self.added_column_from_day)

    @property
    def total_rate(self) -> float:
        """Sum of all per-line dirt rates."""
        return (
            self.malformed_rate
            + self.wrong_type_rate
            + self.missing_field_rate
            + self.duplicate_rate
            + self.late_event_rate
        )

    def added_column_on(self, day_index: int) -> bool:
        """Whether the extra ``terminal_id`` column is present on the given day."""
        return _active(self.added_column_from_day, day_index)


@dataclass(frozen=True)
class Drift:
    """Distribution changes that switch on from a given day index.

    Attributes:
        covariate_from_day: From this day, amounts scale by ``amount_scale`` and the category
            mix shifts toward online retail, travel and electronics.
        amount_scale: Multiplier applied to amounts under covariate drift.
        new_categories_from_day: From this day, about 5% of ordinary transactions go to
            merchant categories never seen before (``crypto_exchange``, ``bnpl_marketplace``).
        concept_from_day: From this day, fraudsters mostly switch from card-not-present bursts
            to card-testing (many small, domestic, contactless daytime payments).
    """

    covariate_from_day: int | None = None
    amount_scale: float = 1.6
    new_categories_from_day: int | None = None
    concept_from_day: int | None = None

    def __post_init__(self) -> None:
        _check_day("covariate_from_day", self.covariate_from_day)
        _check_day("new_categories_from_day", self.new_categories_from_day)
        _check_day("concept_from_day", self.concept_from_day)
        if not (math.isfinite(self.amount_scale) and self.amount_scale > 0):
            raise ValueError(f"amount_scale must be > 0, got {self.amount_scale!r}")

    def covariate_on(self, day_index: int) -> bool:
        """Whether covariate drift is active on the given day."""
        return _active(self.covariate_from_day, day_index)

    def new_categories_on(self, day_index: int) -> bool:
        """Whether unseen merchant categories appear on the given day."""
        return _active(self.new_categories_from_day, day_index)

    def concept_on(self, day_index: int) -> bool:
        """Whether the card-testing fraud pattern is active on the given day."""
        return _active(self.concept_from_day, day_index)


def _population_for(transactions_per_day: int) -> dict[str, int]:
    # 20k transactions/day -> 5k cards and 800 merchants, the class defaults.
    return {
        "n_cards": max(500, transactions_per_day // 4),
        "n_merchants": max(200, transactions_per_day // 25),
    }


@dataclass(frozen=True)
class Scenario:
    """Everything that determines the simulated feed; equal scenarios give identical bytes.

    Attributes:
        seed: Root seed; card and merchant population derive from it alone.
        start_date: Date of day index 0.
        days: Number of simulated days.
        transactions_per_day: Distinct transaction events per day (duplicates come on top).
        n_cards: Size of the card population.
        n_merchants: Size of the merchant population (at least one per category).
        fraud_rate: Expected share of fraudulent transactions.
        label_delay_days: Inclusive range of days between a transaction and its chargeback.
        files_per_day: Number of transaction part files per day.
        dirty: Bad-data injection settings.
        drift: Distribution-change settings.
        new_card_rate: Share of each day's ordinary transactions made with a card never seen
            before (a card issued that day to one of the population's cardholders, used once
            that day): each such transaction is its card's first. At the 0.5 % default a
            day of 4,000 transactions brings 20 new cards.
        new_card_fraud_uplift: How many times as often as an average transaction a new card's
            first transaction is fraud (card testing and account takeover on fresh cards):
            that many fraud bursts of the day move to cards issued that day, so that about
            ``fraud_rate * new_card_fraud_uplift`` (at most one in two) of the new cards'
            first transactions are fraud. The day's fraud count is unchanged.
    """

    seed: int = 7
    start_date: datetime.date = datetime.date(2026, 1, 1)
    days: int = 8
    transactions_per_day: int = 20_000
    n_cards: int = 5_000
    n_merchants: int = 800
    fraud_rate: float = 0.01
    label_delay_days: tuple[int, int] = (1, 20)
    files_per_day: int = 1
    dirty: DirtyData = field(default_factory=DirtyData)
    drift: Drift = field(default_factory=Drift)
    new_card_rate: float = 0.005
    new_card_fraud_uplift: float = 20.0

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError(f"days must be >= 1, got {self.days}")
        if self.transactions_per_day < 1:
            raise ValueError(f"transactions_per_day must be >= 1, got {self.transactions_per_day}")
        if self.n_cards < 1:
            raise ValueError(f"n_cards must be >= 1, got {self.n_cards}")
        # One merchant per category (12 regular + 2 drift-only) keeps every category reachable.
        if self.n_merchants < 14:
            raise ValueError(f"n_merchants must be >= 14, got {self.n_merchants}")
        if not (0.0 <= self.fraud_rate <= 0.2):
            raise ValueError(f"fraud_rate must be in [0, 0.2], got {self.fraud_rate}")
        lo, hi = self.label_delay_days
        if not (1 <= lo <= hi):
            raise ValueError(f"label_delay_days must satisfy 1 <= lo <= hi, got {(lo, hi)}")
        if self.files_per_day < 1:
            raise ValueError(f"files_per_day must be >= 1, got {self.files_per_day}")
        if not (math.isfinite(self.new_card_rate) and 0.0 <= self.new_card_rate <= 0.2):
            raise ValueError(f"new_card_rate must be in [0, 0.2], got {self.new_card_rate!r}")
        if not (math.isfinite(self.new_card_fraud_uplift) and self.new_card_fraud_uplift >= 1):
            raise ValueError(
                f"new_card_fraud_uplift must be a finite number >= 1, "
                f"got {self.new_card_fraud_uplift!r}"
            )
        # Normalise so equal scenarios hash equally (lists would also break hashing).
        object.__setattr__(self, "label_delay_days", (int(lo), int(hi)))

    def date_of(self, day_index: int) -> datetime.date:
        """Calendar date of a day index."""
        return self.start_date + datetime.timedelta(days=day_index)

    @property
    def new_cards_per_day(self) -> tuple[int, int]:
        """New cards issued each day: (used by ordinary transactions, used by fraud bursts).

        The second is the most; a day with fewer fraud bursts moves all it has.
        """
        ordinary = round(self.new_card_rate * self.transactions_per_day)
        fraud_share = min(0.5, self.fraud_rate * self.new_card_fraud_uplift)
        fraud = round(ordinary * fraud_share / (1.0 - fraud_share))
        return ordinary, fraud

    @property
    def dates(self) -> list[datetime.date]:
        """Calendar dates of all simulated days."""
        return [self.date_of(d) for d in range(self.days)]

    @classmethod
    def clean(cls, **overrides: Any) -> Scenario:
        """A scenario without dirt or drift.

        Card and merchant counts scale with ``transactions_per_day`` unless given.
        """
        tpd = overrides.get("transactions_per_day", cls.transactions_per_day)
        params: dict[str, Any] = {**_population_for(tpd), **overrides}
        return cls(**params)

    @classmethod
    def demo(cls, **overrides: Any) -> Scenario:
        """A scenario with every kind of dirty data switched on (0.2-0.5% each).

        The ``terminal_id`` column is added from day 3. Card and merchant counts scale with
        ``transactions_per_day`` unless given.
        """
        dirty = DirtyData(
            malformed_rate=0.003,
            wrong_type_rate=0.003,
            missing_field_rate=0.003,
            duplicate_rate=0.004,
            late_event_rate=0.002,
            added_column_from_day=3,
        )
        return cls.clean(**{"dirty": dirty, **overrides})

    @classmethod
    def drifted(cls, **overrides: Any) -> Scenario:
        """The demo scenario plus covariate and concept drift from day ``days // 2``."""
        days = overrides.get("days", cls.days)
        drift = Drift(covariate_from_day=days // 2, concept_from_day=days // 2)
        return cls.demo(**{"drift": drift, **overrides})
