"""Dropping the rows no accepted event can fold into: the table stops growing with the accounts ever seen, and the
features do not change (seeded simulation against the offline fold, with a negative control)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from stream_processors.accounts.evict import Sweeper
from streamscore.features import IDLE_S, AccountState, RealtimeSnapshot, TransactionFacts, apply_transaction
from streamscore.kafka import partition_for

PARTITIONS = 6
DAY = 86400.0


@dataclass
class Table:
    """The Faust table as the sweeper uses it: `data` and `send_changelog`."""

    data: dict[str, Any] = field(default_factory=dict)
    tombstones: list[tuple[int, str]] = field(default_factory=list)

    def send_changelog(self, partition: int, key: str, value: Any, value_serializer: str | None = None) -> None:
        assert value is None and value_serializer == "raw"
        self.tombstones.append((partition, key))


def tx(i: int, account: str, ts: float, device: str) -> TransactionFacts:
    return TransactionFacts(f"e{i}", account, f"m{i % 5}", "5411", 10.0 + i % 7, "EUR", "DE", "pos", device, ts)


def simulate(seed: int, max_behind_s: float, assumed_behind_s: float) -> tuple[int, int, int]:
    """Events arrive over 60 days with gaps of hours to days per account, each `lateness` behind its receiving time
    (up to `max_behind_s`, fixed per account so its events arrive in event order). The online side folds them into a
    table swept every few events with a sweeper that assumes the window's lateness is `assumed_behind_s`; the offline
    side folds them without any sweep. Returns (snapshots that differ, rows dropped, rows left)."""
    rng = random.Random(seed)
    accounts = [f"acc-{a}" for a in range(40)]
    lateness = {a: rng.uniform(0.0, max_behind_s) for a in accounts}
    arrivals = []
    for a in accounts:
        t = rng.uniform(0.0, 5 * DAY)
        while t < 60 * DAY:
            arrivals.append((t, a))
            t += rng.choice([rng.expovariate(1 / 3600.0), rng.expovariate(1 / (3 * DAY))])
    arrivals.sort()
    table = Table()
    received: dict[int, float] = {}
    sweeper = Sweeper(table, PARTITIONS, lambda: set(range(PARTITIONS)), received, assumed_behind_s)
    offline: dict[str, AccountState] = {}
    differ = dropped = 0
    for i, (r, account) in enumerate(arrivals):
        event = tx(i, account, r - lateness[account], f"dev-{rng.randrange(30)}")
        p = partition_for(account.encode(), PARTITIONS)
        received[p] = max(received.get(p, 0.0), r)
        stored = table.data.get(account)
        state = AccountState() if stored is None else AccountState.from_dict(stored)
        apply_transaction(state, event, latest_s=r + 1.0)
        table.data[account] = state.as_dict()
        reference = offline.setdefault(account, AccountState())
        apply_transaction(reference, event, latest_s=r + 1.0)
        online: RealtimeSnapshot = state.snapshot()
        differ += online != reference.snapshot()
        if i % 7 == 6:
            dropped += asyncio.run(sweeper.sweep())
    return differ, dropped, len(table.data)


def test_dropping_rows_changes_no_snapshot_and_bounds_the_table() -> None:
    for seed in range(5):
        differ, dropped, left = simulate(seed, max_behind_s=2 * DAY, assumed_behind_s=2 * DAY)
        assert differ == 0, f"seed {seed}: {differ} snapshots differ from the offline fold"
        assert dropped > 40, f"seed {seed}: only {dropped} rows dropped: the sweep is not exercised"
        assert left < 40


def test_negative_control_a_sweep_that_ignores_the_windows_lateness_changes_snapshots() -> None:
    # Events up to two days late, a sweeper that assumes none: it drops rows a late event still folds into.
    differs = [simulate(seed, max_behind_s=2 * DAY, assumed_behind_s=0.0)[0] for seed in range(5)]
    assert sum(differs) > 0


def test_an_account_idle_past_idle_s_starts_afresh_and_one_just_under_keeps_its_devices() -> None:
    state = AccountState()
    apply_transaction(state, tx(1, "a", 1000.0, "dev-old"), latest_s=1e12)
    kept = AccountState.from_dict(state.as_dict())
    apply_transaction(kept, tx(2, "a", 1000.0 + IDLE_S - 1.0, "dev-new"), latest_s=1e12)
    assert kept.snapshot().known_devices == ("dev-new", "dev-old")
    apply_transaction(state, tx(2, "a", 1000.0 + IDLE_S, "dev-new"), latest_s=1e12)
    fresh = AccountState()
    apply_transaction(fresh, tx(2, "a", 1000.0 + IDLE_S, "dev-new"), latest_s=1e12)
    assert state == fresh
    assert not apply_transaction(state, tx(1, "a", 1000.0, "dev-old"), latest_s=1e12)  # the old one is late now


def test_the_sweep_keeps_other_owners_rows_and_unclocked_partitions_and_writes_tombstones() -> None:
    accounts = {
        p: next(f"acc-{i}" for i in range(1000) if partition_for(f"acc-{i}".encode(), PARTITIONS) == p)
        for p in range(3)
    }
    table = Table({a: {"last_event_ts": 0.0} for a in accounts.values()})
    forgotten: list[str] = []
    counted: list[int] = []
    received = {0: 10 * DAY, 1: 10 * DAY}  # partition 2 has taken no record yet
    sweeper = Sweeper(
        table, PARTITIONS, lambda: {0, 2}, received, DAY, forget=forgotten.append, on_evicted=counted.append
    )
    assert asyncio.run(sweeper.sweep()) == 1
    assert table.tombstones == [(0, accounts[0])] and forgotten == [accounts[0]] and counted == [1]
    assert set(table.data) == {accounts[1], accounts[2]}  # 1: not assigned here; 2: no clock yet
    received[2] = 3 * DAY - 1.0  # not yet past two days idle plus one day late
    assert asyncio.run(sweeper.sweep()) == 0
    received[2] = 3 * DAY + 1.0
    assert asyncio.run(sweeper.sweep()) == 1
