"""The shared feature computation: windows, idempotency, defaults, and offline replay = online state."""

from __future__ import annotations

import math

from streamscore.features import (
    FEATURE_NAMES,
    NO_HISTORY_S,
    AccountProfile,
    AccountState,
    MerchantRisk,
    TransactionFacts,
    apply_transaction,
    replay,
    transaction_features,
)

T0 = 1_790_000_000.0


def tx(
    i: int,
    t: float,
    amount: float = 10.0,
    merchant: str = "m1",
    device: str | None = "d1",
    country: str = "DE",
    account: str = "a1",
) -> TransactionFacts:
    return TransactionFacts(f"e{i}", account, merchant, "5411", amount, "EUR", country, "pos", device, T0 + t)


def test_windows_count_and_sum_as_of_the_last_transaction() -> None:
    state = AccountState()
    for i, (t, amount, merchant) in enumerate(
        [(0, 5.0, "m1"), (1000, 7.0, "m2"), (3500, 11.0, "m3"), (3700, 13.0, "m3")]
    ):
        assert apply_transaction(state, tx(i, t, amount, merchant))
    snap = state.snapshot()
    assert (snap.tx_count_5m, snap.tx_count_1h, snap.tx_count_24h) == (2, 3, 4)
    assert (snap.amount_sum_5m, snap.amount_sum_1h, snap.amount_sum_24h) == (24.0, 31.0, 36.0)
    assert snap.distinct_merchants_1h == 2
    assert snap.last_event_ts == T0 + 3700


def test_old_events_leave_the_24h_window() -> None:
    state = AccountState()
    apply_transaction(state, tx(1, 0))
    apply_transaction(state, tx(2, 86400 + 1))
    assert state.snapshot().tx_count_24h == 1
    assert len(state.events) == 1


def test_redelivery_and_late_events_change_nothing() -> None:
    state = AccountState()
    apply_transaction(state, tx(1, 0, device="d1"))
    apply_transaction(state, tx(2, 100, device="d2"))
    before = state.as_dict()
    assert not apply_transaction(state, tx(1, 0, device="d1"))
    assert not apply_transaction(state, tx(9, 100 - 86400, device="d9"))
    assert state.as_dict() == before
    assert AccountState.from_dict(before).as_dict() == before


def test_out_of_order_event_is_kept_sorted() -> None:
    state = AccountState()
    apply_transaction(state, tx(1, 100))
    apply_transaction(state, tx(2, 50))
    assert [e[0] for e in state.events] == [T0 + 50, T0 + 100]
    assert state.last_event_ts == T0 + 100


def test_unknown_account_gets_documented_defaults() -> None:
    row = transaction_features(tx(1, 0, amount=100.0), None, None, None)
    values = row.as_dict()
    assert row.missing and not row.partial
    assert len(row.values) == len(FEATURE_NAMES)
    assert values["seconds_since_last_log"] == math.log1p(NO_HISTORY_S)
    assert values["amount_vs_usual"] == 1.0
    assert values["new_device"] == 0.0 and values["new_country"] == 0.0
    assert all(math.isfinite(v) for v in row.values)


def test_request_time_features_use_the_state_before_the_transaction() -> None:
    state = AccountState()
    apply_transaction(state, tx(1, 0, device="d1", country="DE"))
    profile = AccountProfile(20.0, 5.0, 30, "DE", ("DE",), ("d1",))
    risk = MerchantRisk(0.02, 500)
    row = transaction_features(tx(2, 60, amount=200.0, device="dX", country="RO"), state.snapshot(), profile, risk)
    v = row.as_dict()
    assert not row.missing and not row.partial
    assert v["amount_vs_usual"] == 10.0
    assert v["amount_zscore"] == 36.0
    assert v["seconds_since_last_log"] == math.log1p(60)
    assert v["new_device"] == 1.0 and v["new_country"] == 1.0 and v["foreign_country"] == 1.0
    assert v["merchant_fraud_rate_30d"] == 0.02
    assert v["tx_count_5m"] == 1.0


def test_replay_gives_each_transaction_the_snapshot_before_it_in_any_input_order() -> None:
    events = [tx(i, t, account=a) for i, (t, a) in enumerate([(0, "a"), (10, "b"), (20, "a"), (30, "a"), (40, "b")])]
    before = replay(list(reversed(events)))[::-1]
    assert before[0] is None and before[1] is None
    state = AccountState()
    apply_transaction(state, events[0])
    assert before[2] == state.snapshot()
    apply_transaction(state, events[2])
    assert before[3] == state.snapshot()
    assert before[4] is not None and before[4].tx_count_24h == 1


def test_the_inlined_log_features_are_log1p_of_the_value_floored_at_zero_bit_for_bit() -> None:
    """transaction_features writes `log1p(max(x, 0))` inline (no call per value): the same float for every input,
    NaN, -0.0 and negatives included, and the channel one-hot for known and unknown channels."""
    from streamscore.features import CHANNELS, RealtimeSnapshot, _log

    def bits(x: float) -> str:
        return "nan" if math.isnan(x) else x.hex()

    names = list(FEATURE_NAMES)
    sums = [-1.0, -0.0, 0.0, 2.5, math.nan, math.inf, 1e-300]
    for value in sums:
        rt = RealtimeSnapshot(1, 1, 1, value, value, value, 1, T0, ("d1",), ("DE",))
        row = transaction_features(tx(1, 60.0), rt, None, None)
        for name in ("amount_sum_5m_log", "amount_sum_1h_log", "amount_sum_24h_log"):
            assert bits(row.values[names.index(name)]) == bits(_log(value)), (name, value)
    row = transaction_features(tx(1, 60.0, amount=12.5), None, None, None)
    assert row.values[names.index("amount_log")] == _log(12.5)
    assert row.values[names.index("seconds_since_last_log")] == _log(NO_HISTORY_S)
    for channel in (*CHANNELS, "atm"):
        facts = TransactionFacts("e", "a", "m", "5411", 1.0, "EUR", "DE", channel, None, T0)
        one_hot = transaction_features(facts, None, None, None).values[-len(CHANNELS) :]
        assert one_hot == tuple(1.0 if channel == c else 0.0 for c in CHANNELS)
