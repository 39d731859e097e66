"""Seeded, vectorised generation of one day of card transactions and chargeback labels."""

from __future__ import annotations

import datetime
import functools
import hashlib
import io
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa

from mlops_assets.simulate.scenario import Scenario

TRANSACTION_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "event_time",
    "card_id",
    "merchant_id",
    "merchant_category",
    "amount",
    "currency",
    "country",
    "card_country",
    "channel",
    "entry_mode",
    "device_type",
    "device_id",
)
ADDED_COLUMN = "terminal_id"
LABEL_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "card_id",
    "reported_at",
    "chargeback_reason",
    "is_fraud",
)
REQUIRED_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "card_id",
    "amount",
    "event_time",
    "merchant_id",
)
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

CATEGORIES: tuple[str, ...] = (
    "grocery",
    "fuel",
    "restaurant",
    "travel",
    "electronics",
    "online_retail",
    "gaming",
    "jewelry",
    "pharmacy",
    "apparel",
    "entertainment",
    "cash_withdrawal",
    "crypto_exchange",
    "bnpl_marketplace",
)
BASE_CATEGORIES = CATEGORIES[:12]
NEW_CATEGORIES = CATEGORIES[12:]
COUNTRIES: tuple[str, ...] = ("DE", "FR", "NL", "ES", "IT", "GB", "US", "PL", "CH", "SE")
CURRENCIES: tuple[str, ...] = ("EUR", "EUR", "EUR", "EUR", "EUR", "GBP", "USD", "PLN", "CHF", "SEK")
CHANNELS: tuple[str, ...] = ("pos", "online", "atm")
ENTRY_MODES: tuple[str, ...] = ("chip", "contactless", "swipe", "ecommerce", "manual")
DEVICE_TYPES: tuple[str, ...] = ("terminal", "mobile", "desktop", "atm")
CHARGEBACK_REASONS: tuple[str, ...] = (
    "fraud_card_not_present",
    "fraud_card_present",
    "merchandise_not_received",
    "duplicate_processing",
)

_CAT = {name: i for i, name in enumerate(CATEGORIES)}
_N_CAT = len(CATEGORIES)
_N_COUNTRY = len(COUNTRIES)
_POS, _ONLINE, _ATM = 0, 1, 2
_CHIP, _CONTACTLESS, _SWIPE, _ECOMMERCE, _MANUAL = 0, 1, 2, 3, 4
_TERMINAL, _MOBILE, _DESKTOP, _ATM_DEVICE = 0, 1, 2, 3
_CNP_FRAUD, _SKIMMING, _CARD_TESTING = 0, 1, 2

_HOUR_US = 3_600_000_000
_DAY_US = 24 * _HOUR_US
_EPOCH = datetime.date(1970, 1, 1)
_DEVICE_SPACE = 1 << 40
_ID_BITS = 40
_ID_MASK = (1 << _ID_BITS) - 1
_DEVICES_PER_CARD = 3
_MAX_LATE_DAYS = 3

_COUNTRY_WEIGHTS = (0.25, 0.15, 0.10, 0.10, 0.10, 0.12, 0.10, 0.05, 0.02, 0.01)
_CATEGORY_WEIGHTS = (0.22, 0.09, 0.14, 0.03, 0.04, 0.14, 0.03, 0.01, 0.06, 0.07, 0.07, 0.10)
_COVARIATE_BOOST = {"travel": 2.5, "electronics": 2.5, "online_retail": 2.0}
_NEW_CATEGORY_SHARE = 0.05
# Median amount (in currency units) and log-sd per category, indexed like CATEGORIES.
_AMOUNT_MEDIAN = (35, 55, 30, 250, 180, 45, 20, 300, 20, 60, 25, 100, 200, 80)
_AMOUNT_SIGMA = (0.6, 0.4, 0.6, 0.9, 0.9, 0.8, 0.8, 0.9, 0.6, 0.7, 0.6, 0.6, 1.0, 0.7)
_ONLINE_SHARE = (0.08, 0.0, 0.05, 0.6, 0.45, 1.0, 0.85, 0.15, 0.1, 0.35, 0.4, 0.0, 1.0, 1.0)
_FOREIGN_BY_CHANNEL = (0.05, 0.18, 0.04)
_TRAVEL_FOREIGN = 0.45
_NEW_DEVICE_LEGIT = 0.03
_OPTIONAL_EMPTY = 0.01
_DISPUTE_RATE = 0.001
# Activity skew: a few cards transact a lot, most rarely.
_ACTIVITY_SIGMA = 0.9
_SPEND_SIGMA = 0.45

_LEGIT_HOURS = (
    0.6, 0.35, 0.25, 0.2, 0.25, 0.5, 1.2, 2.5, 3.8, 4.5, 5.0, 5.5,
    6.5, 6.0, 5.5, 5.5, 6.0, 6.8, 7.0, 6.5, 5.5, 4.2, 2.8, 1.5,
)  # fmt: skip
_CNP_HOURS = (
    4.0, 4.5, 5.0, 4.5, 4.0, 3.0, 2.0, 1.5, 1.5, 1.5, 1.5, 1.5,
    1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0,
)  # fmt: skip
_SKIM_HOURS = (
    3.0, 3.0, 3.0, 2.5, 2.0, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
    1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0,
)  # fmt: skip
_TESTING_HOURS = (
    0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0,
)  # fmt: skip

# Fraud kind mix before / after concept drift: (card-not-present, skimming, card testing).
_FRAUD_MIX = (0.8, 0.2, 0.0)
_FRAUD_MIX_CONCEPT = (0.12, 0.03, 0.85)
_BURST_MIN = (2, 2, 3)
_BURST_MAX = (6, 4, 10)
_GAP_MIN_US = (20_000_000, 60_000_000, 30_000_000)
_GAP_MAX_US = (240_000_000, 600_000_000, 180_000_000)
_FRAUD_FOREIGN = (0.6, 0.85, 0.0)
_FRAUD_NEW_DEVICE = (0.8, 0.7, 0.0)
_FRAUD_ATM_SHARE = 0.55
_FRAUD_AMOUNT_LIFT = 1.1
_CNP_CATEGORIES = ("electronics", "online_retail", "gaming", "jewelry", "travel")
_CNP_CATEGORY_WEIGHTS = (0.3, 0.3, 0.2, 0.1, 0.1)
_SKIM_CATEGORIES = ("electronics", "jewelry", "apparel")
_SKIM_CATEGORY_WEIGHTS = (0.4, 0.3, 0.3)
_TESTING_CATEGORIES = ("grocery", "fuel", "restaurant", "entertainment")
_TESTING_CATEGORY_WEIGHTS = (0.25, 0.25, 0.25, 0.25)

_AMOUNT_JUNK = ("N/A", "12.3.4", "abc", "1O.50", "twelve", "12.50EUR")
_TIME_JUNK = ("yesterday", "2026-13-45T99:00:00Z", "not-a-date", "31/31/2026 25:61", "TBD")
_JUNK_LINES = (
    "ERR upstream gateway timeout ref {}",
    "lorem ipsum dolor sit amet {}",
    "<<< partial batch {} >>>",
    "-- heartbeat {} --",
)
# NUL never occurs in generated text; it stands in for a Latin-1 "é" (0xE9, invalid as UTF-8
# here) until the line is bytes, because polars strings must be valid UTF-8.
_BAD_MARK, _BAD_BYTE = b"\x00", b"\xe9"
_TRUNCATED, _EXTRA_FIELDS, _JUNK, _INVALID_UTF8 = 0, 1, 2, 3

