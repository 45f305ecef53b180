"""The accounts agent's pure core: decoding a record and folding it into the stored state, which must give
the same snapshots as the offline replay of the shared feature computation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_processors.accounts.agents import SeedStates, decode, fold, fold_state, state_dict
from streamscore.contracts import DeadLetterReason, Transaction, headers_for
from streamscore.errors import ConfigError, EventError
from streamscore.features import AccountState, RealtimeSnapshot, TransactionFacts, apply_transaction, replay

T0 = 1_790_000_000.0
NOW = datetime.now(UTC).replace(microsecond=0)
"""A received transaction's event time must be near the receiving clock (the contract's window)."""


def tx(i: int, t: float, account: str = "a1", amount: float = 10.0, merchant: str = "m1") -> TransactionFacts:
    return TransactionFacts(f"e{i}", account, merchant, "5411", amount, "EUR", "DE", "pos", "d1", T0 + t)


def stored_after(*events: TransactionFacts) -> dict[str, object]:
    """The table row as the agent stores it: AccountState.as_dict() through JSON (the changelog's codec)."""
    state = AccountState()
    for event in events:
        apply_transaction(state, event)
    return json.loads(json.dumps(state.as_dict()))  # type: ignore[no-any-return]


def test_a_new_account_gets_a_state_and_a_snapshot() -> None:
    folded = fold(None, tx(1, 0.0, amount=12.5))
    assert folded.skipped is None
    assert folded.state is not None and folded.snapshot is not None
    assert (folded.snapshot.tx_count_5m, folded.snapshot.amount_sum_24h) == (1, 12.5)
    assert AccountState.from_dict(folded.state).snapshot() == folded.snapshot


def test_a_redelivered_event_changes_nothing_but_requeues_the_current_snapshot() -> None:
    stored = stored_after(tx(1, 0.0), tx(2, 60.0))
    folded = fold(stored, tx(1, 0.0))
    assert folded.skipped == "duplicate"
    assert folded.state is None
    assert folded.snapshot == AccountState.from_dict(stored).snapshot()
    assert folded.snapshot is not None and folded.snapshot.tx_count_5m == 2


def test_an_event_older_than_the_24h_window_is_skipped_without_a_push() -> None:
    stored = stored_after(tx(1, 100_000.0))
    folded = fold(stored, tx(2, 100_000.0 - 86_400.0))
    assert (folded.skipped, folded.state, folded.snapshot) == ("late", None, None)


def test_folding_record_by_record_through_the_table_equals_the_offline_replay() -> None:
    # Card testing (a burst of small amounts at several merchants), window boundaries, an out-of-order
    # event, a redelivery; two accounts interleaved.
    events = [
        tx(1, 0.0, "a1", 50.0, "m1"),
        tx(2, 10.0, "a2", 5.0, "m9"),
        *[tx(10 + k, 100.0 + 5 * k, "a1", 1.0, f"m{k % 3}") for k in range(8)],
        tx(30, 100.0 + 299.0, "a1", 2.0, "m5"),  # just inside the 5 min window of the burst's start
        tx(31, 100.0 + 300.0, "a1", 3.0, "m5"),  # the burst's start leaves the 5 min window
        tx(32, 3700.0, "a1", 40.0, "m1"),  # 1 h window boundary
        tx(33, 3650.0, "a1", 4.0, "m2"),  # slightly out of order
        tx(34, 86_400.0 + 1.0, "a1", 9.0, "m1"),  # the first event leaves the 24 h window
        tx(35, 86_500.0, "a2", 7.0, "m9"),
    ]
    delivered = [*events[:5], events[3], *events[5:]]  # e12 delivered twice
    table: dict[str, dict[str, object]] = {}
    online = {}
    for event in delivered:
        folded = fold(table.get(event.account_id), event)
        if folded.state is not None:
            table[event.account_id] = json.loads(json.dumps(folded.state))
        if folded.snapshot is not None:
            online[event.account_id] = folded.snapshot

    # Offline: the snapshot "just before" a sentinel event after everything is the final state.
    sentinels = [tx(900, 200_000.0, "a1"), tx(901, 200_000.0, "a2")]
    before = replay([*events, *sentinels])
    assert online == {"a1": before[-2], "a2": before[-1]}
    assert online["a1"].tx_count_24h == 13  # everything but the first event, which left the 24 h window


def record(**overrides: object) -> tuple[bytes, bytes, list[tuple[str, str | bytes | None]]]:
    event = Transaction(
        event_id="e-1",
        account_id="acc-1",
        merchant_id="m-1",
        merchant_category="5411",
        amount=12.5,
        currency="EUR",
        country="DE",
        channel="pos",
        device_id="d-1",
        event_time=NOW,
    )
    payload = {**json.loads(event.to_json()), **overrides}
    return b"acc-1", json.dumps(payload).encode(), headers_for(event)


def test_decode_gives_the_feature_facts() -> None:
    facts = decode(*record())
    assert (facts.event_id, facts.account_id, facts.amount) == ("e-1", "acc-1", 12.5)
    assert facts.event_ts == NOW.timestamp()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"amount": -1.0}, DeadLetterReason.OUT_OF_RANGE),
        ({"account_id": "acc-2"}, DeadLetterReason.KEY_MISMATCH),
        ({"currency": "XXY"}, DeadLetterReason.INVALID_CODE),
    ],
)
def test_decode_rejects_a_defective_event_with_its_reason(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(EventError) as caught:
        decode(*record(**overrides))
    assert caught.value.reason == reason


def test_decode_rejects_bytes_that_are_not_json() -> None:
    with pytest.raises(EventError) as caught:
        decode(b"acc-1", b"\xff\xfe not json", None)
    assert caught.value.reason == DeadLetterReason.NOT_UTF8


# --- events the online store could never hold ---------------------------------------------------------------------

LIMIT = T0 + 10 * 86_400.0


def beyond_limit(snapshot: RealtimeSnapshot) -> str | None:
    """A stand-in for `feature_repo.store.snapshot_problem` (pandas' year 2262): timestamps past LIMIT."""
    ts = snapshot.last_event_ts
    return None if ts is None or ts <= LIMIT else f"last_event_ts {ts} is past the limit"


def test_an_event_that_would_make_the_snapshot_unwritable_is_rejected_and_the_state_kept() -> None:
    stored = stored_after(tx(1, 0.0), tx(2, 60.0))
    folded = fold(stored, tx(3, 20 * 86_400.0), beyond_limit)
    assert folded.rejected is not None and "past the limit" in folded.rejected
    assert (folded.state, folded.snapshot, folded.reset) == (None, None, False)
    # A good event afterwards folds into the untouched state.
    after = fold(stored, tx(4, 120.0), beyond_limit)
    assert after.rejected is None and after.snapshot is not None and after.snapshot.tx_count_5m == 3


def test_a_new_account_whose_first_event_is_unwritable_gets_no_state() -> None:
    folded = fold(None, tx(1, 20 * 86_400.0), beyond_limit)
    assert folded.rejected is not None and (folded.state, folded.snapshot, folded.reset) == (None, None, False)


def test_a_stored_state_that_cannot_be_written_is_reset_by_the_next_event() -> None:
    # Folded before the check existed: every later event would be "late" against the year-9999 one.
    poisoned = stored_after(tx(1, 0.0), tx(2, 20 * 86_400.0))
    folded = fold(poisoned, tx(3, 60.0), beyond_limit)
    assert folded.reset and folded.rejected is None and folded.skipped is None
    assert folded.state is not None and folded.snapshot is not None
    assert folded.snapshot == fold(None, tx(3, 60.0)).snapshot
    # The redelivered poison itself: the account is reset and the event rejected (its row is deleted).
    again = fold(poisoned, tx(2, 20 * 86_400.0), beyond_limit)
    assert again.reset and again.rejected is not None and again.state is None


def test_without_a_check_everything_is_writable() -> None:
    folded = fold(None, tx(1, 20 * 86_400.0))
    assert folded.rejected is None and folded.state is not None


def test_an_account_new_to_the_table_continues_from_its_seeded_history_state(tmp_path: Path) -> None:
    """FEATURES_SEED_PATH: the history's final state of an account is where its live folding starts, so the 24 h
    window and the known devices include the history; an account without a seed starts empty."""
    history = [tx(1, 1_000.0), tx(2, 1_100.0, amount=5.0)]
    path = tmp_path / "account_state.parquet"
    pq.write_table(pa.table({"account_id": ["a1"], "state": [json.dumps(stored_after(*history))]}), path)
    seed = SeedStates.read(path)
    assert len(seed) == 1 and seed.get("nobody") is None
    live = tx(3, 1_200.0, amount=2.0)
    folded = fold(seed.get("a1"), live)
    assert folded.snapshot is not None and folded.snapshot.tx_count_5m == 3
    assert folded.snapshot == replay([*history, tx(3, 1_200.0, amount=2.0), tx(4, 1_201.0)])[-1]


def test_an_unreadable_seed_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match="FEATURES_SEED_PATH"):
        SeedStates.read(tmp_path / "bad.parquet")


def test_fold_state_is_fold_over_live_states_and_never_changes_the_state_it_is_given() -> None:
    events = [
        tx(1, 0.0, amount=50.0),
        *[tx(10 + k, 100.0 + 5 * k, amount=1.0, merchant=f"m{k % 3}") for k in range(6)],
        tx(11, 105.0),  # a redelivery
        tx(20, 86_400.0 + 1.0),
        tx(21, 50.0),  # late
        tx(22, 20 * 86_400.0),  # unwritable with the check: rejected, the state kept
        tx(23, 86_500.0),
    ]
    stored: dict[str, object] | None = None
    live: AccountState | None = None
    for event in events:
        before = None if live is None else live.as_dict()
        want = fold(stored, event, beyond_limit)
        step = fold_state(live, event, beyond_limit)
        assert (step.snapshot, step.skipped, step.rejected, step.reset) == (
            want.snapshot,
            want.skipped,
            want.rejected,
            want.reset,
        )
        assert (None if step.state is None else step.state.as_dict()) == want.state
        assert (None if live is None else live.as_dict()) == before  # the given state is untouched
        if step.state is not None:
            assert want.state is not None
            live, stored = step.state, json.loads(json.dumps(want.state))
            assert state_dict(live) == live.as_dict()
