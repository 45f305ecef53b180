"""Synthetic card transactions with labelled fraud, as an endless time-ordered stream.

Why synthetic: the scorer, the feature pipeline and the monitor need realistic traffic with known
ground truth, reproducible from a seed, at any rate, with drift on demand. The world (`world.py`) gives
accounts stable habits; legitimate events follow them, fraud breaks them in three known ways.

Legitimate traffic is a Poisson process of rate `rate_per_s * (1 - fraud_rate)`. With the rhythm on it
is non-homogeneous — the daily rhythm of `world.DAILY_RHYTHM`, mean 1 — and drawn by thinning: candidates
at the peak rate, each kept with probability rhythm(t) / peak. Each arrival picks an account by activity
x hour profile, mostly one of its usual merchants in its home country, one of its own devices, an amount
from its personal log-normal scaled by the merchant's category, and a channel the merchant offers.

Fraud arrives as incidents; each arrival starts one with a small probability chosen so that fraud events
make about `fraud_rate` of all events, split by `PATTERN_SHARES`. An incident's events are scheduled
into the future on a heap and merged with the arrivals, so the stream stays ordered by event time.
Incidents that began in the hours before `start` are scheduled too (whole ones only), so the fraud share
is right from the first event instead of ramping up over the longest incident (about three hours).
Every event of an incident is fraud (`is_fraud=True`, `pattern` set):

- `card_testing`: 3-10 tiny amounts (0.50-3.00) within a few minutes on one account, from one unseen
  device, at one online merchant (mostly digital goods / direct marketing); sometimes one large online
  purchase follows a few minutes later.
- `account_takeover`: a new device in a foreign country, 2-6 purchases of many times the account's
  usual amount at electronics, jewelry or gambling merchants within an hour.
- `compromised_merchant` (skimming): at any time one card-present merchant (fuel, restaurant, grocery,
  fast food) is compromised, for a window of 4-12 hours, then another. An incident turns the arrival
  that started it into a genuine card-present purchase at the compromised merchant by one of its
  regular customers — legitimate, the point of compromise — and the stolen card is cashed out online
  10 minutes to 3 hours later: 1-3 mid-sized purchases from an unseen device. Only the cash-outs are
  fraud; linking them back to the merchant their accounts share is the detection problem.

Drift (`drift.py`) changes legitimate events only, from the `after_events`-th emitted event on.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from heapq import heappop, heappush

import numpy as np

from producers.drift import DriftSpec
from producers.world import (
    DAILY_RHYTHM,
    HOME_COUNTRIES,
    RISK_COUNTRIES,
    Account,
    Merchant,
    World,
    cumulative,
    make_category_merchants,
    rhythm_at,
)
from streamscore.contracts import MAX_AMOUNT, Channel, Transaction

CARD_TESTING = "card_testing"
ACCOUNT_TAKEOVER = "account_takeover"
COMPROMISED_MERCHANT = "compromised_merchant"
PATTERNS: tuple[str, ...] = (CARD_TESTING, ACCOUNT_TAKEOVER, COMPROMISED_MERCHANT)
PATTERN_SHARES: dict[str, float] = {CARD_TESTING: 0.40, ACCOUNT_TAKEOVER: 0.35, COMPROMISED_MERCHANT: 0.25}
"""Share of fraud events per pattern."""

# Legitimate behaviour.
USUAL_MERCHANT_SHARE = 0.85
TRAVEL_SHARE = 0.015
"""Baseline share of legitimate transactions made abroad, so that 'foreign' alone is not fraud."""
CONTACTLESS_LIMIT_EUR = 50.0
CONTACTLESS_SHARE = 0.7
"""Share of card-present payments under the limit that are contactless."""
WALLET_SHARE = 0.4
"""Share of contactless payments made with a phone wallet, which carries the account's device id."""

# Card testing.
CARD_TESTING_BURST = (3, 10)
CARD_TESTING_AMOUNT = (0.5, 3.0)
CARD_TESTING_GAP_S = (3.0, 30.0)
CARD_TESTING_LARGE_SHARE = 0.3
CARD_TESTING_MCCS = ("5816", "5967")
CARD_TESTING_PREFERRED_SHARE = 0.7

# Account takeover.
TAKEOVER_EVENTS = (2, 6)
TAKEOVER_WINDOW_S = 3600.0
TAKEOVER_MULTIPLIER = (6.0, 25.0)
TAKEOVER_MCCS = ("5732", "5944", "7995")
TAKEOVER_RISK_COUNTRY_SHARE = 0.6