_ROW_COLUMNS = ("card", "merchant", "channel", "entry", "dtype", "device", "cents", "t")


# --------------------------------------------------------------------------------------------
# Random streams
# --------------------------------------------------------------------------------------------


def _derive_seed(*parts: object) -> int:
    text = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=16).digest(), "little")


class _Rng:
    """A named random stream that yields polars Series.

    Built on the standard library's Mersenne Twister: bulk ``getrandbits`` is fast and its
    output is stable, so files stay byte-identical without extra dependencies.
    """

    def __init__(self, *key: object) -> None:
        self.py = random.Random(_derive_seed(*key))

    def _words(self, n: int, bits: int) -> pl.Series:
        dtype = pl.UInt32 if bits == 32 else pl.UInt64
        if n == 0:
            return pl.Series(values=[], dtype=dtype)
        raw = self.py.getrandbits(n * bits).to_bytes(n * bits // 8, "little")
        arrow_type = pa.uint32() if bits == 32 else pa.uint64()
        series = pl.from_arrow(pa.Array.from_buffers(arrow_type, n, [None, pa.py_buffer(raw)]))
        assert isinstance(series, pl.Series)
        return series

    def uniform(self, n: int) -> pl.Series:
        """Uniform floats in [0, 1) with 32-bit resolution."""
        return self._words(n, 32).cast(pl.Float64) * (1.0 / 2**32)

    def uniform53(self, n: int) -> pl.Series:
        """Uniform floats in [0, 1) with full double resolution."""
        return (self._words(n, 64) // 2048).cast(pl.Float64) * (1.0 / 2**53)

    def below(self, bound: int, n: int) -> pl.Series:
        """Integers uniform in [0, bound)."""
        return (self.uniform53(n) * bound).floor().cast(pl.Int64).clip(0, bound - 1)

    def normal(self, n: int) -> pl.Series:
        """Standard normal draws (Box-Muller)."""
        u1, u2 = self.uniform53(n), self.uniform53(n)
        return (-2.0 * (1.0 - u1).log()).sqrt() * (2.0 * math.pi * u2).cos()


def _binomial(r: random.Random, n: int, p: float) -> int:
    if n <= 10_000:
        return sum(r.random() < p for _ in range(n))
    draw = r.normalvariate(n * p, math.sqrt(n * p * (1.0 - p)))
    return min(n, max(0, round(draw)))


# --------------------------------------------------------------------------------------------
# Expression helpers
# --------------------------------------------------------------------------------------------


def _cdf(weights: Sequence[float]) -> pl.Series:
    total = float(sum(weights))
    acc, out = 0.0, []
    for w in weights:
        acc += w
        out.append(acc / total)
    out[-1] = 1.0
    return pl.Series(out, dtype=pl.Float64)


def _pick(cdf: pl.Series, u: pl.Expr) -> pl.Expr:
    """Index drawn from a discrete distribution given by its CDF, using uniforms ``u``."""
    return pl.lit(cdf).search_sorted(u, side="right").cast(pl.Int64).clip(0, cdf.len() - 1)


def _lut(table: pl.Series, index: pl.Expr) -> pl.Expr:
    return pl.lit(table).gather(index)


def _int_series(values: Sequence[int]) -> pl.Series:
    return pl.Series(values, dtype=pl.Int64)


def _float_series(values: Sequence[float]) -> pl.Series:
    return pl.Series(values, dtype=pl.Float64)


def _str_series(values: Sequence[str]) -> pl.Series:
    return pl.Series(values, dtype=pl.String)


_COUNTRY_CDF = _cdf(_COUNTRY_WEIGHTS)
_LEGIT_HOUR_CDF = _cdf(_LEGIT_HOURS)
_CNP_HOUR_CDF = _cdf(_CNP_HOURS)
_SKIM_HOUR_CDF = _cdf(_SKIM_HOURS)
_TESTING_HOUR_CDF = _cdf(_TESTING_HOURS)
_POS_ENTRY_CDF = _cdf((0.45, 0.45, 0.10))
_LOG_MEDIAN = _float_series([math.log(m) for m in _AMOUNT_MEDIAN])
_SIGMA = _float_series(_AMOUNT_SIGMA)
_ONLINE_P = _float_series(_ONLINE_SHARE)
_FOREIGN = _float_series(_FOREIGN_BY_CHANNEL)
_CNP_CAT_CODES = _int_series([_CAT[c] for c in _CNP_CATEGORIES])
_SKIM_CAT_CODES = _int_series([_CAT[c] for c in _SKIM_CATEGORIES])
_TESTING_CAT_CODES = _int_series([_CAT[c] for c in _TESTING_CATEGORIES])


def _other_country(home: pl.Expr, u: pl.Expr) -> pl.Expr:
    """A popularity-weighted country different from ``home``."""
    c = _pick(_COUNTRY_CDF, u)
    return pl.when(c == home).then((c + 1) % _N_COUNTRY).otherwise(c)


def _tx_hash(index: pl.Expr, key: int) -> pl.Expr:
    """Bijective scrambling of a 40-bit index, so ids are unique but reveal nothing."""
    mask = pl.lit(_ID_MASK, dtype=pl.UInt64)

    def mul(x: pl.Expr, c: int) -> pl.Expr:
        return (x * pl.lit(c, dtype=pl.UInt64)) & mask

    x = (index.cast(pl.UInt64) + pl.lit(key, dtype=pl.UInt64)) & mask
    x = mul(x ^ (x // (1 << 21)), 0xBF58476D1CE4E5B9)
    x = mul(x ^ (x // (1 << 17)), 0x94D049BB133111EB)
    x = x ^ (x // (1 << 20))
    return x.cast(pl.Int64)


# --------------------------------------------------------------------------------------------
# Population (cards and merchants) -- depends on the seed and sizes only
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Population:
    n_cards: int
    n_merchants: int
    card_cdf: pl.Series
    card_country: pl.Series
    card_spend: pl.Series
    card_n_devices: pl.Series
    device_id: pl.Series  # flat, _DEVICES_PER_CARD per card
    device_type: pl.Series  # flat, like device_id
    merchant_category: pl.Series
    merchant_country: pl.Series
    pool: pl.Series  # merchant indices grouped by (country, category), then by category
    pool_start: pl.Series  # by country * _N_CAT + category
    pool_count: pl.Series


@functools.lru_cache(maxsize=4)
def _population(seed: int, n_cards: int, n_merchants: int) -> _Population:
    rng = _Rng(seed, "population")
    cards = pl.DataFrame(
        {
            "u_country": rng.uniform(n_cards),
            "z_activity": rng.normal(n_cards),
            "z_spend": rng.normal(n_cards),
            "u_devices": rng.uniform(n_cards),
            "dev0": rng.below(_DEVICE_SPACE, n_cards),
            "dev1": rng.below(_DEVICE_SPACE, n_cards),
            "dev2": rng.below(_DEVICE_SPACE, n_cards),
            "u_type1": rng.uniform(n_cards),
            "u_type2": rng.uniform(n_cards),
        }
    ).with_columns(
        country=_pick(_COUNTRY_CDF, pl.col("u_country")),
        weight=(pl.col("z_activity") * _ACTIVITY_SIGMA).exp(),
        spend=pl.col("z_spend") * _SPEND_SIGMA,
        n_devices=(pl.col("u_devices") * _DEVICES_PER_CARD).floor().cast(pl.Int64) + 1,
        type0=pl.lit(_MOBILE, dtype=pl.Int64),
        type1=pl.when(pl.col("u_type1") < 0.6).then(_DESKTOP).otherwise(_MOBILE).cast(pl.Int64),
        type2=pl.when(pl.col("u_type2") < 0.6).then(_DESKTOP).otherwise(_MOBILE).cast(pl.Int64),
    )
    cumulative = cards["weight"].cum_sum()
    # Normalise by the last cumulative value (not a separate sum) so the CDF ends at exactly 1.
    card_cdf = (cumulative / cumulative[-1]).clip(0.0, 1.0).scatter(n_cards - 1, 1.0)
    flat = cards.select(
        device_id=pl.concat_list("dev0", "dev1", "dev2"),
        device_type=pl.concat_list("type0", "type1", "type2"),
    ).explode("device_id", "device_type", empty_as_null=False)

    # The first merchants cover every category once so that none is ever unreachable.
    u_cat = rng.uniform(n_merchants)
    u_merchant_country = rng.uniform(n_merchants)
    merchant_weights = [w * 0.97 for w in _CATEGORY_WEIGHTS] + [0.015, 0.015]
    merchants = pl.DataFrame({"u_cat": u_cat, "u_country": u_merchant_country}).with_columns(
        category=pl.when(pl.int_range(pl.len()) < _N_CAT)
        .then(pl.int_range(pl.len()))
        .otherwise(_pick(_cdf(merchant_weights), pl.col("u_cat")))
        .cast(pl.Int64),
        country=_pick(_COUNTRY_CDF, pl.col("u_country")),
    )
    m_cat = merchants["category"].to_list()
    m_country = merchants["country"].to_list()
    by_key: list[list[int]] = [[] for _ in range(_N_COUNTRY * _N_CAT)]
    by_cat: list[list[int]] = [[] for _ in range(_N_CAT)]
    for m, (cat, country) in enumerate(zip(m_cat, m_country, strict=True)):
        by_key[country * _N_CAT + cat].append(m)
        by_cat[cat].append(m)
    pool: list[int] = []
    starts: list[int] = []
    counts: list[int] = []
    for members in by_key:
        starts.append(len(pool))
        counts.append(len(members))
        pool.extend(members)
    cat_start: list[int] = []
    for members in by_cat:
        cat_start.append(len(pool))
        pool.extend(members)
    for key, count in enumerate(counts):
        if count == 0:
            # No merchant of this category in that country: fall back to any country.
            cat = key % _N_CAT
            starts[key], counts[key] = cat_start[cat], len(by_cat[cat])

    return _Population(
        n_cards=n_cards,
        n_merchants=n_merchants,
        card_cdf=card_cdf,
        card_country=cards["country"],
        card_spend=cards["spend"],
        card_n_devices=cards["n_devices"],
        device_id=flat["device_id"],
        device_type=flat["device_type"],
        merchant_category=merchants["category"],
        merchant_country=merchants["country"],
        pool=_int_series(pool),
        pool_start=_int_series(starts),
        pool_count=_int_series(counts),
    )


def _population_of(scenario: Scenario) -> _Population:
    return _population(scenario.seed, scenario.n_cards, scenario.n_merchants)


def _pick_merchant(pop: _Population, country: pl.Expr, cat: pl.Expr, u: pl.Expr) -> pl.Expr:
    key = country * _N_CAT + cat
    count = _lut(pop.pool_count, key)
    offset = pl.min_horizontal((u * count).floor().cast(pl.Int64), count - 1)
    return _lut(pop.pool, _lut(pop.pool_start, key) + offset)


# --------------------------------------------------------------------------------------------
# Row generation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DayConfig:
    category_cdf: pl.Series
    new_categories: bool
    amount_scale: float
    concept: bool


def _day_config(scenario: Scenario, day_index: int) -> _DayConfig:
    drift = scenario.drift
    covariate = drift.covariate_on(day_index)
    weights = [
        w * (_COVARIATE_BOOST.get(name, 1.0) if covariate else 1.0)
        for name, w in zip(BASE_CATEGORIES, _CATEGORY_WEIGHTS, strict=True)
    ]
    return _DayConfig(
        category_cdf=_cdf(weights),
        new_categories=drift.new_categories_on(day_index),
        amount_scale=drift.amount_scale if covariate else 1.0,
        concept=drift.concept_on(day_index),
    )


def _amount_cents(cat: pl.Expr, log_amount: pl.Expr) -> pl.Expr:
    amount = log_amount.exp()
    cash = pl.max_horizontal(((amount / 10).round() * 1000).cast(pl.Int64), pl.lit(2000))
    card = pl.max_horizontal((amount * 100).round().cast(pl.Int64), pl.lit(50))
    return pl.when(cat == _CAT["cash_withdrawal"]).then(cash).otherwise(card)


def _optional_empties(u_opt: pl.Expr) -> list[pl.Expr]:
    """Legitimately empty entry_mode / device_id on about 1% of rows each."""
    return [
        pl.when(u_opt < _OPTIONAL_EMPTY).then(-1).otherwise(pl.col("entry")).alias("entry"),
        pl.when((u_opt >= _OPTIONAL_EMPTY) & (u_opt < 2 * _OPTIONAL_EMPTY))
        .then(-1)
        .otherwise(pl.col("device"))
        .alias("device"),
    ]


def _finish(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(pl.col(c).cast(pl.Int64) for c in _ROW_COLUMNS)


def _legit_rows(rng: _Rng, pop: _Population, n: int, cfg: _DayConfig) -> pl.DataFrame:
    """Ordinary cardholder behaviour: daily cycle, mostly domestic, known devices."""
    frame = pl.DataFrame(
        {
            "u_card": rng.uniform(n),
            "u_cat": rng.uniform(n),
            "u_new": rng.uniform(n),
            "u_online": rng.uniform(n),
            "u_foreign": rng.uniform(n),
            "u_fc": rng.uniform(n),
            "u_merchant": rng.uniform(n),
            "z_amount": rng.normal(n),
            "u_hour": rng.uniform(n),
            "u_sec": rng.uniform53(n),
            "u_dev": rng.uniform(n),
            "u_newdev": rng.uniform(n),
            "new_id": rng.below(_DEVICE_SPACE, n),
            "u_entry": rng.uniform(n),
            "u_opt": rng.uniform(n),
        }
    )
    c = pl.col
    cat = _pick(cfg.category_cdf, c("u_cat"))
    if cfg.new_categories:
        new_cat = _CAT[NEW_CATEGORIES[0]] + (c("u_new") / _NEW_CATEGORY_SHARE * 2).floor()
        cat = pl.when(c("u_new") < _NEW_CATEGORY_SHARE).then(new_cat).otherwise(cat)
    frame = frame.with_columns(card=_pick(pop.card_cdf, c("u_card")), cat=cat.cast(pl.Int64))
    frame = frame.with_columns(
        channel=pl.when(c("cat") == _CAT["cash_withdrawal"])
        .then(_ATM)
        .when(c("u_online") < _lut(_ONLINE_P, c("cat")))
        .then(_ONLINE)
        .otherwise(_POS)
        .cast(pl.Int64),
        home=_lut(pop.card_country, c("card")),
        spend=_lut(pop.card_spend, c("card")),
        n_devices=_lut(pop.card_n_devices, c("card")),
    )
    foreign_p = (
        pl.when((c("cat") == _CAT["travel"]) & (c("channel") != _ONLINE))
        .then(_TRAVEL_FOREIGN)
        .otherwise(_lut(_FOREIGN, c("channel")))
    )
    frame = frame.with_columns(
        country=pl.when(c("u_foreign") < foreign_p)
        .then(_other_country(c("home"), c("u_fc")))
        .otherwise(c("home")),
    )
    log_amount = (
        _lut(_LOG_MEDIAN, c("cat"))
        + c("spend")
        + _lut(_SIGMA, c("cat")) * c("z_amount")
        + math.log(cfg.amount_scale)
    )
    online = c("channel") == _ONLINE
    known_slot = pl.when(online).then((c("u_dev") * c("n_devices")).floor()).otherwise(0)
    flat = c("card") * _DEVICES_PER_CARD + known_slot.cast(pl.Int64)
    is_new = online & (c("u_newdev") < _NEW_DEVICE_LEGIT)
    new_type = _MOBILE + (c("u_newdev") / _NEW_DEVICE_LEGIT * 2).floor().cast(pl.Int64)
    entry = (
        pl.when(c("channel") == _POS)
        .then(_pick(_POS_ENTRY_CDF, c("u_entry")))
        .when(c("channel") == _ATM)
        .then(pl.when(c("u_entry") < 0.92).then(_CHIP).otherwise(_SWIPE))
        .otherwise(pl.when(c("u_entry") < 0.96).then(_ECOMMERCE).otherwise(_MANUAL))
    )
    frame = frame.with_columns(
        merchant=_pick_merchant(pop, c("country"), c("cat"), c("u_merchant")),
        cents=_amount_cents(c("cat"), log_amount),
        t=_pick(_LEGIT_HOUR_CDF, c("u_hour")) * _HOUR_US + (c("u_sec") * _HOUR_US).floor(),
        device=pl.when(is_new).then(c("new_id")).otherwise(_lut(pop.device_id, flat)),
        dtype=pl.when(c("channel") == _POS)
        .then(_TERMINAL)
        .when(c("channel") == _ATM)
        .then(_ATM_DEVICE)
        .when(is_new)
        .then(new_type)
        .otherwise(_lut(pop.device_type, flat)),
        entry=entry,
    )
    return _finish(frame.with_columns(_optional_empties(c("u_opt"))))


def _fraud_rows(rng: _Rng, pop: _Population, n: int, cfg: _DayConfig) -> pl.DataFrame:
    """Fraud in bursts on compromised cards; the pattern depends on concept drift."""
    c = pl.col
    n_bursts = n // 2 + 1
    mix = _FRAUD_MIX_CONCEPT if cfg.concept else _FRAUD_MIX
    bursts = pl.DataFrame(
        {
            "u_kind": rng.uniform(n_bursts),
            "u_size": rng.uniform(n_bursts),
            "card": rng.below(pop.n_cards, n_bursts),
            "u_foreign": rng.uniform(n_bursts),
            "u_fc": rng.uniform(n_bursts),
            "u_atm": rng.uniform(n_bursts),
            "u_hour": rng.uniform(n_bursts),
            "u_sec": rng.uniform53(n_bursts),
            "u_newdev": rng.uniform(n_bursts),
            "new_id": rng.below(_DEVICE_SPACE, n_bursts),
            "u_dtype": rng.uniform(n_bursts),
        }
    )
    kind = c("kind")
    bursts = bursts.with_columns(kind=_pick(_cdf(mix), c("u_kind")))
    bursts = bursts.with_columns(
        size=_lut(_int_series(_BURST_MIN), kind)
        + (
            c("u_size")
            * (_lut(_int_series(_BURST_MAX), kind) - _lut(_int_series(_BURST_MIN), kind) + 1)
        )
        .floor()
        .cast(pl.Int64),
    )
    # Keep just enough bursts for exactly n fraud transactions; the last one may be cut short.
    before = bursts["size"].cum_sum() - bursts["size"]
    bursts = bursts.filter(before < n).with_columns(
        size=pl.min_horizontal(c("size"), n - (c("size").cum_sum() - c("size")))
    )
    hour = (
        pl.when(kind == _CNP_FRAUD)
        .then(_pick(_CNP_HOUR_CDF, c("u_hour")))
        .when(kind == _SKIMMING)
        .then(_pick(_SKIM_HOUR_CDF, c("u_hour")))
        .otherwise(_pick(_TESTING_HOUR_CDF, c("u_hour")))
    )
    span = c("size") * _lut(_int_series(_GAP_MAX_US), kind)
    home = _lut(pop.card_country, c("card"))
    bursts = bursts.with_columns(
        home=home,
        country=pl.when(c("u_foreign") < _lut(_float_series(_FRAUD_FOREIGN), kind))
        .then(_other_country(home, c("u_fc")))
        .otherwise(home),
        channel=pl.when(kind == _CNP_FRAUD)
        .then(_ONLINE)
        .when((kind == _SKIMMING) & (c("u_atm") < _FRAUD_ATM_SHARE))
        .then(_ATM)
        .otherwise(_POS)
        .cast(pl.Int64),
        # Whole burst must stay inside the day.
        start=pl.min_horizontal(
            hour * _HOUR_US + (c("u_sec") * _HOUR_US).floor().cast(pl.Int64),
            _DAY_US - 1 - span,
        ),
        is_new=c("u_newdev") < _lut(_float_series(_FRAUD_NEW_DEVICE), kind),
        new_type=_MOBILE + (c("u_dtype") * 2).floor().cast(pl.Int64),
        spend=_lut(pop.card_spend, c("card")),
        n_devices=_lut(pop.card_n_devices, c("card")),
    )

    sizes = bursts["size"].to_list()
    burst_of_tx = [b for b, size in enumerate(sizes) for _ in range(size)]
    tx = bursts[burst_of_tx].with_columns(burst=_int_series(burst_of_tx))
    m = tx.height
    tx = tx.with_columns(
        u_gap=rng.uniform(m),
        u_cat=rng.uniform(m),
        u_merchant=rng.uniform(m),
        z_amount=rng.normal(m),
        u_amount=rng.uniform(m),
        u_entry=rng.uniform(m),
        u_dev=rng.uniform(m),
        u_opt=rng.uniform(m),
    )
    gap_min = _lut(_int_series(_GAP_MIN_US), kind)
    gap = gap_min + (c("u_gap") * (_lut(_int_series(_GAP_MAX_US), kind) - gap_min)).floor()
    cat = (
        pl.when(kind == _CNP_FRAUD)
        .then(_lut(_CNP_CAT_CODES, _pick(_cdf(_CNP_CATEGORY_WEIGHTS), c("u_cat"))))
        .when(c("channel") == _ATM)
        .then(_CAT["cash_withdrawal"])
        .when(kind == _SKIMMING)
        .then(_lut(_SKIM_CAT_CODES, _pick(_cdf(_SKIM_CATEGORY_WEIGHTS), c("u_cat"))))
        .otherwise(_lut(_TESTING_CAT_CODES, _pick(_cdf(_TESTING_CATEGORY_WEIGHTS), c("u_cat"))))
    )
    tx = tx.with_columns(gap=gap.cast(pl.Int64), cat=cat.cast(pl.Int64))
    high = (
        _lut(_LOG_MEDIAN, c("cat"))
        + c("spend")
        + _FRAUD_AMOUNT_LIFT
        + 0.5 * c("z_amount")
        + math.log(cfg.amount_scale)
    )
    slot = pl.when(kind == _CNP_FRAUD).then((c("u_dev") * c("n_devices")).floor()).otherwise(0)
    flat = c("card") * _DEVICES_PER_CARD + slot.cast(pl.Int64)
    tx = tx.with_columns(
        t=c("start") + (c("gap").cum_sum() - c("gap")).over("burst"),
        merchant=_pick_merchant(pop, c("country"), c("cat"), c("u_merchant")),
        cents=pl.when(kind == _CARD_TESTING)
        .then(100 + (c("u_amount") * 1401).floor().cast(pl.Int64))
        .when(c("channel") == _ATM)
        .then((10 + (c("u_amount") * 40).floor().cast(pl.Int64)) * 2000)
        .otherwise(_amount_cents(c("cat"), high)),
        entry=pl.when(kind == _CNP_FRAUD)
        .then(pl.when(c("u_entry") < 0.85).then(_ECOMMERCE).otherwise(_MANUAL))
        .when(kind == _SKIMMING)
        .then(pl.when(c("u_entry") < 0.85).then(_SWIPE).otherwise(_CHIP))
        .otherwise(_CONTACTLESS),
        device=pl.when(c("is_new")).then(c("new_id")).otherwise(_lut(pop.device_id, flat)),
        dtype=pl.when(c("channel") == _POS)
        .then(_TERMINAL)
        .when(c("channel") == _ATM)
        .then(_ATM_DEVICE)
        .when(c("is_new"))
        .then(c("new_type"))
        .otherwise(_lut(pop.device_type, flat)),
    )
    return _finish(tx.with_columns(_optional_empties(c("u_opt")))).with_columns(tx["burst"])


@functools.lru_cache(maxsize=64)
def _special_rows(scenario: Scenario, day_index: int) -> pl.DataFrame:
    """The day's fraud and disputed transactions with their chargeback timing.

    They come first in generation order and from their own stream, so labels for any day can
    be derived without regenerating the bulk of earlier days.
    """
    rng = _Rng(scenario.seed, "special", day_index)
    pop = _population_of(scenario)
    cfg = _day_config(scenario, day_index)
    n = scenario.transactions_per_day
    n_fraud = min(n, _binomial(rng.py, n, scenario.fraud_rate))
    n_dispute = min(n - n_fraud, _binomial(rng.py, n, _DISPUTE_RATE))
    fraud = _fraud_rows(rng, pop, n_fraud, cfg).with_columns(is_fraud=pl.lit(True))
    disputes = _legit_rows(rng, pop, n_dispute, cfg).with_columns(
        burst=pl.lit(-1, dtype=pl.Int64), is_fraud=pl.lit(False)
    )
    rows = pl.concat([fraud, disputes])
    rows = rows.with_columns(fresh=_fresh_fraud_cards(scenario, day_index, rows["burst"]))
    total = rows.height
    lo, hi = scenario.label_delay_days
    rows = rows.with_columns(
        u_delay=rng.uniform(total), u_report=rng.uniform(total), u_reason=rng.uniform(total)
    )
    c = pl.col
    # Fraud chargebacks cluster early in the window; disputes spread evenly.
    fraud_delay = lo + ((hi - lo + 1) * c("u_delay").pow(1.7)).floor()
    dispute_delay = lo + ((hi - lo + 1) * c("u_delay")).floor()
    return rows.with_columns(
        delay=pl.when(c("is_fraud"))
        .then(fraud_delay)
        .otherwise(dispute_delay)
        .cast(pl.Int64)
        .clip(lo, hi),
        report_t=(8 * _HOUR_US + (c("u_report") * 12 * _HOUR_US).floor()).cast(pl.Int64),
        reason=pl.when(c("is_fraud"))
        .then(pl.when(c("channel") == _ONLINE).then(0).otherwise(1))
        .otherwise(pl.when(c("u_reason") < 0.6).then(2).otherwise(3))
        .cast(pl.Int64),
    ).drop("u_delay", "u_report", "u_reason", "burst")


# --------------------------------------------------------------------------------------------
# New cards: cards never seen before, drawn from their own streams
# --------------------------------------------------------------------------------------------
#
# A new card belongs to one of the population's cardholders (its country, spend and devices are
# that cardholder's) but prints a card number no earlier day used: day d's new cards are
# numbered from n_cards + d * (new cards per day). Choosing them from streams of their own
# leaves every other draw of the day as it was. Rows carry the number in `fresh` (-1 for the
# population's own card number).


def _fresh_base(scenario: Scenario, day_index: int) -> int:
    """The first card number of the day's new cards."""
    return scenario.n_cards + day_index * sum(scenario.new_cards_per_day)


def _card_width(scenario: Scenario) -> int:
    """Digits of the printed card numbers (six, more once new cards need them)."""
    return _id_width(_fresh_base(scenario, scenario.days), 6)


def _fresh_fraud_cards(scenario: Scenario, day_index: int, burst: pl.Series) -> pl.Series:
    """Card numbers of the special rows: new cards for the fraud bursts moved to them.

    Args:
        scenario: The simulation settings.
        day_index: The day.
        burst: Burst index (0, 1, ...) of each special row, -1 for disputes.

    Returns:
        One value per special row: the new card's number, or -1.
    """
    n_ordinary, n_fraud_cards = scenario.new_cards_per_day
    last = burst.max() if burst.len() else None
    n_bursts = 0 if last is None else int(last) + 1  # type: ignore[arg-type]
    r = _Rng(scenario.seed, "new-card-fraud", day_index).py
    moved = sorted(r.sample(range(n_bursts), min(n_fraud_cards, n_bursts)))
    base = _fresh_base(scenario, day_index) + n_ordinary
    number = dict(zip(moved, range(base, base + len(moved)), strict=True))
    return burst.replace_strict(number, default=-1, return_dtype=pl.Int64)


def _issued() -> pl.Expr:
    """The printed card number: the new card's, else the population card's."""
    return pl.when(pl.col("fresh") >= 0).then(pl.col("fresh")).otherwise(pl.col("card"))


# --------------------------------------------------------------------------------------------
# The day table: every event of a day plus the dirt plan
# --------------------------------------------------------------------------------------------


def _n_resent(scenario: Scenario, n_special: int) -> int:
    """Valid lines of a day that are re-sent verbatim in the next day's file."""
    n = scenario.transactions_per_day
    return min(round(scenario.dirty.duplicate_rate * n) // 2, n - n_special)


@functools.lru_cache(maxsize=8)
def _resent_rows(scenario: Scenario, day_index: int) -> pl.DataFrame:
    """Ordinary transactions of a day that the next day's file repeats, with their ids.

    They have their own stream and a fixed place in generation order (right after the
    special rows), so the next day can reproduce their lines without regenerating this day.
    """
    n_special = _special_rows(scenario, day_index).height
    m = _n_resent(scenario, n_special)
    rng = _Rng(scenario.seed, "resent", day_index)
    rows = _legit_rows(rng, _population_of(scenario), m, _day_config(scenario, day_index))
    return rows.with_columns(
        fresh=pl.lit(-1, dtype=pl.Int64),
        h=_tx_hash(pl.int_range(n_special, n_special + m), _id_key(scenario.seed, day_index)),
        # Arrival in the next day's file: during its first six hours.
        next_arrival=rng.below(6 * _HOUR_US, m),
    )


@dataclass(frozen=True)
class _DayTable:
    rows: pl.DataFrame  # generation order, with columns h (id hash) and arrival
    n_fraud: int
    malformed: list[int]
    malformed_variant: list[int]
    malformed_u: list[float]
    wrong_type: list[int]
    wrong_type_field: list[int]
    wrong_type_value: list[int]
    missing_field: list[int]
    missing_field_column: list[int]
    late: list[int]
    dup_same: list[int]
    dup_same_arrival: list[int]


def _id_key(seed: int, day_index: int) -> int:
    # Per-day keys keep the numeric parts unrelated across days; the date prefix keeps ids unique.
    return _derive_seed(seed, "transaction-ids", day_index) & _ID_MASK


@functools.lru_cache(maxsize=1)
def _day_table(scenario: Scenario, day_index: int) -> _DayTable:
    """Every event of a day in generation order (fraud and disputes, re-sent, ordinary)."""
    n = scenario.transactions_per_day
    special = _special_rows(scenario, day_index)
    resent = _resent_rows(scenario, day_index)
    n_fixed = special.height + resent.height
    legit = _legit_rows(
        _Rng(scenario.seed, "legit", day_index),
        _population_of(scenario),
        n - n_fixed,
        _day_config(scenario, day_index),
    )
    rows = pl.concat(
        [
            special.select(*_ROW_COLUMNS, "fresh"),
            resent.select(*_ROW_COLUMNS, "fresh"),
            legit.with_columns(fresh=pl.lit(-1, dtype=pl.Int64)),
        ]
    )
    rows = rows.with_columns(h=_tx_hash(pl.int_range(pl.len()), _id_key(scenario.seed, day_index)))

    # Dirt only touches ordinary rows, so fraud and disputes always reach the lake intact.
    dirty = scenario.dirty
    r = _Rng(scenario.seed, "dirt", day_index).py
    n_mal, n_wrong, n_missing, n_late, n_dup = (
        round(rate * n)
        for rate in (
            dirty.malformed_rate,
            dirty.wrong_type_rate,
            dirty.missing_field_rate,
            dirty.late_event_rate,
            dirty.duplicate_rate,
        )
    )
    sizes = [n_mal, n_wrong, n_missing, n_late, n_dup - n_dup // 2]
    n_plain = n - n_fixed
    if sum(sizes) > n_plain:
        raise ValueError("dirty-data rates need more ordinary transactions than the day has")
    picked = [n_fixed + i for i in r.sample(range(n_plain), sum(sizes))]
    picked_all = list(picked)
    groups: list[list[int]] = []
    for size in sizes:
        groups.append(sorted(picked[:size]))
        picked = picked[size:]
    mal, wrong, missing, late, dup_same = groups

    # New cards take ordinary rows that carry no dirt (so each lands in the lake, on time, once),
    # chosen by a stream of their own; each row is its new card's first transaction.
    n_new, _ = scenario.new_cards_per_day
    untouched = sorted(set(range(n_fixed, n)) - set(picked_all))
    if n_new > len(untouched):
        raise ValueError(
            f"new_card_rate {scenario.new_card_rate} needs {n_new} ordinary transactions a day "
            f"without dirt, the day has {len(untouched)}"
        )
    new_rows = sorted(_Rng(scenario.seed, "new-cards", day_index).py.sample(untouched, n_new))
    if new_rows:
        base = _fresh_base(scenario, day_index)
        fresh = rows["fresh"].clone().scatter(new_rows, list(range(base, base + n_new)))
        rows = rows.with_columns(fresh=fresh)

    n_invalid = math.ceil(n_mal / 10)
    malformed_variant = [_INVALID_UTF8] * n_invalid + [r.randrange(3) for _ in mal[n_invalid:]]
    malformed_u = [r.random() for _ in mal]
    wrong_field = [r.randrange(2) for _ in wrong]
    wrong_value = [r.randrange(len(_AMOUNT_JUNK) * len(_TIME_JUNK)) for _ in wrong]
    missing_col = [r.randrange(len(REQUIRED_COLUMNS)) for _ in missing]
    t = rows["t"]
    late_values = [v - r.randint(1, _MAX_LATE_DAYS) * _DAY_US for v in t.gather(late).to_list()]
    late_arrival = [r.randrange(_DAY_US) for _ in late]
    # Series.scatter works in place, hence the clones.
    arrival = t.clone().scatter(late, late_arrival) if late else t
    t = t.clone().scatter(late, late_values) if late else t
    # Re-sent copies arrive a little after the original, clipped to the end of the day.
    dup_same_arrival = [
        min(_DAY_US - 1, a + r.randrange(1_000_000, _HOUR_US))
        for a in arrival.gather(dup_same).to_list()
    ]
    rows = rows.with_columns(t=t, arrival=arrival)
    return _DayTable(
        rows=rows,
        n_fraud=int(special["is_fraud"].sum()),
        malformed=mal,
        malformed_variant=malformed_variant,
        malformed_u=malformed_u,
        wrong_type=wrong,
        wrong_type_field=wrong_field,
        wrong_type_value=wrong_value,
        missing_field=missing,
        missing_field_column=missing_col,
        late=late,
        dup_same=dup_same,
        dup_same_arrival=dup_same_arrival,
    )


# --------------------------------------------------------------------------------------------
# Text formatting
# --------------------------------------------------------------------------------------------

_CATEGORY_NAMES = _str_series(CATEGORIES)
_COUNTRY_NAMES = _str_series(COUNTRIES)
_CURRENCY_NAMES = _str_series(CURRENCIES)
_CHANNEL_NAMES = _str_series(CHANNELS)
_ENTRY_NAMES = _str_series(ENTRY_MODES)
_DEVICE_TYPE_NAMES = _str_series(DEVICE_TYPES)
_REASON_NAMES = _str_series(CHARGEBACK_REASONS)
_AMOUNT_POS = TRANSACTION_COLUMNS.index("amount")
_TIME_POS = TRANSACTION_COLUMNS.index("event_time")
_REQUIRED_POS = tuple(TRANSACTION_COLUMNS.index(name) for name in REQUIRED_COLUMNS)


def _epoch_us(date: datetime.date) -> int:
    return (date - _EPOCH).days * _DAY_US


def _id_width(n: int, minimum: int) -> int:
    return max(minimum, len(str(max(n - 1, 0))))


def _digits(value: pl.Expr, width: int) -> pl.Expr:
    """Zero-padded decimal of a non-negative value below 10**width (faster than zfill)."""
    return (value + 10**width).cast(pl.String).str.slice(1)


def _padded(prefix: str, value: pl.Expr, width: int) -> pl.Expr:
    return pl.concat_str([pl.lit(prefix), _digits(value, width)])


def _tx_id(date: datetime.date) -> pl.Expr:
    return _padded(f"tx_{date:%Y%m%d}_", pl.col("h"), 13)


def _timestamp(offset_us: pl.Expr, date: datetime.date) -> pl.Expr:
    """ISO-8601 UTC text of a microsecond offset from ``date``'s midnight.

    Offsets lie within the day or up to _MAX_LATE_DAYS before it. Assembling the text from
    integer parts is several times faster than ``strftime``.
    """
    day = offset_us.floordiv(_DAY_US)
    in_day = offset_us - day * _DAY_US
    dates = _str_series(
        [(date + datetime.timedelta(days=k)).isoformat() for k in range(-_MAX_LATE_DAYS, 1)]
    )
    return pl.concat_str(
        [
            _lut(dates, day + _MAX_LATE_DAYS),
            pl.lit("T"),
            _digits(in_day // _HOUR_US, 2),
            pl.lit(":"),
            _digits(in_day // 60_000_000 % 60, 2),
            pl.lit(":"),
            _digits(in_day // 1_000_000 % 60, 2),
            pl.lit("."),
            _digits(in_day % 1_000_000, 6),
            pl.lit("Z"),
        ]
    )


def _format_lines(
    pop: _Population,
    rows: pl.DataFrame,
    date: datetime.date,
    with_terminal: bool,
    card_width: int,
) -> pl.Series:
    """Render rows as CSV lines (no quoting: no generated value contains a comma)."""
    c = pl.col
    merchant_width = _id_width(pop.n_merchants, 5)
    country = _lut(pop.merchant_country, c("merchant"))
    cents = c("cents")
    fields = [
        _tx_id(date),
        _timestamp(c("t"), date),
        _padded("card_", _issued(), card_width),
        _padded("m_", c("merchant"), merchant_width),
        _lut(_CATEGORY_NAMES, _lut(pop.merchant_category, c("merchant"))),
        pl.concat_str(
            [
                (cents // 100).cast(pl.String),
                pl.lit("."),
                (cents % 100).cast(pl.String).str.zfill(2),
            ]
        ),
        _lut(_CURRENCY_NAMES, country),
        _lut(_COUNTRY_NAMES, country),
        _lut(_COUNTRY_NAMES, _lut(pop.card_country, c("card"))),
        _lut(_CHANNEL_NAMES, c("channel")),
        pl.when(c("entry") < 0)
        .then(pl.lit(""))
        .otherwise(_lut(_ENTRY_NAMES, c("entry").clip(0, None))),
        _lut(_DEVICE_TYPE_NAMES, c("dtype")),
        pl.when(c("device") < 0).then(pl.lit("")).otherwise(_padded("dev_", c("device"), 13)),
    ]
    if with_terminal:
        terminal = pl.concat_str(
            [
                _padded("t_", c("merchant"), merchant_width),
                pl.lit("_"),
                (c("h") % 4).cast(pl.String),
            ]
        )
        fields.append(pl.when(c("channel") == _ONLINE).then(pl.lit("")).otherwise(terminal))
    return rows.select(pl.concat_str(fields, separator=",").alias("line")).to_series()


def _malformed_line(line: str, variant: int, u: float, n_fields: int) -> str:
    """Corrupt a line so its field count differs from the header's (or it is not UTF-8)."""
    if variant == _INVALID_UTF8:
        # Also cut short, so even a lenient decoder sees the wrong field count.
        keep = 3 + int(u * (n_fields - 4))
        return ",".join(line.split(",")[:keep]) + "caf" + _BAD_MARK.decode()
    if variant == _TRUNCATED:
        # Cut somewhere after the transaction id and before the last separator.
        first, last = line.index(","), line.rindex(",")
        return line[: first + 1 + int(u * (last - first))]
    if variant == _EXTRA_FIELDS:
        return line + (",overflow" if u < 0.5 else ",0x1f,garbage")
    tx_id = line[: line.index(",")]
    return _JUNK_LINES[int(u * len(_JUNK_LINES))].format(tx_id)


def _wrong_type_line(line: str, which: int, value: int) -> str:
    fields = line.split(",")
    if which == 0:
        fields[_AMOUNT_POS] = _AMOUNT_JUNK[value % len(_AMOUNT_JUNK)]
    else:
        fields[_TIME_POS] = _TIME_JUNK[value % len(_TIME_JUNK)]
    return ",".join(fields)


def _missing_field_line(line: str, column: int) -> str:
    fields = line.split(",")
    fields[_REQUIRED_POS[column]] = ""
    return ",".join(fields)


def _file_bytes(header: str, lines: pl.Series) -> bytes:
    # The CSV writer with quoting off is the fastest way to join a million lines into bytes.
    out = io.BytesIO()
    out.write((header + "\n").encode())
    pl.DataFrame({"line": lines}).write_csv(
        out, include_header=False, quote_style="never", line_terminator="\n"
    )
    blob = out.getvalue()
    return blob.replace(_BAD_MARK, _BAD_BYTE) if _BAD_MARK in blob else blob


def _split_parts(header: str, lines: pl.Series, parts: int) -> tuple[bytes, ...]:
    base, extra = divmod(lines.len(), parts)
    out, start = [], 0
    for part in range(parts):
        size = base + (1 if part < extra else 0)
        out.append(_file_bytes(header, lines.slice(start, size)))
        start += size
    return tuple(out)


def _label_file(scenario: Scenario, day_index: int) -> tuple[bytes, int, int]:
    """Chargebacks reported on this day, for transactions of earlier simulated days."""
    lo, hi = scenario.label_delay_days
    card_width = _card_width(scenario)
    pieces = []
    for origin in range(max(0, day_index - hi), day_index - lo + 1):
        due = (
            _special_rows(scenario, origin)
            .with_row_index("index")
            .filter(pl.col("delay") == day_index - origin)
        )
        if due.height:
            pieces.append(
                due.with_columns(
                    h=_tx_hash(pl.col("index"), _id_key(scenario.seed, origin))
                ).select(
                    tx=_tx_id(scenario.date_of(origin)),
                    card=_issued(),
                    report_t=pl.col("report_t"),
                    reason=pl.col("reason"),
                    is_fraud=pl.col("is_fraud"),
                )
            )
    header = ",".join(LABEL_COLUMNS)
    if not pieces:
        return (header + "\n").encode(), 0, 0
    labels = pl.concat(pieces).sort(["report_t", "tx"])
    c = pl.col
    lines = labels.select(
        pl.concat_str(
            [
                c("tx"),
                _padded("card_", c("card"), card_width),
                _timestamp(c("report_t"), scenario.date_of(day_index)),
                _lut(_REASON_NAMES, c("reason")),
                c("is_fraud").cast(pl.Int8).cast(pl.String),
            ],
            separator=",",
        )
    ).to_series()
    return _file_bytes(header, lines), labels.height, int(labels["is_fraud"].sum())


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayBatch:
    """One day of landing data as it will be written, plus the ground truth of injected dirt.

    Attributes:
        day_index: 0-based day index within the scenario.
        date: Calendar date of the day (the files' partition date).
        transaction_header: Header line of the transaction files (without newline).
        transaction_files: Complete content of each transaction part file, in part order.
        label_file: Complete content of the day's single labels file.
        transaction_events: Distinct transaction events generated for the day.
        transaction_lines: Transaction lines over all parts, header excluded.
        label_lines: Label lines, header excluded.
        fraud_count: Fraudulent transactions among the day's events.
        label_fraud: Label lines with ``is_fraud=1``.
        malformed: Lines with a wrong field count or invalid UTF-8.
        invalid_utf8: The part of ``malformed`` that is not valid UTF-8.
        wrong_type: Well-formed lines with an unparseable amount or event_time.
        missing_field: Well-formed lines with an empty required field.
        duplicate_same_day: Verbatim re-sends of this day's valid lines.
        duplicate_next_day: Verbatim re-sends of the previous day's valid lines.
        late_events: Valid lines whose event_time is 1-3 days before ``date``.
        added_column: Whether the ``terminal_id`` column is present.
        transaction_ids_malformed: Ids of the events whose line was made malformed.
        transaction_ids_wrong_type: Ids of the events whose line got a wrong-type value.
        transaction_ids_missing_field: Ids of the events whose line lost a required field.
        fraud_transaction_ids: Ids of the day's fraudulent transactions.
        new_cards: Cards never seen before that transact this day (issued this day).
        new_card_fraud: The part of ``new_cards`` whose first transactions are a fraud burst.
        new_card_transactions: Transaction events made with the day's new cards.
        new_card_fraud_transactions: The fraudulent part of ``new_card_transactions``.
        new_card_ids: The new cards' ids in generation order (those of fraud bursts first).
    """

    day_index: int
    date: datetime.date
    transaction_header: str
    transaction_files: tuple[bytes, ...] = field(repr=False)
    label_file: bytes = field(repr=False)
    transaction_events: int
    transaction_lines: int
    label_lines: int
    fraud_count: int
    label_fraud: int
    malformed: int
    invalid_utf8: int
    wrong_type: int
    missing_field: int
    duplicate_same_day: int
    duplicate_next_day: int
    late_events: int
    added_column: bool
    transaction_ids_malformed: tuple[str, ...] = field(repr=False)
    transaction_ids_wrong_type: tuple[str, ...] = field(repr=False)
    transaction_ids_missing_field: tuple[str, ...] = field(repr=False)
    fraud_transaction_ids: tuple[str, ...] = field(repr=False)
    new_cards: int
    new_card_fraud: int
    new_card_transactions: int
    new_card_fraud_transactions: int
    new_card_ids: tuple[str, ...] = field(repr=False)

    @property
    def quarantined(self) -> int:
        """Lines an ingestion must reject: malformed + wrong_type + missing_field."""
        return self.malformed + self.wrong_type + self.missing_field

    @property
    def valid_transactions(self) -> int:
        """Distinct valid transaction ids that originate from this day."""
        return self.transaction_events - self.quarantined

    def transaction_records(self) -> list[bytes]:
        """All transaction lines of all parts, headers and newlines removed."""
        return [line for blob in self.transaction_files for line in blob.split(b"\n")[1:-1]]

    def label_records(self) -> list[bytes]:
        """All label lines, header and newlines removed."""
        return self.label_file.split(b"\n")[1:-1]


def clear_caches() -> None:
    """Drop memoised populations and days (frees memory; results are unaffected)."""
    _population.cache_clear()
    _special_rows.cache_clear()
    _resent_rows.cache_clear()
    _day_table.cache_clear()


def transaction_columns(scenario: Scenario, day_index: int) -> tuple[str, ...]:
    """Transaction file columns on a given day (``terminal_id`` appended once added)."""
    extra = (ADDED_COLUMN,) if scenario.dirty.added_column_on(day_index) else ()
    return TRANSACTION_COLUMNS + extra


def generate_day(scenario: Scenario, day_index: int) -> DayBatch:
    """Generate one day of transaction and label files in memory (no I/O).

    The result depends only on ``scenario`` and ``day_index``: each day has its own random
    streams, and next-day duplicates are re-derived from the previous day's streams.

    Args:
        scenario: The simulation settings.
        day_index: 0-based day index, below ``scenario.days``.

    Returns:
        The day's file contents and the exact counts of injected dirt.

    Raises:
        ValueError: If ``day_index`` is outside the scenario.
    """
    if not 0 <= day_index < scenario.days:
        raise ValueError(f"day_index {day_index} outside 0..{scenario.days - 1}")
    pop = _population_of(scenario)
    table = _day_table(scenario, day_index)
    date = scenario.date_of(day_index)
    columns = transaction_columns(scenario, day_index)
    with_terminal = len(columns) > len(TRANSACTION_COLUMNS)
    card_width = _card_width(scenario)
    lines = _format_lines(pop, table.rows, date, with_terminal, card_width)

    dirty_index = table.malformed + table.wrong_type + table.missing_field
    originals = lines.gather(dirty_index).to_list()
    n_mal, n_wrong = len(table.malformed), len(table.wrong_type)
    replaced = [
        _malformed_line(line, variant, u, len(columns))
        for line, variant, u in zip(
            originals[:n_mal], table.malformed_variant, table.malformed_u, strict=True
        )
    ]
    replaced += [
        _wrong_type_line(line, f, v)
        for line, f, v in zip(
            originals[n_mal : n_mal + n_wrong],
            table.wrong_type_field,
            table.wrong_type_value,
            strict=True,
        )
    ]
    replaced += [
        _missing_field_line(line, col)
        for line, col in zip(originals[n_mal + n_wrong :], table.missing_field_column, strict=True)
    ]
    if dirty_index:
        lines = lines.scatter(dirty_index, replaced)
    dirty_ids = [line[: line.index(",")] for line in originals]

    extra_lines = [lines.gather(table.dup_same)]
    extra_arrival = list(table.dup_same_arrival)
    n_next = 0
    # A re-sent line must stay byte-identical, so none cross the day the schema changes.
    if day_index > 0 and transaction_columns(scenario, day_index - 1) == columns:
        resent = _resent_rows(scenario, day_index - 1)
        prev_date = scenario.date_of(day_index - 1)
        extra_lines.append(_format_lines(pop, resent, prev_date, with_terminal, card_width))
        extra_arrival += resent["next_arrival"].to_list()
        n_next = resent.height
    all_lines = pl.concat([lines, *extra_lines])
    # Files are in arrival order: late events and re-sends land between on-time events.
    ordered = (
        pl.DataFrame(
            {
                "line": all_lines,
                "arrival": pl.concat(
                    [table.rows["arrival"], pl.Series(extra_arrival, dtype=pl.Int64)]
                ),
            }
        )
        .with_row_index("seq")
        .sort(["arrival", "seq"])["line"]
    )
    header = ",".join(columns)
    label_blob, n_labels, n_label_fraud = _label_file(scenario, day_index)
    fraud_ids = table.rows.head(table.n_fraud).select(_tx_id(date)).to_series().to_list()
    fresh = table.rows.with_row_index("index").filter(pl.col("fresh") >= 0)
    new_card_ids = (
        fresh.select(_padded("card_", pl.col("fresh"), card_width))
        .unique(maintain_order=True)
        .to_series()
        .to_list()
    )
    new_card_fraud = fresh.filter(pl.col("index") < table.n_fraud)["fresh"].n_unique()
    return DayBatch(
        day_index=day_index,
        date=date,
        transaction_header=header,
        transaction_files=_split_parts(header, ordered, scenario.files_per_day),
        label_file=label_blob,
        transaction_events=table.rows.height,
        transaction_lines=all_lines.len(),
        label_lines=n_labels,
        fraud_count=table.n_fraud,
        label_fraud=n_label_fraud,
        malformed=n_mal,
        invalid_utf8=sum(v == _INVALID_UTF8 for v in table.malformed_variant),
        wrong_type=n_wrong,
        missing_field=len(table.missing_field),
        duplicate_same_day=len(table.dup_same),
        duplicate_next_day=n_next,
        late_events=len(table.late),
        added_column=with_terminal,
        transaction_ids_malformed=tuple(dirty_ids[:n_mal]),
        transaction_ids_wrong_type=tuple(dirty_ids[n_mal : n_mal + n_wrong]),
        transaction_ids_missing_field=tuple(dirty_ids[n_mal + n_wrong :]),
        fraud_transaction_ids=tuple(fraud_ids),
        new_cards=len(new_card_ids),
        new_card_fraud=new_card_fraud,
        new_card_transactions=fresh.height,
        new_card_fraud_transactions=int((fresh["index"] < table.n_fraud).sum()),
        new_card_ids=tuple(new_card_ids),
    )
