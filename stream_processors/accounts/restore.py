"""Restoring an emptied online store: a Redis restart without its data must not leave the scorer without features.

The online store carries marks (`feature_repo.store.OnlineMarks`): one per materialized view (written by
`materialize`, hence by the demo, `streamscore features materialize` and this module) and one per transactions
partition whose real-time snapshots were pushed since the store was last found empty. A Redis that comes back
empty comes back without them. Every `FEATURES_RESTORE_CHECK_INTERVAL_S` the processor looks (one round trip):

1. **Views.** A view mark missing: one worker (a lock in Redis) materializes the missing views from the offline
   files (`FEAST_DATA_DIR`), the batch views and, when `account_realtime`'s mark is gone too, the history's
   real-time log (accounts the stream has not seen since the history). Materializing the log overwrites pushed
   snapshots (the last write wins), so the partition marks are dropped first: every worker then re-pushes.
   Workers wait for the view marks before step 2, so no re-push is overwritten by a late materialization.
2. **Snapshots.** For each partition this worker owns whose mark is missing: every account of the partition in
   the Faust table is queued again in the `SnapshotBatcher` (the account's current snapshot, no ack; a newer live
   snapshot replaces it in the queue, as usual), and once the batcher has written everything queued so far the
   partition's mark is set.

Until then the scorer reads what there is and labels its scores `missing` / `default`, as for any absent entity.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stream_processors.accounts.pushing import SnapshotBatcher
from stream_processors.metrics import FeatureMetrics
from streamscore.features import AccountState
from streamscore.kafka import partition_for

log = logging.getLogger(__name__)

LOCK = "restore"
REALTIME_VIEW = "account_realtime"


class Marks(Protocol):
    """`feature_repo.store.OnlineMarks` (blocking calls: run on an executor)."""

    def missing(self, names: Sequence[str]) -> list[str]: ...

    def put(self, names: Sequence[str]) -> None: ...

    def drop(self, names: Sequence[str]) -> None: ...

    def lock(self, name: str, ttl_s: float) -> bool: ...

    def unlock(self, name: str) -> None: ...


def view_mark(view: str) -> str:
    """As `feature_repo.store.view_mark` (restated: importing that module imports Feast)."""
    return f"view:{view}"


def partition_mark(partition: int) -> str:
    """As `feature_repo.store.partition_mark`."""
    return f"realtime:{partition}"


@dataclass
class Restorer:
    """Finds an emptied online store and loads it again (see the module docstring). `check()` is called by a timer."""

    marks: Marks
    batcher: SnapshotBatcher
    metrics: FeatureMetrics
    partitions: int
    """Partition count of the transactions topic (an account's partition: murmur2 of its id)."""
    assigned: Callable[[], Collection[int]]
    """The transactions partitions this worker owns now."""
    table: Callable[[], Any]
    """The Faust table's current data (account id → AccountState.as_dict())."""
    materialize: Callable[[Sequence[str]], None] | None = None
    """Materializes views from the offline files (blocking); None: views are not restored here."""
    views: Sequence[str] = ()
    lock_ttl_s: float = 1800.0
    retry_s: float = 60.0
    """After a failed restore step, wait this long before the next try (the offline files may be missing)."""
    clock: Callable[[], float] = time.monotonic
    restoring: bool = field(default=False, init=False)
    """A restore step is running (a readiness signal: the store is being loaded again)."""
    _retry_at: float = field(default=0.0, init=False)
    _views_retry_at: float = field(default=0.0, init=False)

    async def check(self) -> None:
        """One look at the marks, and the restore they call for. Never raises: Redis being down is the batcher's
        to report (its pushes fail), and the next check looks again."""
        if self.restoring or self.clock() < self._retry_at:
            return
        self.restoring = True
        try:
            if await self._views_ready():
                await self._snapshots()
        except Exception as exc:  # noqa: BLE001 — Redis down or the offline files missing: try again later
            self._retry_at = self.clock() + self.retry_s
            log.warning(
                "restoring the online store failed (%s: %s); next try in %.0f s", type(exc).__name__, exc, self.retry_s
            )
        finally:
            self.restoring = False

    async def _blocking(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    async def _views_ready(self) -> bool:
        """False only while another worker materializes views (the lock is taken): a re-push now could be overwritten
        by its real-time log. A failed materialization of our own (offline files missing) does not hold the
        snapshots back: they are pushed, and a later successful one drops the partition marks to push them again."""
        if self.materialize is None or not self.views:
            return True
        missing = await self._blocking(self.marks.missing, [view_mark(v) for v in self.views])
        if not missing:
            return True
        if not await self._blocking(self.marks.lock, LOCK, self.lock_ttl_s):
            return False  # another worker restores the views; wait for their marks
        views = [v for v in self.views if view_mark(v) in missing]
        try:
            if self.clock() < self._views_retry_at:
                return True
            started = self.clock()
            log.warning("online store: the views %s are gone (Redis restarted empty?); materializing them", views)
            if REALTIME_VIEW in views:
                # The history's log overwrites pushed snapshots: every partition is pushed again afterwards.
                await self._blocking(self.marks.drop, [partition_mark(p) for p in range(self.partitions)])
            await self._blocking(self.materialize, views)  # sets the view marks
            elapsed = self.clock() - started
            self.metrics.restore_seconds.labels(step="views").observe(elapsed)
            log.warning("online store: materialized %s in %.1f s", views, elapsed)
        except Exception as exc:  # noqa: BLE001 — the offline files missing or unreadable: snapshots still go back
            self._views_retry_at = self.clock() + self.retry_s
            log.error(
                "online store: materializing %s failed (%s: %s); next try in %.0f s (or run `streamscore features "
                "materialize --realtime`)",
                views,
                type(exc).__name__,
                exc,
                self.retry_s,
            )
        finally:
            await self._blocking(self.marks.unlock, LOCK)
        return True

    async def _snapshots(self) -> None:
        owned = sorted(self.assigned())
        if not owned:
            return
        missing = await self._blocking(self.marks.missing, [partition_mark(p) for p in owned])
        if not missing:
            return
        partitions = {p for p in owned if partition_mark(p) in missing}
        started = self.clock()
        queued = 0
        for i, (account, stored) in enumerate(list(self.table().items())):
            # Only accounts of partitions this worker owns: a revoked partition's rows may linger in a memory
            # table, and pushing them could overwrite the new owner's newer snapshots.
            if partition_for(str(account).encode(), self.partitions) in partitions and stored:
                snapshot = AccountState.from_dict(stored).snapshot()
                if self.batcher.sink.problem(snapshot) is None:
                    self.batcher.add(str(account), snapshot)
                    queued += 1
            if i % 1000 == 999:
                await asyncio.sleep(0)  # let the consumer and the agent run between chunks
        through = self.batcher.last_seq
        self.batcher.kick()
        while not self.batcher.written_through(through):
            await asyncio.sleep(min(self.batcher.policy.max_delay_s, 0.1))
            self.batcher.kick()
        await self._blocking(self.marks.put, sorted(partition_mark(p) for p in partitions))
        elapsed = self.clock() - started
        if not queued:
            # A first start (or new partitions) with nothing in the table yet: only the marks were missing.
            log.info("online store: partitions %s marked (no account state to push)", sorted(partitions))
            return
        self.metrics.restores.inc()
        self.metrics.restored_rows.inc(queued)
        self.metrics.restore_seconds.labels(step="snapshots").observe(elapsed)
        log.warning(
            "online store: re-pushed %d account snapshots of partitions %s in %.1f s",
            queued,
            sorted(partitions),
            elapsed,
        )