# Compromised merchant.
COMPROMISE_WINDOW_S = (4 * 3600.0, 12 * 3600.0)
COMPROMISE_MCCS = ("5541", "5812", "5411", "5814")
COMPROMISE_MIN_CUSTOMERS = 5
CASHOUT_EVENTS = (1, 3)
CASHOUT_DELAY_S = (600.0, 3 * 3600.0)
CASHOUT_GAP_S = (60.0, 900.0)
CASHOUT_MULTIPLIER = (3.0, 12.0)
CASHOUT_MCCS = ("5732", "5816", "5311", "5967", "5691")

_EXPECTED_EVENTS: dict[str, float] = {
    CARD_TESTING: sum(CARD_TESTING_BURST) / 2 + CARD_TESTING_LARGE_SHARE,
    ACCOUNT_TAKEOVER: sum(TAKEOVER_EVENTS) / 2,
    COMPROMISED_MERCHANT: sum(CASHOUT_EVENTS) / 2,
}
WARM_UP_S = 4 * 3600.0
"""Longer than any incident lasts, so the warm-up schedules every incident still running at `start`."""
_BLOCK = 4096
"""Arrival candidates drawn per vectorised block."""
_ONLINE = 0.4
"""A merchant at least this online can host card-not-present fraud."""


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """What to generate: the seed of the stream, how much fraud, daily rhythm, optional drift."""

    seed: int = 0
    fraud_rate: float = 0.01
    """Share of all events that are fraud."""
    rhythm: bool = True
    """Follow the daily rhythm (quiet nights, busy noon and evening) instead of a constant rate."""
    drift: DriftSpec | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be within [0, 2**63), got {self.seed}")
        if not 0.0 <= self.fraud_rate <= 0.5:
            raise ValueError(f"fraud_rate must be within [0, 0.5], got {self.fraud_rate}")


@dataclass(frozen=True, slots=True)
class GeneratedEvent:
    """One transaction with its ground truth; `pattern` is None for legitimate events."""

    transaction: Transaction
    is_fraud: bool
    pattern: str | None


class TransactionGenerator:
    """Turns a world and a config into endless transaction streams; each `stream()` call starts afresh."""

    def __init__(self, world: World, config: GeneratorConfig | None = None) -> None:
        self.world = world
        self.config = config or GeneratorConfig()
        drift = self.config.drift
        if drift is not None and drift.new_category is not None and drift.new_category in world.mccs:
            raise ValueError(f"drift new_category {drift.new_category} is already used by the world's merchants")
        merchants = world.merchants
        online = [i for i, m in enumerate(merchants) if m.online_share >= _ONLINE]
        self.card_testing_merchants = _indices(merchants, CARD_TESTING_MCCS, online) or tuple(online)
        self.online_merchants = tuple(online) or tuple(range(len(merchants)))
        self.takeover_merchants = _indices(merchants, TAKEOVER_MCCS) or self.online_merchants
        self.cashout_merchants = _indices(merchants, CASHOUT_MCCS, online) or self.online_merchants
        candidates = [
            m
            for m in _indices(merchants, COMPROMISE_MCCS)
            if len(world.customers.get(m, ())) >= COMPROMISE_MIN_CUSTOMERS
        ] or sorted(world.customers)
        self.compromise_candidates = tuple(candidates)
        self.compromise_cum = cumulative([len(world.customers[m]) for m in candidates])
        self.drift_merchants: dict[str, tuple[Merchant, ...]] = {}
        if drift is not None and drift.new_category is not None:
            extra = make_category_merchants(drift.new_category, [c.code for c in HOME_COUNTRIES])
            for merchant in extra:
                self.drift_merchants.setdefault(merchant.country, ())
                self.drift_merchants[merchant.country] += (merchant,)
        self.other_countries = {
            c.code: tuple(o.code for o in HOME_COUNTRIES if o.code != c.code) for c in HOME_COUNTRIES
        }
        self.amount_mu = np.array([a.amount_mu for a in world.accounts])
        self.amount_sigma = np.array([a.amount_sigma for a in world.accounts])

    def stream(self, start: datetime, rate_per_s: float) -> Iterator[GeneratedEvent]:
        """Events from `start` on, in non-decreasing event time, `rate_per_s` a simulated second on average."""
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        if not math.isfinite(rate_per_s) or rate_per_s <= 0.0:
            raise ValueError(f"rate_per_s must be a finite number > 0, got {rate_per_s}")
        return _Stream(self, start, rate_per_s).run()


