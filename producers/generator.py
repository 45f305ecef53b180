"""Synthetic card transactions with labelled fraud, as an endless time-ordered stream.

Why synthetic: the scorer, the feature pipeline and the monitor need realistic traffic with known
ground truth, reproducible from a seed, at any rate, with drift on demand. The world (`world.py`) gives
accounts stable habits; legitimate events follow them, fraud breaks them in three known ways.

Legitimate traffic is a Poisson process of the rate left over by fraud and skims (below). With the rhythm
on it is non-homogeneous — the daily rhythm of `world.DAILY_RHYTHM`, mean 1 — and drawn by thinning:
candidates at the peak rate, each kept with probability rhythm(t) / peak. Each arrival picks an account
by activity x hour profile, mostly one of its usual merchants in its home country, one of its own
devices, an amount from its personal log-normal scaled by the merchant's category, and a channel the
merchant offers.

Fraud arrives as incidents, one process per pattern, apart from the legitimate arrivals. An incident's
events are spread over minutes to hours after it starts (a skimmed card is cashed out up to three hours
later), so an incident is placed by its anchor, the mean time of its fraud events, and starts that much
earlier. Anchors are spaced evenly in the stream's operational time (the integral of the daily rhythm;
plain time without it), jittered by `ANCHOR_JITTER`, at the rate that makes fraud events `fraud_rate` of
all events, split by `PATTERN_SHARES`. Fraud events therefore follow the rhythm where they happen, not
where their incident began, and the fraud share is about `fraud_rate` at every hour and in short runs as
in long ones. The stream starts in the middle of this process: incidents that began before `start`
contribute the events they still have to come (a card-testing burst under way at `start` is seen from
its middle on), so the share is right from the first event. Each incident goes on a heap, its details
are drawn when its first event from `start` on is due, and its events are merged with the arrivals, so
the stream stays ordered by event time. Every event of an incident is fraud (`is_fraud=True`, `pattern`
set):

- `card_testing`: 3-10 tiny amounts (0.50-3.00) within a few minutes on one account, from one unseen
  device, at one online merchant (mostly digital goods / direct marketing); sometimes one large online
  purchase follows a few minutes later.
- `account_takeover`: a new device in a foreign country, 2-6 purchases of many times the account's
  usual amount at electronics, jewelry or gambling merchants within an hour.
- `compromised_merchant` (skimming): at any time one card-present merchant (fuel, restaurant, grocery,
  fast food) is compromised, for a window of 4-12 hours, then another. An incident starts with a genuine
  card-present purchase at the compromised merchant by one of its regular customers — legitimate, the
  point of compromise, the skim — and the stolen card is cashed out online 10 minutes to 3 hours later:
  1-3 mid-sized purchases from an unseen device. Only the cash-outs are fraud; linking them back to the
  merchant their accounts share is the detection problem.

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
    TYPICAL_AMOUNT_EUR,
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
TRAVEL_SHARE = 0.03
"""Baseline share of legitimate transactions made abroad, so that 'foreign' alone is not fraud."""
NEW_DEVICE_SHARE = 0.03
"""Share of legitimate e-commerce payments from a device the account never used (a new phone, a new browser), so
that 'unseen device' alone is not fraud."""
SPLURGE_SHARE = 0.01
"""Share of legitimate transactions that are a rare large purchase (a laptop, a flight, jewellery): many times the
account's usual amount at a merchant it does not usually visit — what an account takeover looks like, by its owner."""
SPLURGE_MULTIPLIER = (3.0, 15.0)
SPLURGE_MCCS = ("5732", "5944", "4511", "7011", "5311")
CONTACTLESS_LIMIT_EUR = 50.0
CONTACTLESS_SHARE = 0.7
"""Share of card-present payments under the limit that are contactless."""
WALLET_SHARE = 0.4
"""Share of contactless payments made with a phone wallet, which carries the account's device id."""

