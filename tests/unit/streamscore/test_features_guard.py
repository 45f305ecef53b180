"""One event cannot move an account's state far into the future (issue 12: an event dated 2100 made every later
event of its account "late" for 74 years), and a state that was moved before the guard heals."""

from __future__ import annotations

import time

import pytest

from streamscore.features import (
    FUTURE_GUARD_S,
    AccountState,
    FutureEventError,
    TransactionFacts,
    apply_transaction,
)

NOW = time.time()
YEAR_2100 = 4_102_444_800.0


def tx(i: int, ts: float) -> TransactionFacts:
    return TransactionFacts(f"e{i}", "a1", "m1", "5411", 10.0, "EUR", "DE", "pos", "d1", ts)


def test_an_event_far_ahead_of_the_clock_is_refused_and_changes_nothing() -> None:
    state = AccountState()
    for i in range(3):
        assert apply_transaction(state, tx(i, NOW - 600 + i))
    before = state.as_dict()
    with pytest.raises(FutureEventError):
        apply_transaction(state, tx(9, YEAR_2100))
    assert state.as_dict() == before
    assert apply_transaction(state, tx(3, NOW - 500))
    assert state.snapshot().tx_count_1h == 4


def test_the_limit_is_the_callers_or_a_day_past_the_clock() -> None:
    state = AccountState()
    assert apply_transaction(state, tx(1, NOW + FUTURE_GUARD_S - 60))  # inside the default limit
    with pytest.raises(FutureEventError):
        apply_transaction(AccountState(), tx(2, 1_000.0), latest_s=999.0)
    assert apply_transaction(AccountState(), tx(3, YEAR_2100), latest_s=float("inf"))  # offline, no clock


def test_a_state_moved_into_the_future_before_the_guard_heals_at_its_next_event() -> None:
    state = AccountState()
    apply_transaction(state, tx(1, NOW - 120))
    apply_transaction(state, tx(2, YEAR_2100), latest_s=float("inf"))  # what happened before the guard
    assert not apply_transaction(state, tx(3, NOW - 60), latest_s=float("inf"))  # "late" for 74 years
    assert apply_transaction(state, tx(4, NOW - 30))
    snapshot = state.snapshot()
    assert snapshot.last_event_ts == NOW - 30
    # e2 is forgotten; e1 went when e2 trimmed the history, e3 was refused as late then: what is lost stays lost,
    # but from now on the account's events count again.
    assert snapshot.tx_count_5m == 1
    assert apply_transaction(state, tx(5, NOW - 20))
    assert state.snapshot().tx_count_5m == 2
