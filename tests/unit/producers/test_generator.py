"""The generator is deterministic, valid, time-ordered, has the fraud it promises and the daily rhythm.

One large sample (200 000 events over about three simulated days) is generated once per module and
checked from several angles; smaller streams cover determinism and configuration errors.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from typing import Any

import pytest

from producers.drift import DriftSpec
from producers.generator import (
    ACCOUNT_TAKEOVER,
    CARD_TESTING,
    CARD_TESTING_BURST,
    COMPROMISE_MCCS,
    COMPROMISED_MERCHANT,
    FRAUD_AT_WEAK_MERCHANT,
    NEW_DEVICE_SHARE,
    PATTERN_SHARES,
    PATTERNS,
    REPORT_DELAY_FACTOR,
    SPAN_S,
    SPLURGE_SHARE,
    TAKEOVER_EVENTS,
    TAKEOVER_MCCS,
    TAKEOVER_QUIET_SHARE,
    WEAK_MERCHANT_SHARE,
    GeneratedEvent,
    GeneratorConfig,
    TransactionGenerator,
)
from producers.world import World, build_world
from streamscore.contracts import Transaction, decode_transaction

START = datetime(2024, 1, 1, tzinfo=UTC)
SAMPLE_EVENTS = 200_000
SAMPLE_RATE = SAMPLE_EVENTS / (3 * 86400)
"""About three simulated days, so the rhythm and the fraud mix average over whole days."""
FRAUD_RATE = 0.01
FRAUD_TOLERANCE = 0.15
"""Relative: the realised fraud share on 200 000 events is within 15 % of the configured rate."""


def take(stream: Iterator[GeneratedEvent], n: int) -> list[GeneratedEvent]:
    return list(islice(stream, n))


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(11, accounts=5_000, merchants=800)


@pytest.fixture(scope="module")
def sample(world: World) -> list[GeneratedEvent]:
    generator = TransactionGenerator(world, GeneratorConfig(seed=5, fraud_rate=FRAUD_RATE))
    return take(generator.stream(START, SAMPLE_RATE), SAMPLE_EVENTS)


def groups(events: list[GeneratedEvent], pattern: str) -> dict[tuple[str, str | None], list[Transaction]]:
    """Fraud events of `pattern` by (account, device): every incident uses a device of its own."""
    result: dict[tuple[str, str | None], list[Transaction]] = defaultdict(list)
    for event in events:
        if event.pattern == pattern:
            result[event.transaction.account_id, event.transaction.device_id].append(event.transaction)
    return result


def account_index(account_id: str) -> int:
    return int(account_id.removeprefix("acc-"))


def whole(incidents: dict[tuple[str, str | None], list[Transaction]], pattern: str) -> list[list[Transaction]]:
    """The incidents that began after the stream's start: those under way at the start are seen from it on."""
    settled = START + timedelta(seconds=SPAN_S[pattern])
    return [events for events in incidents.values() if events[0].event_time >= settled]


# --- determinism ---------------------------------------------------------------------------------------


def test_same_seed_gives_identical_events(world: World) -> None:
    config = GeneratorConfig(seed=3, fraud_rate=0.05)
    first = take(TransactionGenerator(world, config).stream(START, 20.0), 3_000)
    second = take(TransactionGenerator(world, config).stream(START, 20.0), 3_000)
    again = TransactionGenerator(world, config)
    assert first == second
    assert take(again.stream(START, 20.0), 3_000) == take(again.stream(START, 20.0), 3_000)


def test_different_seed_gives_different_events(world: World) -> None:
    first = take(TransactionGenerator(world, GeneratorConfig(seed=3)).stream(START, 20.0), 500)
    second = take(TransactionGenerator(world, GeneratorConfig(seed=4)).stream(START, 20.0), 500)
    differing = sum(a.transaction.account_id != b.transaction.account_id for a, b in zip(first, second, strict=True))
    assert differing > 450


def test_same_world_seed_gives_same_world() -> None:
    first = build_world(2, accounts=300, merchants=100)
    second = build_world(2, accounts=300, merchants=100)
    other = build_world(3, accounts=300, merchants=100)
    assert first.accounts == second.accounts and first.merchants == second.merchants
    assert first.accounts != other.accounts