# --- pure helpers -------------------------------------------------------------------------------------


def _indices(merchants: tuple[Merchant, ...], mccs: tuple[str, ...], among: list[int] | None = None) -> tuple[int, ...]:
    pool = range(len(merchants)) if among is None else among
    return tuple(i for i in pool if merchants[i].mcc in mccs)


def _pick(items: tuple[int, ...], cum: tuple[float, ...], u: float) -> int:
    return items[min(bisect_right(cum, u), len(items) - 1)]


def clean_amount(value: float) -> float:
    """An amount rounded to cents and kept within the contract's bounds."""
    return round(min(max(value, 0.01), MAX_AMOUNT), 2)


def choose_channel(online_share: float, amount_eur: float, u_online: float, u_contactless: float) -> Channel:
    """E-commerce with the merchant's online share; otherwise contactless for small amounts, else chip & PIN."""
    if u_online < online_share:
        return "ecommerce"
    if amount_eur <= CONTACTLESS_LIMIT_EUR and u_contactless < CONTACTLESS_SHARE:
        return "contactless"
    return "pos"


def incident_probabilities(fraud_rate: float) -> dict[str, float]:
    """Per legitimate arrival, the chance it starts an incident of each pattern, so that fraud events are
    `fraud_rate` of all events: incidents per arrival = rate / (1 - rate) x share / events per incident."""
    odds = fraud_rate / (1.0 - fraud_rate)
    return {p: odds * PATTERN_SHARES[p] / _EXPECTED_EVENTS[p] for p in PATTERNS}


# --- one stream ---------------------------------------------------------------------------------------

_Payload = tuple[Account, Merchant, float, str, Channel, str | None, str | None]
"""account, merchant, amount, country, channel, device_id, pattern"""


