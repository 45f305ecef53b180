"""The one feature computation, used offline (training set from the history) and online (the Faust
processor keeps the state, the scorer and the API compute a transaction's model inputs).

Two halves, both pure:

1. `AccountState` + `apply_transaction`: per-account real-time state, updated in event order. After each
   transaction the state's `snapshot()` is what the stream processor pushes to the Feast online store
   (feature view `account_realtime`): window counts and sums *as of that transaction, including it*,
   the account's known devices and countries, and the time of its last transaction.
2. `transaction_features`: a transaction's model inputs from the transaction itself and what the stores
   hold *before* it — the latest real-time snapshot (state after the account's previous transaction), the
   batch account profile and the merchant's risk. "Seconds since the previous transaction", "amount
   relative to the usual" and the new-device / new-country flags are computed here, at request time.

Offline, running `apply_transaction` over the history in event order and calling `transaction_features`
with the snapshot taken *before* each transaction gives exactly the values the scorer computes online
from the pushed snapshot: there is no second implementation to drift apart (a test proves it).

Windows are evaluated at the time of the snapshot's last transaction: a snapshot pushed at 10:00 says
"3 transactions in the last 5 minutes" even when read at 10:20. `seconds_since_last` tells the model how
old the snapshot is; offline and online see the same staleness, so there is no train/serve skew.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

WINDOWS_S: Mapping[str, float] = {"5m": 300.0, "1h": 3600.0, "24h": 86400.0}
KNOWN_LIMIT = 16
"""Devices / countries remembered per account (most recent first); older ones are forgotten."""
SEEN_LIMIT = 256
"""Event ids remembered per account for idempotency (beyond the 24 h window's own ids)."""
IDLE_S = 2 * 86400.0
"""An account idle this long starts afresh at its next transaction: its windows are empty by then (24 h), and its
remembered devices, countries and event ids are forgotten — what the online store shows by then too (the
`account_realtime` view's TTL is this, feature_repo/layout.py). It is what bounds the stream processor's table: a row
idle longer than this plus the event-time window's lateness can never be folded into again, only restarted, so it is
dropped (stream_processors/accounts/evict.py) and offline and online stay one computation."""
NO_HISTORY_S = 30 * 86400.0
"""`seconds_since_last` of an account with no previous transaction (documented default)."""
FUTURE_GUARD_S = 86400.0
"""`apply_transaction` refuses an event more than this far ahead of the wall clock. The contract's event-time window
(5 minutes ahead by default, at most an hour) refuses such an event first, at every receiving point; this guard
holds even for a caller that skipped it, because the state trims its history against its newest event: one event
dated 2100 once made every later event of its account "late" for 74 years (issue 12)."""


# --- 1. real-time state ---------------------------------------------------------------------------


@dataclass(slots=True)
class AccountState:
    """What the stream processor keeps per account (a Faust table row, JSON-serializable via as_dict)."""

    events: deque[tuple[float, float, str, str]] = field(default_factory=deque)
    """(event time as epoch seconds, amount, merchant_id, event_id) of the last 24 h, oldest first."""
    devices: list[str] = field(default_factory=list)
    countries: list[str] = field(default_factory=list)
    last_event_ts: float | None = None
    seen: deque[str] = field(default_factory=deque)

    def as_dict(self) -> dict[str, object]:
        return {
            "events": [list(e) for e in self.events],
            "devices": list(self.devices),
            "countries": list(self.countries),
            "last_event_ts": self.last_event_ts,
            "seen": list(self.seen),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> AccountState:
        events = data.get("events") or []
        assert isinstance(events, list)
        return cls(
            events=deque((float(t), float(a), str(m), str(i)) for t, a, m, i in events),
            devices=[str(d) for d in data.get("devices") or []],  # type: ignore[attr-defined]
            countries=[str(c) for c in data.get("countries") or []],  # type: ignore[attr-defined]
            last_event_ts=None if data.get("last_event_ts") is None else float(data["last_event_ts"]),  # type: ignore[arg-type]
            seen=deque(str(s) for s in data.get("seen") or []),  # type: ignore[attr-defined]
        )

    def snapshot(self) -> RealtimeSnapshot:
        """The account_realtime feature values as of the last applied transaction."""
        if self.last_event_ts is None:
            return RealtimeSnapshot.empty()
        now = self.last_event_ts
        counts: dict[str, int] = {}
        sums: dict[str, float] = {}
        for name, span in WINDOWS_S.items():
            inside = [amount for ts, amount, _, _ in self.events if now - ts < span]
            counts[name] = len(inside)
            sums[name] = round(sum(inside), 6)
        merchants_1h = {m for ts, _, m, _ in self.events if now - ts < WINDOWS_S["1h"]}
        return RealtimeSnapshot(
            tx_count_5m=counts["5m"],
            tx_count_1h=counts["1h"],
            tx_count_24h=counts["24h"],
            amount_sum_5m=sums["5m"],
            amount_sum_1h=sums["1h"],
            amount_sum_24h=sums["24h"],
            distinct_merchants_1h=len(merchants_1h),
            last_event_ts=now,
            known_devices=tuple(self.devices),
            known_countries=tuple(self.countries),
        )


@dataclass(frozen=True, slots=True)
class TransactionFacts:
    """The fields of a transaction the features read (a Transaction, a Parquet row or a Faust record)."""

    event_id: str
    account_id: str
    merchant_id: str
    merchant_category: str
    amount: float
    currency: str
    country: str
    channel: str
    device_id: str | None
    event_ts: float
    """Event time as epoch seconds."""

    @classmethod
    def of(cls, tx: object) -> TransactionFacts:
        event_time = tx.event_time  # type: ignore[attr-defined]
        ts = event_time.timestamp() if isinstance(event_time, datetime) else float(event_time)
        # Positional, in field order: keyword arguments cost a third more, once per transaction scored.
        return cls(
            tx.event_id,  # type: ignore[attr-defined]
            tx.account_id,  # type: ignore[attr-defined]
            tx.merchant_id,  # type: ignore[attr-defined]
            tx.merchant_category,  # type: ignore[attr-defined]
            float(tx.amount),  # type: ignore[attr-defined]
            tx.currency,  # type: ignore[attr-defined]
            tx.country,  # type: ignore[attr-defined]
            tx.channel,  # type: ignore[attr-defined]
            tx.device_id,  # type: ignore[attr-defined]
            ts,
        )


def _remember(items: list[str], value: str | None) -> list[str]:
    if value is None:
        return items
    return [value, *[i for i in items if i != value]][:KNOWN_LIMIT]


class FutureEventError(ValueError):
    """An event too far ahead of the wall clock to fold into an account's state (see FUTURE_GUARD_S)."""


def apply_transaction(state: AccountState, tx: TransactionFacts, *, latest_s: float | None = None) -> bool:
    """Fold one transaction into the account's state. Returns False (and changes nothing) when the event
    was already applied (a redelivery) or is older than the 24 h window of the latest event (too late to
    matter): at-least-once delivery then yields exactly-once state. An event `IDLE_S` or more after the latest one
    folds into a fresh state.

    Raises FutureEventError (and changes nothing) for an event after `latest_s` (default: the wall clock plus
    FUTURE_GUARD_S; history and live events are never past the wall clock, so their features do not change). A state
    that an earlier event did move past it (before this guard) forgets that event's entries first and heals."""
    limit = time.time() + FUTURE_GUARD_S if latest_s is None else latest_s
    if tx.event_ts > limit:
        raise FutureEventError(f"event {tx.event_id} at {tx.event_ts:.0f} is after {limit:.0f} (epoch seconds)")
    if state.last_event_ts is not None and state.last_event_ts > limit:
        _forget_after(state, limit)
    if tx.event_id in state.seen:
        return False
    if state.last_event_ts is not None and tx.event_ts <= state.last_event_ts - WINDOWS_S["24h"]:
        return False
    if state.last_event_ts is not None and tx.event_ts - state.last_event_ts >= IDLE_S:
        # Idle past IDLE_S: start afresh (what an evicted row does).
        state.events, state.devices, state.countries, state.seen = deque(), [], [], deque()
        state.last_event_ts = None
    entry = (tx.event_ts, tx.amount, tx.merchant_id, tx.event_id)
    if state.events and tx.event_ts < state.events[-1][0]:
        # Slightly out of order (another producer's clock): keep the deque sorted by time.
        items = sorted([*state.events, entry])
        state.events = deque(items)
    else:
        state.events.append(entry)
    latest = max(tx.event_ts, state.last_event_ts or tx.event_ts)
    while state.events and latest - state.events[0][0] >= WINDOWS_S["24h"]:
        state.events.popleft()
    state.devices = _remember(state.devices, tx.device_id)
    state.countries = _remember(state.countries, tx.country)
    state.last_event_ts = latest
    state.seen.append(tx.event_id)
    while len(state.seen) > SEEN_LIMIT:
        state.seen.popleft()
    return True


def _forget_after(state: AccountState, limit: float) -> None:
    state.events = deque(entry for entry in state.events if entry[0] <= limit)
    state.last_event_ts = state.events[-1][0] if state.events else None


# --- what the stores hold ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RealtimeSnapshot:
    """Feature view `account_realtime` (push source), one row per account."""

    tx_count_5m: int
    tx_count_1h: int
    tx_count_24h: int
    amount_sum_5m: float
    amount_sum_1h: float
    amount_sum_24h: float
    distinct_merchants_1h: int
    last_event_ts: float | None
    known_devices: tuple[str, ...]
    known_countries: tuple[str, ...]

    @classmethod
    def empty(cls) -> RealtimeSnapshot:
        return cls(0, 0, 0, 0.0, 0.0, 0.0, 0, None, (), ())


@dataclass(frozen=True, slots=True)
class AccountProfile:
    """Feature view `account_profile` (batch, 30 days), one row per account and day."""

    amount_mean_30d: float
    amount_std_30d: float
    tx_count_30d: int
    home_country: str
    usual_countries: tuple[str, ...]
    usual_devices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MerchantRisk:
    """Feature view `merchant_risk` (batch, 30 days), one row per merchant and day."""

    fraud_rate_30d: float
    tx_count_30d: int


# --- 2. model inputs ----------------------------------------------------------------------------------

CHANNELS: tuple[str, ...] = ("pos", "ecommerce", "contactless")

FEATURE_NAMES: tuple[str, ...] = (
    "amount_log",
    "amount_vs_usual",
    "amount_zscore",
    "seconds_since_last_log",
    "tx_count_5m",
    "tx_count_1h",
    "tx_count_24h",
    "amount_sum_5m_log",
    "amount_sum_1h_log",
    "amount_sum_24h_log",
    "distinct_merchants_1h",
    "new_device",
    "new_country",
    "foreign_country",
    "no_device",
    "profile_tx_count_30d_log",
    "profile_amount_mean_30d_log",
    "merchant_fraud_rate_30d",
    "merchant_tx_count_30d_log",
    "hour_sin",
    "hour_cos",
    "channel_pos",
    "channel_ecommerce",
    "channel_contactless",
)
"""The ordered model inputs. Scaling and missing-value defaults live in the ONNX graph; these are raw."""

_ONE_HOT: dict[str, tuple[float, ...]] = {c: tuple(1.0 if c == d else 0.0 for d in CHANNELS) for c in CHANNELS}
_NO_CHANNEL = (0.0,) * len(CHANNELS)

PROFILE_DEFAULT_STD_FRACTION = 0.5
"""Without a profile std, amount_zscore uses this fraction of the mean as the spread."""


@dataclass(frozen=True, slots=True)
class FeatureRow:
    values: tuple[float, ...]
    missing: bool
    """True when the account has neither a real-time snapshot nor a profile (documented defaults used)."""
    partial: bool
    """True when some of the three sources were absent and took their defaults."""

    def as_dict(self) -> dict[str, float]:
        return dict(zip(FEATURE_NAMES, self.values, strict=True))


def _log(x: float) -> float:
    return math.log1p(max(x, 0.0))


def transaction_features(
    tx: TransactionFacts,
    realtime: RealtimeSnapshot | None,
    profile: AccountProfile | None,
    merchant: MerchantRisk | None,
) -> FeatureRow:
    """The model inputs of `tx`, from the state the stores hold *before* it. Absent sources take the
    documented defaults (no history, no profile, an unknown merchant), never an error."""
    rt = realtime or RealtimeSnapshot.empty()
    usual = profile.amount_mean_30d if profile and profile.amount_mean_30d > 0 else None
    spread = (
        profile.amount_std_30d
        if profile and profile.amount_std_30d > 0
        else (usual * PROFILE_DEFAULT_STD_FRACTION if usual else None)
    )
    since = NO_HISTORY_S if rt.last_event_ts is None else max(tx.event_ts - rt.last_event_ts, 0.0)
    # "Known" means: in the real-time state or in the profile (membership in either, no union built: this runs
    # once per transaction scored).
    usual_devices = profile.usual_devices if profile else ()
    usual_countries = profile.usual_countries if profile else ()
    device = tx.device_id
    new_device = (
        device is not None
        and bool(rt.known_devices or usual_devices)
        and device not in rt.known_devices
        and device not in usual_devices
    )
    new_country = bool(rt.known_countries or usual_countries) and (
        tx.country not in rt.known_countries and tx.country not in usual_countries
    )
    hour = (tx.event_ts % 86400.0) / 3600.0
    angle = 2 * math.pi * hour / 24.0
    log1p = math.log1p
    # `log1p(x) if not x < 0.0 else 0.0` is `_log(x)` (max keeps its first argument unless the second is greater)
    # without a call per value: this runs once per transaction scored.
    amount_sum_5m, amount_sum_1h, amount_sum_24h = rt.amount_sum_5m, rt.amount_sum_1h, rt.amount_sum_24h
    amount = tx.amount
    values = (
        log1p(amount) if not amount < 0.0 else 0.0,
        amount / usual if usual else 1.0,
        (amount - usual) / spread if usual and spread else 0.0,
        log1p(since) if not since < 0.0 else 0.0,
        float(rt.tx_count_5m),
        float(rt.tx_count_1h),
        float(rt.tx_count_24h),
        log1p(amount_sum_5m) if not amount_sum_5m < 0.0 else 0.0,
        log1p(amount_sum_1h) if not amount_sum_1h < 0.0 else 0.0,
        log1p(amount_sum_24h) if not amount_sum_24h < 0.0 else 0.0,
        float(rt.distinct_merchants_1h),
        1.0 if new_device else 0.0,
        1.0 if new_country else 0.0,
        1.0 if profile is not None and tx.country != profile.home_country else 0.0,
        1.0 if tx.device_id is None else 0.0,
        _log(profile.tx_count_30d) if profile else 0.0,
        _log(profile.amount_mean_30d) if profile else 0.0,
        merchant.fraud_rate_30d if merchant else 0.0,
        _log(merchant.tx_count_30d) if merchant else 0.0,
        math.sin(angle),
        math.cos(angle),
        *_ONE_HOT.get(tx.channel, _NO_CHANNEL),
    )
    missing = realtime is None and profile is None
    partial = not missing and (realtime is None or profile is None or merchant is None)
    return FeatureRow(values=values, missing=missing, partial=partial)


def replay(transactions: Sequence[TransactionFacts]) -> list[RealtimeSnapshot | None]:
    """Offline: for each transaction (any order), the real-time snapshot the online store held just before
    it — the state after the same account's previous transactions in event order."""
    order = sorted(range(len(transactions)), key=lambda i: (transactions[i].event_ts, transactions[i].event_id))
    states: dict[str, AccountState] = {}
    before: list[RealtimeSnapshot | None] = [None] * len(transactions)
    for i in order:
        tx = transactions[i]
        state = states.get(tx.account_id)
        if state is None:
            state = states[tx.account_id] = AccountState()
        else:
            before[i] = state.snapshot()
        apply_transaction(state, tx)
    return before