# Where fraud spends.
WEAK_MERCHANT_SHARE = 0.05
"""Share of online merchants with weak controls (no 3-D Secure, lax checks): fixed per world."""
FRAUD_AT_WEAK_MERCHANT = 0.35
"""Chance that a fraudulent online purchase goes to a weak merchant instead of the pattern's usual pool: fraud
concentrates where it works, which only a merchant's own fraud history (the merchant risk view) can tell."""

# Labels.
REPORTED_SHARE = 0.85
"""Share of fraud incidents ever reported; the rest stay labelled legitimate for good (unreported fraud)."""
REPORT_DELAY_FACTOR = (1.0, 2.0)
"""A reported fraud's label comes this many label delays after the event (uniform): later than a legitimate
event's 'no chargeback' label, within twice the delay — the monitor's maturity window should cover it."""

# Card testing.
CARD_TESTING_DELAY_S = (1.0, 60.0)
"""From the start of the incident to the first test charge."""
CARD_TESTING_BURST = (3, 10)
CARD_TESTING_AMOUNT = (0.5, 3.0)
CARD_TESTING_GAP_S = (3.0, 30.0)
CARD_TESTING_LARGE_SHARE = 0.3
CARD_TESTING_LARGE_AFTER_S = (120.0, 900.0)
"""From the last test charge to the large purchase that sometimes follows."""
CARD_TESTING_MCCS = ("5816", "5967")
CARD_TESTING_PREFERRED_SHARE = 0.7

# Account takeover.
TAKEOVER_EVENTS = (2, 6)
TAKEOVER_DELAY_S = 30.0
"""The earliest purchase after a takeover; all fall within `TAKEOVER_WINDOW_S` of it starting."""
TAKEOVER_WINDOW_S = 3600.0
TAKEOVER_MULTIPLIER = (6.0, 25.0)
TAKEOVER_MCCS = ("5732", "5944", "7995")
TAKEOVER_RISK_COUNTRY_SHARE = 0.6
TAKEOVER_QUIET_SHARE = 0.5
"""Share of takeovers by a fraudster who imitates the account's habits: from one of its own devices (a stolen
phone, a hijacked session) in its home country, at amounts only a few times its usual."""
TAKEOVER_QUIET_MULTIPLIER = (1.5, 5.0)

# Compromised merchant.
COMPROMISE_WINDOW_S = (4 * 3600.0, 12 * 3600.0)
COMPROMISE_MCCS = ("5541", "5812", "5411", "5814")
COMPROMISE_MIN_CUSTOMERS = 5
CASHOUT_EVENTS = (1, 3)
CASHOUT_DELAY_S = (600.0, 3 * 3600.0)
CASHOUT_GAP_S = (60.0, 900.0)
CASHOUT_MULTIPLIER = (1.5, 10.0)
CASHOUT_MCCS = ("5732", "5816", "5311", "5967", "5691")