class _Stream:
    """The mutable state of one `stream()` call: RNGs, clock, the heap of scheduled fraud, counters."""

    def __init__(self, generator: TransactionGenerator, start: datetime, rate_per_s: float) -> None:
        config = generator.config
        self.gen = generator
        self.world = generator.world
        seeds = np.random.SeedSequence([config.seed, 0x6E4E])
        self.rng = np.random.default_rng(seeds)
        self.rand = random.Random(int(seeds.generate_state(1, np.uint64)[0]))
        self.start = start
        self.start_epoch = start.timestamp()
        self.rhythm = config.rhythm
        self.peak = max(DAILY_RHYTHM) if config.rhythm else 1.0
        self.candidate_rate = rate_per_s * (1.0 - config.fraud_rate) * self.peak
        self.clock = 0.0
        self.heap: list[tuple[float, int, _Payload]] = []
        self.scheduled = 0
        self.emitted = 0
        stamp = start.strftime("%Y%m%dT%H%M%S") + (f".{start.microsecond:06d}" if start.microsecond else "")
        self.id_prefix = f"evt-{config.seed}-{stamp}-"
        probabilities = incident_probabilities(config.fraud_rate)
        self.p_compromise = probabilities[COMPROMISED_MERCHANT]
        self.p_card_testing = self.p_compromise + probabilities[CARD_TESTING]
        self.p_takeover = self.p_card_testing + probabilities[ACCOUNT_TAKEOVER]
        self.drift = config.drift
        self.drift_from = config.drift.after_events if config.drift is not None else math.inf
        self.compromised = -1
        self.compromised_until = -math.inf
        self.victims: tuple[int, ...] = ()
        self.victims_cum: tuple[float, ...] = ()
        self.warm_up()

    def run(self) -> Iterator[GeneratedEvent]:
        heap = self.heap
        while True:
            times, accounts, factors = self.block()
            for t, a, factor in zip(times, accounts, factors, strict=True):
                while heap and heap[0][0] <= t:
                    when, _, payload = heappop(heap)
                    yield self.event(when, *payload)
                yield self.legitimate(t, a, factor)

    def block(self) -> tuple[list[float], list[int], list[float]]:
        """The next legitimate arrivals (thinned by the rhythm), their accounts and amount factors."""
        rng = self.rng
        times = self.clock + np.cumsum(rng.exponential(1.0 / self.candidate_rate, _BLOCK))
        self.clock = float(times[-1])
        hours = ((self.start_epoch + times) % 86400.0) / 3600.0
        if self.rhythm:
            keep = rng.random(_BLOCK) * self.peak < rhythm_at(hours)
            times, hours = times[keep], hours[keep]
        accounts = self.world.accounts_at_hours(np.minimum(hours.astype(np.int64), 23), rng.random(len(times)))
        g = self.gen
        factors = np.exp(g.amount_mu[accounts] + g.amount_sigma[accounts] * rng.standard_normal(len(times)))
        return times.tolist(), accounts.tolist(), factors.tolist()

    def event(
        self,
        t: float,
        account: Account,
        merchant: Merchant,
        amount: float,
        country: str,
        channel: Channel,
        device: str | None,
        pattern: str | None,
    ) -> GeneratedEvent:
        number = self.emitted
        self.emitted = number + 1
        transaction = Transaction(
            event_id=self.id_prefix + str(number),
            account_id=account.account_id,
            merchant_id=merchant.merchant_id,
            merchant_category=merchant.mcc,
            amount=amount,
            currency=account.currency,
            country=country,
            channel=channel,
            device_id=device,
            event_time=self.start + timedelta(seconds=t),
        )
        return GeneratedEvent(transaction, pattern is not None, pattern)

    def schedule(self, events: list[tuple[float, _Payload]]) -> None:
        for t, payload in events:
            self.scheduled += 1
            heappush(self.heap, (t, self.scheduled, payload))

    # --- legitimate ---------------------------------------------------------------------------------

    def legitimate(self, t: float, a: int, factor: float) -> GeneratedEvent:
        rand = self.rand
        u = rand.random()
        if u < self.p_takeover:
            if u < self.p_compromise:
                return self.skim(t)
            self.schedule(self.card_testing(t) if u < self.p_card_testing else self.account_takeover(t))
        world = self.world
        account = world.accounts[a]
        home = account.country
        country = home
        scale = 1.0
        drift = self.drift
        merchant: Merchant | None = None
        travel = rand.random() < TRAVEL_SHARE
        if drift is not None and self.emitted >= self.drift_from:
            scale = drift.amount_scale
            if drift.new_category_share and rand.random() < drift.new_category_share:
                merchant = rand.choice(self.gen.drift_merchants[home])
            elif drift.foreign_share and rand.random() < drift.foreign_share:
                travel = True
        if merchant is None:
            if travel:
                country = rand.choice(self.gen.other_countries[home])
                merchant = world.merchants[world.merchant_in(country, rand.random())]
            elif rand.random() < USUAL_MERCHANT_SHARE:
                merchant = world.merchants[account.usual_merchant(rand.random())]
            else:
                merchant = world.merchants[world.merchant_in(home, rand.random())]
        amount = clean_amount(factor * merchant.amount_scale * scale)
        channel = choose_channel(merchant.online_share, amount / account.units_per_eur, rand.random(), rand.random())
        device: str | None = None
        if channel == "ecommerce":
            device = account.devices[int(rand.random() * len(account.devices))]
        else:
            country = merchant.country
            if channel == "contactless" and rand.random() < WALLET_SHARE:
                device = account.devices[0]
        return self.event(t, account, merchant, amount, country, channel, device, None)

    # --- fraud --------------------------------------------------------------------------------------

    def new_device(self) -> str:
        return f"dev-x{self.rand.getrandbits(48):012x}"

    def fraud_country(self, home: str, risk_share: float) -> str:
        if self.rand.random() < risk_share:
            return self.rand.choice(RISK_COUNTRIES)
        return self.rand.choice(self.gen.other_countries[home])

    def large_amount(self, account: Account, multiplier: tuple[float, float], floor_eur: float) -> float:
        rand = self.rand
        usual = account.typical_amount * rand.uniform(*multiplier)
        return clean_amount(max(usual, floor_eur * account.units_per_eur * rand.uniform(1.0, 2.5)))

    def card_testing(self, t: float) -> list[tuple[float, _Payload]]:
        rand, world, gen = self.rand, self.world, self.gen
        account = world.accounts[world.account_by_activity(rand.random())]
        device = self.new_device()
        country = account.country if rand.random() < 0.4 else rand.choice(RISK_COUNTRIES)
        preferred = rand.random() < CARD_TESTING_PREFERRED_SHARE
        merchant = world.merchants[rand.choice(gen.card_testing_merchants if preferred else gen.online_merchants)]
        events: list[tuple[float, _Payload]] = []
        when = t + rand.uniform(1.0, 60.0)
        for k in range(rand.randint(*CARD_TESTING_BURST)):
            if k:
                when += rand.uniform(*CARD_TESTING_GAP_S)
            amount = round(rand.uniform(*CARD_TESTING_AMOUNT), 2)
            events.append((when, (account, merchant, amount, country, "ecommerce", device, CARD_TESTING)))
        if rand.random() < CARD_TESTING_LARGE_SHARE:
            when += rand.uniform(120.0, 900.0)
            target = world.merchants[rand.choice(gen.takeover_merchants)]
            amount = self.large_amount(account, TAKEOVER_MULTIPLIER, 150.0)
            events.append((when, (account, target, amount, country, "ecommerce", device, CARD_TESTING)))
        return events

    def account_takeover(self, t: float) -> list[tuple[float, _Payload]]:
        rand, world, gen = self.rand, self.world, self.gen
        account = world.accounts[world.account_by_activity(rand.random())]
        device = self.new_device()
        country = self.fraud_country(account.country, TAKEOVER_RISK_COUNTRY_SHARE)
        offsets = sorted(rand.uniform(30.0, TAKEOVER_WINDOW_S) for _ in range(rand.randint(*TAKEOVER_EVENTS)))
        events: list[tuple[float, _Payload]] = []
        for offset in offsets:
            merchant = world.merchants[rand.choice(gen.takeover_merchants)]
            amount = self.large_amount(account, TAKEOVER_MULTIPLIER, 150.0)
            events.append((t + offset, (account, merchant, amount, country, "ecommerce", device, ACCOUNT_TAKEOVER)))
        return events

    def victim(self, t: float) -> tuple[Account, Merchant]:
        """A regular customer of the merchant compromised at `t` (a new one is picked when the window ends)."""
        rand, world, gen = self.rand, self.world, self.gen
        if t >= self.compromised_until:
            self.compromised = _pick(gen.compromise_candidates, gen.compromise_cum, rand.random())
            self.victims = world.customers[self.compromised]
            self.victims_cum = cumulative([world.accounts[v].activity for v in self.victims])
            self.compromised_until = t + rand.uniform(*COMPROMISE_WINDOW_S)
        return world.accounts[_pick(self.victims, self.victims_cum, rand.random())], world.merchants[self.compromised]

    def cashouts(self, t: float, account: Account) -> list[tuple[float, _Payload]]:
        """Online spend with the card skimmed at `t`, from an unseen device, a while later."""
        rand, world, gen = self.rand, self.world, self.gen
        device = self.new_device()
        country = account.country if rand.random() < 0.5 else rand.choice(RISK_COUNTRIES)
        events: list[tuple[float, _Payload]] = []
        when = t + rand.uniform(*CASHOUT_DELAY_S)
        for k in range(rand.randint(*CASHOUT_EVENTS)):
            if k:
                when += rand.uniform(*CASHOUT_GAP_S)
            target = world.merchants[rand.choice(gen.cashout_merchants)]
            amount = self.large_amount(account, CASHOUT_MULTIPLIER, 50.0)
            events.append((when, (account, target, amount, country, "ecommerce", device, COMPROMISED_MERCHANT)))
        return events

    def skim(self, t: float) -> GeneratedEvent:
        """The arrival becomes a regular customer's card-present purchase at the compromised merchant."""
        account, merchant = self.victim(t)
        factor = math.exp(account.amount_mu + account.amount_sigma * self.rand.gauss(0.0, 1.0))
        amount = clean_amount(factor * merchant.amount_scale)
        channel = choose_channel(0.0, amount / account.units_per_eur, 1.0, self.rand.random())
        self.schedule(self.cashouts(t, account))
        return self.event(t, account, merchant, amount, merchant.country, channel, None, None)

    def warm_up(self) -> None:
        """Schedule the incidents that started in the hours before `start` and are still to come, so the
        stream is stationary from its first event instead of ramping up its slow patterns. Incidents
        that began before `start` are kept whole or not at all (a card-testing burst is never cut)."""
        rand = self.rand
        rate = self.candidate_rate * self.p_takeover
        if rate <= 0.0:
            return
        t = -WARM_UP_S
        while True:
            t += rand.expovariate(rate)
            if t >= 0.0:
                return
            if self.rhythm and rand.random() * self.peak >= self.rhythm_at(t):
                continue
            u = rand.random() * self.p_takeover
            if u < self.p_compromise:
                events = self.cashouts(t, self.victim(t)[0])
            elif u < self.p_card_testing:
                events = self.card_testing(t)
            else:
                events = self.account_takeover(t)
            if events[0][0] >= 0.0:
                self.schedule(events)

    def rhythm_at(self, t: float) -> float:
        hour = ((self.start_epoch + t) % 86400.0) / 3600.0
        return float(rhythm_at(np.array([hour]))[0])
