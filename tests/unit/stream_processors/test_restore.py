"""Restoring an emptied online store (accounts/restore.py) with fakes of the marks and the sink: views first, then
every account of the worker's partitions, marks set only once written; a failed materialization does not hold the
snapshots back; another worker's restore does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from stream_processors.accounts.pushing import MemorySink, PushPolicy, SnapshotBatcher
from stream_processors.accounts.restore import Restorer, partition_mark, view_mark
from stream_processors.metrics import FeatureMetrics
from streamscore.features import AccountState, TransactionFacts, apply_transaction
from streamscore.kafka import partition_for

VIEWS = ("account_profile", "merchant_risk", "account_realtime")


@dataclass
class Marks:
    held: set[str] = field(default_factory=set)
    locked: bool = False

    def missing(self, names: Sequence[str]) -> list[str]:
        return [n for n in names if n not in self.held]

    def put(self, names: Sequence[str]) -> None:
        self.held.update(names)

    def drop(self, names: Sequence[str]) -> None:
        self.held.difference_update(names)

    def lock(self, name: str, ttl_s: float) -> bool:
        if self.locked:
            return False
        self.locked = True
        return True

    def unlock(self, name: str) -> None:
        self.locked = False


def table(accounts: int) -> dict[str, object]:
    rows: dict[str, object] = {}
    for i in range(accounts):
        state = AccountState()
        apply_transaction(
            state, TransactionFacts(f"e{i}", f"acc-{i}", "m", "5411", 5.0 + i, "EUR", "DE", "pos", None, 1.79e9)
        )
        rows[f"acc-{i}"] = json.loads(json.dumps(state.as_dict()))
    return rows


def restorer(marks: Marks, owned: set[int], fail: bool = False) -> tuple[Restorer, MemorySink, list[list[str]]]:
    sink, loaded = MemorySink(), list[list[str]]()
    batcher = SnapshotBatcher(sink, PushPolicy(batch_size=7, max_delay_s=0.0), FeatureMetrics(CollectorRegistry()))

    def materialize(views: Sequence[str]) -> None:
        loaded.append(list(views))
        if fail:
            raise FileNotFoundError("account_profile.parquet")
        marks.put([view_mark(v) for v in views])

    rows = table(40)
    r = Restorer(marks, batcher, batcher.metrics, 6, lambda: owned, lambda: rows, materialize=materialize, views=VIEWS)
    return r, sink, loaded


def test_an_emptied_store_gets_views_then_every_owned_account_and_its_marks() -> None:
    marks = Marks()
    r, sink, loaded = restorer(marks, {0, 2, 4})
    asyncio.run(r.check())
    assert loaded == [list(VIEWS)]
    mine = {f"acc-{i}" for i in range(40) if partition_for(f"acc-{i}".encode(), 6) in {0, 2, 4}}
    assert set(sink.rows) == mine and mine
    assert marks.held == {*(view_mark(v) for v in VIEWS), *(partition_mark(p) for p in (0, 2, 4))}
    # Nothing missing any more: the next check does nothing.
    asyncio.run(r.check())
    assert loaded == [list(VIEWS)] and len(sink.batches) == -(-len(mine) // 7)


def test_a_failed_materialization_still_pushes_the_snapshots_and_retries_later() -> None:
    marks = Marks()
    r, sink, loaded = restorer(marks, {1}, fail=True)
    asyncio.run(r.check())
    assert loaded == [list(VIEWS)] and sink.rows and marks.held == {partition_mark(1)}
    asyncio.run(r.check())
    assert len(loaded) == 1  # not again before restore's retry delay


def test_while_another_worker_materializes_nothing_is_pushed() -> None:
    marks = Marks(locked=True)
    r, sink, loaded = restorer(marks, {0, 1, 2, 3, 4, 5})
    asyncio.run(r.check())
    assert (loaded, sink.rows, marks.held) == ([], {}, set())
