"""The simulated world the transaction generator draws from: merchants, accounts and their habits.

Fraud is only detectable because it breaks habits: an unseen device, a foreign country, an amount many
times the usual, a merchant the account never visits. So the world gives every account stable habits
(home country and currency, a few usual merchants, one to three devices, a personal amount
distribution, an activity level and a preferred time of day), and the generator draws legitimate
behaviour from them. Built once and deterministically from a seed, the same world backs the Parquet
history and the live stream, so what a model learns offline means the same thing online.

Conventions the generator follows:

- A transaction's `country` is where the payment was made: the merchant's country for card-present
  payments, the buyer's (geolocated) country for e-commerce.
- Amounts are in the account's currency. A legitimate amount is `exp(mu + sigma * z) * category scale`
  with the account's `(mu, sigma)`; `mu` includes the log of the currency's units per euro, the
  category scale is the category's median amount in euros.
- Hours of the day are those of the stream's clock (UTC); the daily rhythm is the platform's, not
  per-country.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate

import numpy as np

MERCHANTS_DEFAULT = 2_000
ACCOUNTS_DEFAULT = 20_000
TYPICAL_AMOUNT_EUR = 30.0
"""The scale of an 'ordinary' purchase in euros; an account's usual amount is this times exp(mu)."""


@dataclass(frozen=True, slots=True)
class Category:
    """An ISO-18245 merchant category with its share of merchants, typical amount and online share."""

    mcc: str
    name: str
    weight: float
    median_amount_eur: float
    online_share: float


CATEGORIES: tuple[Category, ...] = (
    Category("5411", "grocery", 0.20, 35.0, 0.05),
    Category("5812", "restaurants", 0.12, 28.0, 0.05),
    Category("5814", "fast food", 0.08, 9.0, 0.10),
    Category("5541", "fuel", 0.07, 55.0, 0.0),
    Category("5912", "drug stores", 0.05, 18.0, 0.15),
    Category("5999", "misc retail", 0.08, 25.0, 0.30),
    Category("4111", "transport", 0.06, 4.0, 0.20),
    Category("5311", "department stores", 0.05, 60.0, 0.25),
    Category("5691", "clothing", 0.05, 55.0, 0.40),
    Category("5732", "electronics", 0.03, 180.0, 0.45),
    Category("5944", "jewelry", 0.01, 250.0, 0.20),
    Category("4814", "telecom", 0.02, 30.0, 0.70),
    Category("7011", "hotels", 0.02, 140.0, 0.60),
    Category("4511", "airlines", 0.01, 250.0, 0.90),
    Category("5816", "digital games", 0.03, 12.0, 1.0),
    Category("5967", "direct marketing", 0.02, 20.0, 1.0),
    Category("7995", "gambling", 0.01, 40.0, 0.80),
)
CATEGORY_BY_MCC: dict[str, Category] = {c.mcc: c for c in CATEGORIES}


@dataclass(frozen=True, slots=True)
class HomeCountry:
    """A country accounts live in, with its currency (ISO-4217) and how many units make one euro."""

    code: str
    currency: str
    weight: float
    units_per_eur: float


HOME_COUNTRIES: tuple[HomeCountry, ...] = (
    HomeCountry("DE", "EUR", 0.22, 1.0),
    HomeCountry("US", "USD", 0.20, 1.08),
    HomeCountry("GB", "GBP", 0.14, 0.86),
    HomeCountry("FR", "EUR", 0.12, 1.0),
    HomeCountry("ES", "EUR", 0.06, 1.0),
    HomeCountry("IT", "EUR", 0.06, 1.0),
    HomeCountry("PL", "PLN", 0.06, 4.3),
    HomeCountry("NL", "EUR", 0.05, 1.0),
    HomeCountry("SE", "SEK", 0.03, 11.4),
    HomeCountry("AT", "EUR", 0.03, 1.0),
    HomeCountry("CH", "CHF", 0.03, 0.95),
)
HOME_COUNTRY_BY_CODE: dict[str, HomeCountry] = {c.code: c for c in HOME_COUNTRIES}
RISK_COUNTRIES: tuple[str, ...] = ("BR", "NG", "RO", "VN", "ID", "TR", "MX", "IN", "PH", "UA")
"""Countries no account lives in; fraudsters often appear from here."""