_EXPECTED_EVENTS: dict[str, float] = {
    CARD_TESTING: sum(CARD_TESTING_BURST) / 2 + CARD_TESTING_LARGE_SHARE,
    ACCOUNT_TAKEOVER: sum(TAKEOVER_EVENTS) / 2,
    COMPROMISED_MERCHANT: sum(CASHOUT_EVENTS) / 2,
}
SPAN_S: dict[str, float] = {
    CARD_TESTING: CARD_TESTING_DELAY_S[1]
    + (CARD_TESTING_BURST[1] - 1) * CARD_TESTING_GAP_S[1]
    + CARD_TESTING_LARGE_AFTER_S[1],
    ACCOUNT_TAKEOVER: TAKEOVER_WINDOW_S,
    COMPROMISED_MERCHANT: CASHOUT_DELAY_S[1] + (CASHOUT_EVENTS[1] - 1) * CASHOUT_GAP_S[1],
}
"""The longest an incident of each pattern lasts, from its start to its last fraud event."""
ANCHOR_JITTER = 0.5
"""Anchors of a pattern are `(1 +- ANCHOR_JITTER) / rate` apart in operational time: spread like a Poisson
process would be, but without its bunching, so that a short stream already has about `fraud_rate` fraud."""
_DAY_S = 86400.0
_RHYTHM_GRID_S = np.linspace(0.0, _DAY_S, 1441)
_RHYTHM_GRID_VALUES = rhythm_at(_RHYTHM_GRID_S / 3600.0)
_RHYTHM_CUM = np.concatenate(([0.0], np.cumsum((_RHYTHM_GRID_VALUES[1:] + _RHYTHM_GRID_VALUES[:-1]) * 30.0)))
_RHYTHM_CUM *= _DAY_S / _RHYTHM_CUM[-1]
"""Operational time over a day, minute by minute: the integral of the rhythm (exact, it is linear per hour)."""
_INCIDENT_CHUNK = 65_536
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
    """The truth: the event belongs to a fraud incident."""
    pattern: str | None
    reported: bool = True
    """Whether the fraud is ever reported (a chargeback, the cardholder's call). Unreported fraud is labelled
    legitimate: the bank never learns of it, so neither do its models or its monitor."""
    label_delay_factor: float = 1.0
    """The label arrives `label_delay x this` after the event: 1 for legitimate events (no chargeback by the
    maturity delay), uniform in `REPORT_DELAY_FACTOR` for reported fraud."""

    @property
    def labeled_fraud(self) -> bool:
        """What the label says: fraud only when the fraud is reported."""
        return self.is_fraud and self.reported


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
        weak_rng = np.random.default_rng(np.random.SeedSequence([world.seed, 0x3EA4]))
        weak = weak_rng.choice(self.online_merchants, max(1, round(WEAK_MERCHANT_SHARE * len(self.online_merchants))))
        self.weak_merchants = tuple(sorted({int(i) for i in weak}))
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
        self.splurge_merchants = {
            c.code: _indices(merchants, SPLURGE_MCCS, list(world.merchants_by_country.get(c.code, ())))
            or self.takeover_merchants
            for c in HOME_COUNTRIES
        }
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


def incident_rates(fraud_rate: float) -> dict[str, float]:
    """Incidents of each pattern per event of the stream, so that fraud events are `fraud_rate` of all
    events, split by `PATTERN_SHARES`: rate x share / events per incident."""
    return {p: fraud_rate * PATTERN_SHARES[p] / _EXPECTED_EVENTS[p] for p in PATTERNS}


