"""Drift specs parse and validate, and the generator drifts exactly from `after_events` on, as specified."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import islice
from statistics import median

import pytest

from producers.drift import DriftSpec
from producers.generator import GeneratedEvent, GeneratorConfig, TransactionGenerator
from producers.world import World, build_world
from streamscore.contracts import decode_transaction

START = datetime(2024, 1, 1, tzinfo=UTC)
AFTER = 20_000
EVENTS = 2 * AFTER


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(11, accounts=5_000, merchants=800)


def drifted(world: World, drift: DriftSpec) -> list[GeneratedEvent]:
    generator = TransactionGenerator(world, GeneratorConfig(seed=9, rhythm=False, drift=drift))
    return list(islice(generator.stream(START, 20.0), EVENTS))


def home_of(world: World, account_id: str) -> str:
    return world.accounts[int(account_id.removeprefix("acc-"))].country


# --- parsing and validation ------------------------------------------------------------------------------


def test_parse_reads_every_key() -> None:
    spec = DriftSpec.parse("after=5000,amount_scale=2.0,foreign_share=0.3,new_category=6051,new_category_share=0.1")
    assert spec == DriftSpec(
        after_events=5000, amount_scale=2.0, foreign_share=0.3, new_category="6051", new_category_share=0.1
    )


def test_parse_tolerates_spaces_and_defaults_to_drift_from_the_start() -> None:
    assert DriftSpec.parse(" amount_scale = 1.5 , ") == DriftSpec(after_events=0, amount_scale=1.5)
    assert DriftSpec.parse("after_events=7") == DriftSpec(after_events=7)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("after=5000,speed=2", "unknown key 'speed'"),
        ("after=five", "after='five' is not a valid integer"),
        ("amount_scale=big", "amount_scale='big' is not a valid number"),
        ("new_category=60511", "4-digit"),
        ("foreign_share=1.5", "foreign_share must be within"),
        ("new_category=6051,new_category_share=-0.1", "new_category_share must be within"),
        ("amount_scale=0", "amount_scale must be a finite number > 0"),
        ("amount_scale=nan", "amount_scale must be a finite number > 0"),
        ("after=-1", "after_events must be an integer >= 0"),
        ("new_category_share=0.2", "needs new_category"),
        ("after", "expected key=value"),
        ("after=", "expected key=value"),
    ],
)
def test_parse_rejects_bad_keys_and_values(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DriftSpec.parse(text)


def test_active_from_after_events() -> None:
    spec = DriftSpec(after_events=3)
    assert not spec.active(2)
    assert spec.active(3)


# --- the generator under drift -------------------------------------------------------------------------------


def test_amounts_scale_after_drift(world: World) -> None:
    events = drifted(world, DriftSpec(after_events=AFTER, amount_scale=2.0))
    before = [e.transaction.amount for e in events[:AFTER] if not e.is_fraud]
    after = [e.transaction.amount for e in events[AFTER:] if not e.is_fraud]
    assert median(after) / median(before) == pytest.approx(2.0, rel=0.08)


def test_foreign_share_and_new_category_appear_only_after_drift(world: World) -> None:
    spec = DriftSpec(after_events=AFTER, foreign_share=0.3, new_category="6051", new_category_share=0.1)
    events = drifted(world, spec)
    for event in events:
        transaction = event.transaction
        assert decode_transaction(transaction.account_id.encode(), transaction.to_json(), window=None) == transaction
    before = [e.transaction for e in events[:AFTER] if not e.is_fraud]
    after = [e.transaction for e in events[AFTER:] if not e.is_fraud]

    assert not any(t.merchant_category == "6051" for t in before)
    assert events[AFTER].transaction.event_id.endswith(f"-{AFTER}")
    new_share = sum(t.merchant_category == "6051" for t in after) / len(after)
    assert new_share == pytest.approx(0.1, abs=0.015)

    foreign_before = sum(t.country != home_of(world, t.account_id) for t in before) / len(before)
    foreign_after = sum(t.country != home_of(world, t.account_id) for t in after) / len(after)
    assert foreign_before < 0.05
    # The new category is drawn first, so 90 % of the rest can move abroad: 0.9 x 0.3 plus the baseline.
    assert foreign_after == pytest.approx(0.9 * 0.3 + foreign_before, abs=0.02)


def test_fraud_is_not_drifted(world: World) -> None:
    events = drifted(world, DriftSpec(after_events=0, new_category="6051", new_category_share=1.0))
    fraud = [e.transaction for e in events if e.is_fraud]
    assert fraud
    assert not any(t.merchant_category == "6051" for t in fraud)