_HOURLY_INTENSITY = (
    *(0.25, 0.15, 0.10, 0.08, 0.08, 0.12, 0.30, 0.60, 0.90, 1.10, 1.25, 1.45),
    *(1.60, 1.50, 1.30, 1.20, 1.25, 1.45, 1.65, 1.70, 1.45, 1.10, 0.75, 0.45),
)
DAILY_RHYTHM: tuple[float, ...] = tuple(v * 24 / sum(_HOURLY_INTENSITY) for v in _HOURLY_INTENSITY)
"""Relative transaction intensity at each hour of the day, mean 1: quiet at night, peaks at noon and evening."""

_RHYTHM_HOURS = np.arange(25, dtype=np.float64)
_RHYTHM_VALUES = np.array((*DAILY_RHYTHM, DAILY_RHYTHM[0]), dtype=np.float64)
_USUAL_MERCHANTS_MAX = 25
_HOUR_OFFSETS = (-2, -1, 0, 1, 2, 3)
_HOUR_OFFSET_WEIGHTS = (0.10, 0.20, 0.35, 0.20, 0.10, 0.05)
_DEVICE_COUNT_WEIGHTS = (0.50, 0.35, 0.15)
_FOREIGN_ONLINE_SHARE = 0.8
"""A merchant this online (or more) may be an account's usual merchant abroad: people shop online across borders."""


def rhythm_at(hour_of_day: np.ndarray) -> np.ndarray:
    """The daily intensity (mean 1 over a day) at fractional hours in [0, 24), linearly interpolated."""
    intensity: np.ndarray = np.interp(hour_of_day, _RHYTHM_HOURS, _RHYTHM_VALUES)
    return intensity


@dataclass(frozen=True, slots=True)
class Merchant:
    """A merchant: where it is, what it sells (MCC), its amount scale in euros and its online share."""

    merchant_id: str
    mcc: str
    country: str
    amount_scale: float
    online_share: float
    popularity: float


@dataclass(frozen=True, slots=True)
class Account:
    """A card holder's habits. `usual_merchants` index `World.merchants`; `usual_cum` is their cumulative share."""

    account_id: str
    country: str
    currency: str
    units_per_eur: float
    usual_merchants: tuple[int, ...]
    usual_cum: tuple[float, ...]
    devices: tuple[str, ...]
    amount_mu: float
    amount_sigma: float
    activity: float
    hour_offset: int

    @property
    def typical_amount(self) -> float:
        """The median of the account's amounts at an ordinary (30 EUR) merchant, in its currency."""
        return math.exp(self.amount_mu) * TYPICAL_AMOUNT_EUR

    @property
    def hour_profile(self) -> tuple[float, ...]:
        """Relative activity per hour of day (mean 1): the daily rhythm shifted by the account's offset."""
        return tuple(DAILY_RHYTHM[(hour - self.hour_offset) % 24] for hour in range(24))

    def usual_merchant(self, u: float) -> int:
        """The usual merchant a uniform draw `u` in [0, 1) picks."""
        return self.usual_merchants[min(bisect_right(self.usual_cum, u), len(self.usual_merchants) - 1)]