def test_event_ids_differ_between_streams_with_different_starts(world: World) -> None:
    generator = TransactionGenerator(world, GeneratorConfig(seed=3))
    early = {e.transaction.event_id for e in take(generator.stream(START, 20.0), 1_000)}
    later = {e.transaction.event_id for e in take(generator.stream(START + timedelta(days=1), 20.0), 1_000)}
    assert not early & later


# --- validity and ordering ------------------------------------------------------------------------------


def test_every_event_round_trips_through_the_contract(sample: list[GeneratedEvent]) -> None:
    for event in sample:
        transaction = event.transaction
        # window=None: the events are dated from START (the past); what is checked is the contract's shape.
        decoded = decode_transaction(transaction.account_id.encode(), transaction.to_json(), window=None)
        assert decoded == transaction
        assert event.is_fraud == (event.pattern is not None)


def test_events_are_time_ordered_with_unique_ids(sample: list[GeneratedEvent]) -> None:
    times = [e.transaction.event_time for e in sample]
    assert all(a <= b for a, b in pairwise(times))
    assert times[0] >= START
    assert len({e.transaction.event_id for e in sample}) == len(sample)


def test_mean_rate_matches_the_requested_rate(sample: list[GeneratedEvent]) -> None:
    two_days = START + timedelta(days=2)
    count = sum(e.transaction.event_time < two_days for e in sample)
    assert count / (2 * 86400) == pytest.approx(SAMPLE_RATE, rel=0.05)


# --- fraud ------------------------------------------------------------------------------------------------


def test_fraud_rate_is_within_tolerance(sample: list[GeneratedEvent]) -> None:
    frauds = sum(e.is_fraud for e in sample)
    assert abs(frauds / len(sample) - FRAUD_RATE) <= FRAUD_TOLERANCE * FRAUD_RATE


def test_fraud_follows_the_rhythm_where_it_happens(sample: list[GeneratedEvent]) -> None:
    """Fraud events come minutes to hours after their incident starts; the share must not carry the busy
    evening into the night nor the quiet night into the morning."""

    def share(hours: set[int]) -> float:
        events = [e for e in sample if e.transaction.event_time.hour in hours]
        return sum(e.is_fraud for e in events) / len(events)

    late, morning = share({21, 22, 23, 0, 1, 2}), share({5, 6, 7, 8, 9, 10})
    assert late / morning == pytest.approx(1.0, abs=0.3)


@pytest.mark.parametrize("rhythm", [True, False], ids=["rhythm", "flat"])
@pytest.mark.parametrize("rate", [5.0, 500.0, 5_000.0])
def test_fraud_share_is_right_from_the_first_event(world: World, rate: float, rhythm: bool) -> None:
    """A short live run sees the configured share too: incidents under way at the start are in the stream."""
    generator = TransactionGenerator(world, GeneratorConfig(seed=1, fraud_rate=FRAUD_RATE, rhythm=rhythm))
    events = take(generator.stream(START, rate), 20_000)
    assert events[0].transaction.event_time >= START
    assert sum(e.is_fraud for e in events) / len(events) == pytest.approx(FRAUD_RATE, rel=0.25)


def test_cash_outs_of_cards_skimmed_before_the_start_come_at_once(world: World) -> None:
    generator = TransactionGenerator(world, GeneratorConfig(seed=1, fraud_rate=FRAUD_RATE, rhythm=False))
    events = take(generator.stream(START, 5_000.0), 20_000)
    # Four simulated seconds: a cash-out follows its skim by ten minutes at least.
    assert events[-1].transaction.event_time < START + timedelta(seconds=10)
    assert {e.pattern for e in events if e.is_fraud} == set(PATTERNS)


def test_every_pattern_is_present_in_its_share(sample: list[GeneratedEvent]) -> None:
    counts = Counter(e.pattern for e in sample if e.is_fraud)
    total = sum(counts.values())
    assert set(counts) == set(PATTERNS)
    for pattern, share in PATTERN_SHARES.items():
        assert counts[pattern] / total == pytest.approx(share, rel=0.3), pattern