_Offsets = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Per incident: times of its fraud events from its start (ascending, NaN-padded), their number, and the
number of card-testing charges among them (the number of events for the other patterns)."""


def card_testing_offsets(rng: np.random.Generator, k: int) -> _Offsets:
    """`k` card-testing incidents: 3-10 test charges, sometimes followed by a large purchase."""
    low, high = CARD_TESTING_BURST
    counts = rng.integers(low, high + 1, k)
    steps = rng.uniform(*CARD_TESTING_GAP_S, (k, high))
    steps[:, 0] = rng.uniform(*CARD_TESTING_DELAY_S, k)
    large = rng.random(k) < CARD_TESTING_LARGE_SHARE
    after = rng.uniform(*CARD_TESTING_LARGE_AFTER_S, k)
    offsets = np.full((k, high + 1), np.nan)
    offsets[:, :high] = np.cumsum(steps, axis=1)
    rows = np.arange(k)
    last = offsets[rows, counts - 1]
    offsets[np.arange(high + 1) >= counts[:, None]] = np.nan
    offsets[rows[large], counts[large]] = last[large] + after[large]
    return offsets, counts + large, counts


def takeover_offsets(rng: np.random.Generator, k: int) -> _Offsets:
    """`k` account takeovers: 2-6 purchases within the hour."""
    low, high = TAKEOVER_EVENTS
    counts = rng.integers(low, high + 1, k)
    offsets = rng.uniform(TAKEOVER_DELAY_S, TAKEOVER_WINDOW_S, (k, high))
    offsets[np.arange(high) >= counts[:, None]] = np.inf
    offsets.sort(axis=1)
    offsets[np.isinf(offsets)] = np.nan
    return offsets, counts, counts


def cashout_offsets(rng: np.random.Generator, k: int) -> _Offsets:
    """`k` skimmed cards: 1-3 cash-outs, the first 10 minutes to 3 hours after the skim."""
    low, high = CASHOUT_EVENTS
    counts = rng.integers(low, high + 1, k)
    steps = rng.uniform(*CASHOUT_GAP_S, (k, high))
    steps[:, 0] = rng.uniform(*CASHOUT_DELAY_S, k)
    offsets = np.cumsum(steps, axis=1)
    offsets[np.arange(high) >= counts[:, None]] = np.nan
    return offsets, counts, counts


_MOST_EVENTS = {
    CARD_TESTING: CARD_TESTING_BURST[1] + 1,
    ACCOUNT_TAKEOVER: TAKEOVER_EVENTS[1],
    COMPROMISED_MERCHANT: CASHOUT_EVENTS[1],
}
_OFFSETS = {
    CARD_TESTING: card_testing_offsets,
    ACCOUNT_TAKEOVER: takeover_offsets,
    COMPROMISED_MERCHANT: cashout_offsets,
}


# --- one stream ---------------------------------------------------------------------------------------

_Payload = tuple[Account, Merchant, float, str, Channel, str | None, str | None, bool]
"""account, merchant, amount, country, channel, device_id, pattern, reported"""


@dataclass(slots=True)
class _Incident:
    """An incident whose details are drawn when it starts: its pattern, start and fraud event times (seconds
    from the stream's start, ascending) and, for card testing, how many of them are test charges."""

    pattern: str
    start: float
    times: list[float]
    count: int


class _Stream:
    """The mutable state of one `stream()` call: RNGs, clock, the heap of incidents and their events, counters."""

    def __init__(self, generator: TransactionGenerator, start: datetime, rate_per_s: float) -> None:
        config = generator.config
        self.gen = generator
        self.world = generator.world
        # The start is part of the seed: a live stream that continues a history from the same seed must not
        # repeat the history's first draws.
        start_us = round(start.timestamp() * 1e6)
        seeds = np.random.SeedSequence([config.seed, 0x6E4E, start_us & (2**63 - 1)])
        self.rng = np.random.default_rng(seeds)
        self.rand = random.Random(int(seeds.generate_state(1, np.uint64)[0]))
        self.incident_rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x1AC1]))
        self.start = start
        self.start_epoch = start.timestamp()
        self.rhythm = config.rhythm
        self.peak = max(DAILY_RHYTHM) if config.rhythm else 1.0
        rates = incident_rates(config.fraud_rate)
        # A skim is a legitimate event of its own (the cash-outs are the fraud), so arrivals make up the rest.
        legitimate_share = 1.0 - config.fraud_rate - rates[COMPROMISED_MERCHANT]
        self.candidate_rate = rate_per_s * legitimate_share * self.peak
        self.spacing = {p: 1.0 / (rate_per_s * r) for p, r in rates.items() if r > 0.0}
        """Mean distance between anchors of each pattern, in operational time."""
        self.day_offset = self.start_epoch % _DAY_S
        self.op_offset = float(np.interp(self.day_offset, _RHYTHM_GRID_S, _RHYTHM_CUM))
        self.next_anchor: dict[str, float] = {}
        self.horizon: dict[str, float] = {}
        self.pending: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        for p, spacing in self.spacing.items():
            # Far enough back that the jittered anchors have forgotten where they began.
            self.next_anchor[p] = self.op_time(-SPAN_S[p]) - spacing * (20.0 + self.rand.random())
            self.horizon[p] = -math.inf
            none, count = np.empty(0), np.empty(0, dtype=np.int64)
            self.pending[p] = (none, none, np.empty((0, _MOST_EVENTS[p])), count, count)
        self.clock = 0.0
        self.heap: list[tuple[float, int, _Payload | _Incident]] = []
        self.scheduled = 0
        self.emitted = 0
        stamp = start.strftime("%Y%m%dT%H%M%S") + (f".{start.microsecond:06d}" if start.microsecond else "")
        self.id_prefix = f"evt-{config.seed}-{stamp}-"
        self.drift = config.drift
        self.drift_from = config.drift.after_events if config.drift is not None else math.inf
        # Compromise windows back to back: window i ends at compromise_ends[i]; the first reaches back far
        # enough for every skim of a card cashed out after `start`.
        self.compromise_ends = [-2.0 * SPAN_S[COMPROMISED_MERCHANT] - self.rand.uniform(*COMPROMISE_WINDOW_S)]
        self.compromised = [self.new_compromise()]
        self.victims: dict[int, tuple[tuple[int, ...], tuple[float, ...]]] = {}

    def run(self) -> Iterator[GeneratedEvent]:
        heap = self.heap
        while True:
            times, accounts, factors = self.block()
            self.add_incidents(self.clock)
            for t, a, factor in zip(times, accounts, factors, strict=True):
                while heap and heap[0][0] <= t:
                    when, _, item = heappop(heap)
                    if isinstance(item, _Incident):
                        self.begin(item)
                    else:
                        yield self.event(when, *item)
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
        reported: bool,
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
        if pattern is None:
            return GeneratedEvent(transaction, False, None)
        delay = self.rand.uniform(*REPORT_DELAY_FACTOR) if reported else 1.0
        return GeneratedEvent(transaction, True, pattern, reported=reported, label_delay_factor=delay)

    def push(self, t: float, item: _Payload | _Incident) -> None:
        self.scheduled += 1
        heappush(self.heap, (t, self.scheduled, item))

    # --- operational time ---------------------------------------------------------------------------

    def op_time(self, t: float) -> float:
        """Operational time at `t` (seconds from the start): the integral of the rhythm since the start."""
        if not self.rhythm:
            return t
        x = self.day_offset + t
        days = math.floor(x / _DAY_S)
        return float(np.interp(x - days * _DAY_S, _RHYTHM_GRID_S, _RHYTHM_CUM)) + days * _DAY_S - self.op_offset

    def real_times(self, op: np.ndarray) -> np.ndarray:
        """Seconds from the start at operational times `op`: the inverse of `op_time`."""
        if not self.rhythm:
            return op
        x = op + self.op_offset
        days = np.floor(x / _DAY_S)
        times: np.ndarray = np.interp(x - days * _DAY_S, _RHYTHM_CUM, _RHYTHM_GRID_S) + days * _DAY_S
        return times - self.day_offset

    # --- incidents ----------------------------------------------------------------------------------

    def add_incidents(self, until: float) -> None:
        """Put every incident whose first event from the stream's start on is by `until` on the heap."""
        for pattern in self.spacing:
            if self.horizon[pattern] < until + SPAN_S[pattern]:
                self.draw_incidents(pattern, until + 1.5 * SPAN_S[pattern])
            keys, begins, offsets, sizes, counts = self.pending[pattern]
            n = int(np.searchsorted(keys, until, side="right"))
            if not n:
                continue
            for key, begin, row, size, count in zip(
                keys[:n].tolist(),
                begins[:n].tolist(),
                offsets[:n].tolist(),
                sizes[:n].tolist(),
                counts[:n].tolist(),
                strict=True,
            ):
                self.push(key, _Incident(pattern, begin, [begin + o for o in row[:size]], count))
            self.pending[pattern] = (keys[n:], begins[n:], offsets[n:], sizes[n:], counts[n:])

    def draw_incidents(self, pattern: str, horizon: float) -> None:
        """Draw the incidents of `pattern` anchored up to `horizon` into its pending ones, which are ordered by
        the time of their first event from the stream's start on (an incident starts at most its span before
        its anchor). Incidents that started before the start keep their events from the start on."""
        rng, spacing = self.incident_rng, self.spacing[pattern]
        parts = [self.pending[pattern]]
        while self.horizon[pattern] < horizon:
            need = (self.op_time(horizon) - self.next_anchor[pattern]) / spacing
            k = min(int(need) + 16, _INCIDENT_CHUNK)
            steps = spacing * (1.0 + ANCHOR_JITTER * (2.0 * rng.random(k) - 1.0))
            ops = self.next_anchor[pattern] + np.cumsum(steps)
            self.next_anchor[pattern] = float(ops[-1])
            anchors = self.real_times(ops)
            self.horizon[pattern] = float(anchors[-1])
            offsets, sizes, counts = _OFFSETS[pattern](rng, k)
            begins = anchors - np.nansum(offsets, axis=1) / sizes
            times = begins[:, None] + offsets
            keep = times[np.arange(k), sizes - 1] >= 0.0
            first = np.where(times >= 0.0, times, np.inf).min(axis=1)
            keys = np.where(begins >= 0.0, begins, first)
            parts.append((keys[keep], begins[keep], offsets[keep], sizes[keep], counts[keep]))
        keys, begins, offsets, sizes, counts = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
        order = np.argsort(keys, kind="stable")
        self.pending[pattern] = (keys[order], begins[order], offsets[order], sizes[order], counts[order])

    def begin(self, incident: _Incident) -> None:
        """Draw the incident's details and schedule its events from the stream's start on."""
        pattern = incident.pattern
        if pattern == CARD_TESTING:
            events = self.card_testing(incident)
        elif pattern == ACCOUNT_TAKEOVER:
            events = self.account_takeover(incident)
        else:
            events = self.compromised_merchant(incident)
        for t, payload in events:
            if t >= 0.0:
                self.push(t, payload)

    # --- legitimate ---------------------------------------------------------------------------------

    def legitimate(self, t: float, a: int, factor: float) -> GeneratedEvent:
        rand = self.rand
        world = self.world
        account = world.accounts[a]
        home = account.country
        country = home
        scale = 1.0
        drift = self.drift
        merchant: Merchant | None = None
        travel = rand.random() < TRAVEL_SHARE
        if rand.random() < SPLURGE_SHARE:
            merchant = world.merchants[rand.choice(self.gen.splurge_merchants[home])]
            factor *= rand.uniform(*SPLURGE_MULTIPLIER) * TYPICAL_AMOUNT_EUR / merchant.amount_scale
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
            if rand.random() < NEW_DEVICE_SHARE:
                device = self.new_device()
            else:
                device = account.devices[int(rand.random() * len(account.devices))]
        else:
            country = merchant.country
            if channel == "contactless" and rand.random() < WALLET_SHARE:
                device = account.devices[0]
        return self.event(t, account, merchant, amount, country, channel, device, None, True)

    # --- fraud --------------------------------------------------------------------------------------

    def fraud_merchant(self, pool: tuple[int, ...]) -> int:
        """A merchant of `pool` for a fraudulent purchase, or one with weak controls (FRAUD_AT_WEAK_MERCHANT)."""
        rand = self.rand
        return rand.choice(self.gen.weak_merchants if rand.random() < FRAUD_AT_WEAK_MERCHANT else pool)

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

    def card_testing(self, incident: _Incident) -> list[tuple[float, _Payload]]:
        """Tiny test charges at one online merchant from an unseen device, sometimes a large purchase after."""
        rand, world, gen = self.rand, self.world, self.gen
        account = world.accounts[world.account_by_activity(rand.random())]
        device = self.new_device()
        country = account.country if rand.random() < 0.4 else rand.choice(RISK_COUNTRIES)
        preferred = rand.random() < CARD_TESTING_PREFERRED_SHARE
        merchant = world.merchants[
            self.fraud_merchant(gen.card_testing_merchants if preferred else gen.online_merchants)
        ]
        reported = rand.random() < REPORTED_SHARE
        events: list[tuple[float, _Payload]] = []
        for k, when in enumerate(incident.times):
            if when < 0.0:
                continue
            if k < incident.count:
                amount = round(rand.uniform(*CARD_TESTING_AMOUNT), 2)
                events.append((when, (account, merchant, amount, country, "ecommerce", device, CARD_TESTING, reported)))
            else:
                target = world.merchants[self.fraud_merchant(gen.takeover_merchants)]
                amount = self.large_amount(account, TAKEOVER_MULTIPLIER, 150.0)
                events.append((when, (account, target, amount, country, "ecommerce", device, CARD_TESTING, reported)))
        return events

    def account_takeover(self, incident: _Incident) -> list[tuple[float, _Payload]]:
        """Large purchases at electronics, jewelry or gambling merchants from a new device abroad."""
        rand, world, gen = self.rand, self.world, self.gen
        account = world.accounts[world.account_by_activity(rand.random())]
        quiet = rand.random() < TAKEOVER_QUIET_SHARE
        if quiet:
            device = rand.choice(account.devices)
            country = account.country
            merchants = gen.online_merchants
        else:
            device = self.new_device()
            country = self.fraud_country(account.country, TAKEOVER_RISK_COUNTRY_SHARE)
            merchants = gen.takeover_merchants
        reported = rand.random() < REPORTED_SHARE
        events: list[tuple[float, _Payload]] = []
        for when in incident.times:
            if when < 0.0:
                continue
            merchant = world.merchants[self.fraud_merchant(merchants)]
            if quiet:
                factor = math.exp(account.amount_mu + account.amount_sigma * rand.gauss(0.0, 1.0))
                amount = clean_amount(factor * merchant.amount_scale * rand.uniform(*TAKEOVER_QUIET_MULTIPLIER))
            else:
                amount = self.large_amount(account, TAKEOVER_MULTIPLIER, 150.0)
            events.append((when, (account, merchant, amount, country, "ecommerce", device, ACCOUNT_TAKEOVER, reported)))
        return events

    def compromised_merchant(self, incident: _Incident) -> list[tuple[float, _Payload]]:
        """A regular customer's card-present purchase at the merchant compromised at the start (legitimate,
        the point of compromise), then online spend with the skimmed card from an unseen device."""
        rand, world, gen = self.rand, self.world, self.gen
        skim = incident.start
        account, merchant = self.victim(skim)
        reported = rand.random() < REPORTED_SHARE
        events: list[tuple[float, _Payload]] = []
        if skim >= 0.0:
            factor = math.exp(account.amount_mu + account.amount_sigma * rand.gauss(0.0, 1.0))
            amount = clean_amount(factor * merchant.amount_scale)
            channel = choose_channel(0.0, amount / account.units_per_eur, 1.0, rand.random())
            events.append((skim, (account, merchant, amount, merchant.country, channel, None, None, True)))
        device = self.new_device()
        country = account.country if rand.random() < 0.5 else rand.choice(RISK_COUNTRIES)
        for when in incident.times:
            if when < 0.0:
                continue
            target = world.merchants[self.fraud_merchant(gen.cashout_merchants)]
            amount = self.large_amount(account, CASHOUT_MULTIPLIER, 50.0)
            payload: _Payload = (account, target, amount, country, "ecommerce", device, COMPROMISED_MERCHANT, reported)
            events.append((when, payload))
        return events

    def new_compromise(self) -> int:
        gen = self.gen
        return _pick(gen.compromise_candidates, gen.compromise_cum, self.rand.random())

    def victim(self, t: float) -> tuple[Account, Merchant]:
        """A regular customer of the merchant compromised at `t`."""
        ends = self.compromise_ends
        while t >= ends[-1]:
            ends.append(ends[-1] + self.rand.uniform(*COMPROMISE_WINDOW_S))
            self.compromised.append(self.new_compromise())
        compromised = self.compromised[bisect_right(ends, t)]
        victims = self.victims.get(compromised)
        if victims is None:
            members = self.world.customers[compromised]
            victims = members, cumulative([self.world.accounts[v].activity for v in members])
            self.victims[compromised] = victims
        world = self.world
        return world.accounts[_pick(*victims, self.rand.random())], world.merchants[compromised]