@dataclass(frozen=True, eq=False)
class World:
    """Merchants and accounts, plus lookup tables the generator needs on its hot path."""

    seed: int
    merchants: tuple[Merchant, ...]
    accounts: tuple[Account, ...]
    merchants_by_country: dict[str, tuple[int, ...]]
    """Merchant indices per country."""
    merchant_cum_by_country: dict[str, tuple[float, ...]]
    """Cumulative popularity share of `merchants_by_country`, for picking a merchant by popularity."""
    customers: dict[int, tuple[int, ...]]
    """Accounts that have the merchant among their usual merchants, by merchant index."""
    hour_account_cum: np.ndarray = field(repr=False)
    """(24, accounts) cumulative share of activity x hour profile: who transacts at each hour."""
    activity_cum: tuple[float, ...] = field(repr=False)
    """Cumulative activity share over accounts, regardless of hour."""

    @property
    def mccs(self) -> frozenset[str]:
        return frozenset(m.mcc for m in self.merchants)

    def merchant_in(self, country: str, u: float) -> int:
        """The merchant of `country` a uniform draw `u` picks, by popularity."""
        indices = self.merchants_by_country[country]
        return indices[min(bisect_right(self.merchant_cum_by_country[country], u), len(indices) - 1)]

    def account_by_activity(self, u: float) -> int:
        """The account a uniform draw `u` picks, by activity weight."""
        return min(bisect_right(self.activity_cum, u), len(self.accounts) - 1)

    def accounts_at_hours(self, hours: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Account indices for uniform draws `u` at integer hours of day, by activity x hour profile."""
        picked = np.empty(len(u), dtype=np.int64)
        for hour in np.unique(hours):
            mask = hours == hour
            picked[mask] = np.searchsorted(self.hour_account_cum[hour], u[mask], side="right")
        return np.minimum(picked, len(self.accounts) - 1)


def build_world(seed: int, *, accounts: int = ACCOUNTS_DEFAULT, merchants: int = MERCHANTS_DEFAULT) -> World:
    """Build the world for `seed`: the same seed and sizes give the same merchants and accounts."""
    if accounts < 1 or merchants < len(HOME_COUNTRIES):
        raise ValueError(f"need at least 1 account and {len(HOME_COUNTRIES)} merchants")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x57A1D]))
    merchant_list = _make_merchants(rng, merchants)
    by_country = _group_by_country(merchant_list)
    cum_by_country = {
        country: cumulative([merchant_list[i].popularity for i in indices]) for country, indices in by_country.items()
    }
    account_list = _make_accounts(rng, accounts, merchant_list, by_country, cum_by_country)
    activity = np.array([a.activity for a in account_list])
    offsets = np.array([a.hour_offset for a in account_list])
    return World(
        seed=seed,
        merchants=merchant_list,
        accounts=account_list,
        merchants_by_country=by_country,
        merchant_cum_by_country=cum_by_country,
        customers=_customers(account_list),
        hour_account_cum=_hour_account_cum(activity, offsets),
        activity_cum=cumulative(activity.tolist()),
    )


def make_category_merchants(mcc: str, countries: Sequence[str], *, per_country: int = 3) -> tuple[Merchant, ...]:
    """Merchants of a category the world does not have (used by drift), `per_country` in each country."""
    return tuple(
        Merchant(
            merchant_id=f"mer-{mcc}-{country}-{k}",
            mcc=mcc,
            country=country,
            amount_scale=100.0,
            online_share=0.7,
            popularity=1.0,
        )
        for country in countries
        for k in range(per_country)
    )


# --- construction helpers ----------------------------------------------------------------------------


def cumulative(weights: Sequence[float]) -> tuple[float, ...]:
    """Normalised running sums of `weights`: the table a uniform draw is bisected into."""
    total = float(sum(weights))
    return tuple(w / total for w in accumulate(weights))


def _make_merchants(rng: np.random.Generator, n: int) -> tuple[Merchant, ...]:
    country_p = np.array([c.weight for c in HOME_COUNTRIES])
    # Every home country gets merchants; the rest follow the population mix.
    country_idx = np.concatenate(
        [
            np.arange(len(HOME_COUNTRIES)),
            rng.choice(len(HOME_COUNTRIES), n - len(HOME_COUNTRIES), p=country_p / country_p.sum()),
        ]
    )
    category_p = np.array([c.weight for c in CATEGORIES])
    category_idx = rng.choice(len(CATEGORIES), n, p=category_p / category_p.sum())
    scale_jitter = rng.lognormal(0.0, 0.2, n)
    popularity = rng.lognormal(0.0, 1.0, n)
    result = []
    for i in range(n):
        category = CATEGORIES[category_idx[i]]
        result.append(
            Merchant(
                merchant_id=f"mer-{i:05d}",
                mcc=category.mcc,
                country=HOME_COUNTRIES[country_idx[i]].code,
                amount_scale=float(category.median_amount_eur * scale_jitter[i]),
                online_share=category.online_share,
                popularity=float(popularity[i] * category.weight),
            )
        )
    return tuple(result)


def _group_by_country(merchants: Sequence[Merchant]) -> dict[str, tuple[int, ...]]:
    groups: dict[str, list[int]] = {}
    for i, merchant in enumerate(merchants):
        groups.setdefault(merchant.country, []).append(i)
    return {country: tuple(indices) for country, indices in groups.items()}


def _make_accounts(
    rng: np.random.Generator,
    n: int,
    merchants: Sequence[Merchant],
    by_country: dict[str, tuple[int, ...]],
    cum_by_country: dict[str, tuple[float, ...]],
) -> tuple[Account, ...]:
    country_p = np.array([c.weight for c in HOME_COUNTRIES])
    homes = rng.choice(len(HOME_COUNTRIES), n, p=country_p / country_p.sum())
    usual_counts = np.minimum(4 + rng.poisson(6.0, n), _USUAL_MERCHANTS_MAX)
    usual_draws = rng.random((n, 2 * _USUAL_MERCHANTS_MAX))
    level = rng.normal(0.0, 0.35, n)
    sigmas = rng.uniform(0.4, 0.8, n)
    # Pareto: most accounts transact a little, a few a lot (capped so one account cannot dominate).
    activity = np.minimum(rng.pareto(1.5, n) + 1.0, 200.0)
    offsets = rng.choice(_HOUR_OFFSETS, n, p=_HOUR_OFFSET_WEIGHTS)
    device_counts = rng.choice((1, 2, 3), n, p=_DEVICE_COUNT_WEIGHTS)
    online_abroad = [i for i, m in enumerate(merchants) if m.online_share >= _FOREIGN_ONLINE_SHARE]
    foreign_counts = rng.choice((0, 1, 2), n, p=(0.5, 0.35, 0.15))
    foreign_picks = rng.integers(0, max(len(online_abroad), 1), (n, 2))
    result = []
    for i in range(n):
        home = HOME_COUNTRIES[homes[i]]
        usual = _usual_merchants(usual_draws[i], int(usual_counts[i]), by_country[home.code], cum_by_country[home.code])
        foreign = [
            online_abroad[foreign_picks[i, k]]
            for k in range(int(foreign_counts[i]))
            if online_abroad and merchants[online_abroad[foreign_picks[i, k]]].country != home.code
        ]
        usual = list(dict.fromkeys(usual + foreign))
        # Zipf-like: the first usual merchant is visited most.
        usual_weights = [1.0 / (rank + 1) for rank in range(len(usual))]
        number = f"{i:06d}"
        result.append(
            Account(
                account_id=f"acc-{number}",
                country=home.code,
                currency=home.currency,
                units_per_eur=home.units_per_eur,
                usual_merchants=tuple(usual),
                usual_cum=cumulative(usual_weights),
                devices=tuple(f"dev-{number}-{k}" for k in range(int(device_counts[i]))),
                amount_mu=float(level[i] + math.log(home.units_per_eur)),
                amount_sigma=float(sigmas[i]),
                activity=float(activity[i]),
                hour_offset=int(offsets[i]),
            )
        )
    return tuple(result)


def _usual_merchants(draws: np.ndarray, count: int, indices: tuple[int, ...], cum: tuple[float, ...]) -> list[int]:
    picked = np.minimum(np.searchsorted(cum, draws, side="right"), len(indices) - 1)
    unique = list(dict.fromkeys(indices[p] for p in picked.tolist()))
    return unique[:count]


def _customers(accounts: Sequence[Account]) -> dict[int, tuple[int, ...]]:
    groups: dict[int, list[int]] = {}
    for a, account in enumerate(accounts):
        for m in account.usual_merchants:
            groups.setdefault(m, []).append(a)
    return {m: tuple(members) for m, members in groups.items()}


def _hour_account_cum(activity: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    rhythm = np.array(DAILY_RHYTHM)
    hours = np.arange(24)[:, None]
    weights = activity[None, :] * rhythm[(hours - offsets[None, :]) % 24]
    cum = np.cumsum(weights, axis=1)
    normalised: np.ndarray = cum / cum[:, -1:]
    return normalised