def test_card_testing_is_a_burst_of_tiny_amounts_within_minutes(world: World, sample: list[GeneratedEvent]) -> None:
    incidents = groups(sample, CARD_TESTING)
    assert len(whole(incidents, CARD_TESTING)) > 50
    for (account_id, device), events in incidents.items():
        account = world.accounts[account_index(account_id)]
        assert device is not None and device not in account.devices
        assert all(t.channel == "ecommerce" for t in events)
    for events in whole(incidents, CARD_TESTING):
        tiny = [t for t in events if t.amount <= 3.0]
        large = [t for t in events if t.amount > 3.0]
        low, high = CARD_TESTING_BURST
        assert low <= len(tiny) <= high
        assert all(t.amount >= 0.5 for t in tiny)
        assert tiny[-1].event_time - tiny[0].event_time <= timedelta(minutes=5)
        assert len({t.merchant_id for t in tiny}) == 1
        assert len(large) <= 1 and all(t.event_time > tiny[-1].event_time for t in large)


def test_account_takeover_is_loud_from_a_new_device_abroad_or_quiet_from_the_accounts_own(
    world: World, sample: list[GeneratedEvent]
) -> None:
    incidents = groups(sample, ACCOUNT_TAKEOVER)
    # A quiet incident uses one of the account's own devices, so two on one account may share a group.
    loud = {k: v for k, v in incidents.items() if k[1] not in world.accounts[account_index(k[0])].devices}
    assert len(whole(loud, ACCOUNT_TAKEOVER)) > 25
    assert all(TAKEOVER_EVENTS[0] <= len(events) <= TAKEOVER_EVENTS[1] for events in whole(loud, ACCOUNT_TAKEOVER))
    weak = {world.merchants[i].merchant_id for i in TransactionGenerator(world).weak_merchants}
    kinds: Counter[str] = Counter()
    for (account_id, device), events in incidents.items():
        account = world.accounts[account_index(account_id)]
        assert device is not None
        assert all(t.channel == "ecommerce" for t in events)
        if device in account.devices:  # the fraudster imitates the account: its own device, at home
            kinds["quiet"] += 1
            assert all(t.country == account.country for t in events)
        else:
            kinds["loud"] += 1
            assert events[-1].event_time - events[0].event_time <= timedelta(hours=1)
            assert all(t.country != account.country for t in events)
            assert all(t.amount >= 5 * account.typical_amount for t in events)
            assert all(t.merchant_category in TAKEOVER_MCCS or t.merchant_id in weak for t in events)
    share = kinds["quiet"] / sum(kinds.values())
    assert abs(share - TAKEOVER_QUIET_SHARE) < 0.15, kinds


def test_some_fraud_is_never_reported_and_reports_come_late(sample: list[GeneratedEvent]) -> None:
    fraud = [e for e in sample if e.is_fraud]
    unreported = [e for e in fraud if not e.reported]
    assert 0.05 < len(unreported) / len(fraud) < 0.3
    assert all(not e.labeled_fraud and e.label_delay_factor == 1.0 for e in unreported)
    reported = [e.label_delay_factor for e in fraud if e.reported]
    assert min(reported) >= REPORT_DELAY_FACTOR[0] and max(reported) <= REPORT_DELAY_FACTOR[1]
    assert max(reported) - min(reported) > 0.5
    assert all(e.reported and e.label_delay_factor == 1.0 and not e.labeled_fraud for e in sample if not e.is_fraud)


def test_fraud_concentrates_at_merchants_with_weak_controls(world: World, sample: list[GeneratedEvent]) -> None:
    generator = TransactionGenerator(world)
    weak = {world.merchants[i].merchant_id for i in generator.weak_merchants}
    assert 0 < len(weak) <= 2 * WEAK_MERCHANT_SHARE * len(generator.online_merchants)
    fraud = [e.transaction for e in sample if e.is_fraud]
    legit = [e.transaction for e in sample if not e.is_fraud]
    at_weak = sum(t.merchant_id in weak for t in fraud) / len(fraud)
    assert FRAUD_AT_WEAK_MERCHANT - 0.1 < at_weak < FRAUD_AT_WEAK_MERCHANT + 0.1
    assert sum(t.merchant_id in weak for t in legit) / len(legit) < 0.05


def test_legitimate_events_include_new_devices_and_large_purchases(world: World, sample: list[GeneratedEvent]) -> None:
    legit = [e.transaction for e in sample if not e.is_fraud]
    ecommerce = [t for t in legit if t.channel == "ecommerce"]
    unseen = sum(t.device_id not in world.accounts[account_index(t.account_id)].devices for t in ecommerce)
    assert 0.5 * NEW_DEVICE_SHARE < unseen / len(ecommerce) < 2 * NEW_DEVICE_SHARE
    large = sum(t.amount >= 5 * world.accounts[account_index(t.account_id)].typical_amount for t in legit)
    assert large / len(legit) > 0.3 * SPLURGE_SHARE


def test_compromised_merchant_cash_outs_follow_a_purchase_at_a_shared_merchant(
    world: World, sample: list[GeneratedEvent]
) -> None:
    card_present: dict[str, list[Transaction]] = defaultdict(list)
    for event in sample:
        t = event.transaction
        if not event.is_fraud and t.channel != "ecommerce" and t.merchant_category in COMPROMISE_MCCS:
            card_present[t.account_id].append(t)
    incidents = groups(sample, COMPROMISED_MERCHANT)
    # Cash-outs of cards skimmed before the stream started have their skim outside the sample.
    settled = START + timedelta(hours=4)
    victims_by_merchant: dict[str, set[str]] = defaultdict(set)
    checked = 0
    for (account_id, device), events in incidents.items():
        account = world.accounts[account_index(account_id)]
        assert device is not None and device not in account.devices
        assert all(t.channel == "ecommerce" for t in events)
        first = events[0].event_time
        if first < settled:
            continue
        skims = [t for t in card_present[account_id] if first - timedelta(hours=3, minutes=1) <= t.event_time < first]
        assert skims, account_id
        for skim in skims:
            victims_by_merchant[skim.merchant_id].add(account_id)
        checked += 1
    assert checked > 50
    # Victims share their point of compromise: a few merchants explain many cash-outs.
    assert max(len(v) for v in victims_by_merchant.values()) >= 10


# --- legitimate behaviour and rhythm ----------------------------------------------------------------------


def test_legitimate_events_follow_account_habits(world: World, sample: list[GeneratedEvent]) -> None:
    legit = [e.transaction for e in sample if not e.is_fraud]
    home = 0
    for t in legit:
        account = world.accounts[account_index(t.account_id)]
        home += t.country == account.country
        assert t.currency == account.currency
        # A legitimate unseen device is a new phone or browser, only ever online.
        assert t.device_id is None or t.device_id in account.devices or t.channel == "ecommerce"
        if t.channel == "ecommerce":
            assert t.device_id is not None
        if t.merchant_category == "5541":  # fuel stations sell nothing online
            assert t.channel != "ecommerce"
    assert home / len(legit) > 0.95


def test_activity_is_heavy_tailed(sample: list[GeneratedEvent]) -> None:
    per_account = sorted(Counter(e.transaction.account_id for e in sample).values(), reverse=True)
    top_share = sum(per_account[: len(per_account) // 10]) / sum(per_account)
    assert top_share > 0.3


def test_nights_are_quieter_than_midday(sample: list[GeneratedEvent]) -> None:
    hours = Counter(e.transaction.event_time.hour for e in sample)
    night = hours[2] + hours[3] + hours[4]
    midday = hours[11] + hours[12] + hours[13]
    assert night < 0.2 * midday


def test_without_rhythm_the_rate_is_flat(world: World) -> None:
    generator = TransactionGenerator(world, GeneratorConfig(seed=5, rhythm=False))
    events = take(generator.stream(START, 0.5), 43_200)
    hours = Counter(e.transaction.event_time.hour for e in events)
    night = hours[2] + hours[3] + hours[4]
    midday = hours[11] + hours[12] + hours[13]
    assert night / midday == pytest.approx(1.0, rel=0.15)


def test_without_fraud_rate_there_is_no_fraud(world: World) -> None:
    generator = TransactionGenerator(world, GeneratorConfig(seed=5, fraud_rate=0.0))
    assert not any(e.is_fraud for e in take(generator.stream(START, 50.0), 20_000))


# --- configuration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"fraud_rate": -0.1}, {"fraud_rate": 0.9}, {"seed": -1}, {"seed": 2**63}])
def test_invalid_config_is_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        GeneratorConfig(**kwargs)


def test_invalid_stream_arguments_are_rejected(world: World) -> None:
    generator = TransactionGenerator(world)
    with pytest.raises(ValueError, match="timezone"):
        generator.stream(datetime(2024, 1, 1), 1.0)
    with pytest.raises(ValueError, match="rate_per_s"):
        generator.stream(START, 0.0)


def test_drift_category_already_in_the_world_is_rejected(world: World) -> None:
    drift = DriftSpec(after_events=0, new_category="5411", new_category_share=0.1)
    with pytest.raises(ValueError, match="5411"):
        TransactionGenerator(world, GeneratorConfig(drift=drift))
