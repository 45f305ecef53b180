"""Batched pushes of account snapshots to the online store.

The agent folds each transaction into its account's state and hands the new snapshot to a
`SnapshotBatcher`. The batcher keeps one row per account (the last snapshot wins: only the newest state
matters in the online store) and writes them in one call when `batch_size` accounts are waiting or the
oldest waiting row is `max_delay_s` old, whichever comes first (a Faust timer checks the delay). Never one
write per event.

The write runs in a one-thread executor so the event loop (the consumer's heartbeats, the agent, the
web server) never waits on Redis, and two pushes never overlap, so the online store sees the snapshots
of an account in order.

Offsets: each row comes with the ack of the event that produced it. Acks are released only after the
push that carried the row succeeded, so a committed offset always means "this event's effect is
readable in the online store". A failed push keeps its rows and acks queued (newer rows of the same
account still win) and is retried with exponential backoff; consumption continues until
`max_pending_events` events wait, then the agent waits for room (backpressure), the worker stays in its
group and nothing is lost.

Data errors are not outages. A push that fails with an error the sink calls transient (Redis down, slow,
loading; the registry unreadable) is retried as above, for at most `give_up_after_s`: then `on_give_up` makes the
worker exit non-zero so its supervisor restarts it. Any other failure is a row no retry can write: the batch is
bisected until the rows that fail alone are found, the rest is written, and the events behind each unwritable
row are dead-lettered (`features.dlq`, reason `unwritable_features`, stage `push`) before their offsets are
acknowledged. (The agent checks every new snapshot with `FeatureSink.problem` first and dead-letters the event
that would make its account unwritable, so this is the safety net for defects nobody foresaw.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Protocol

from stream_processors.metrics import FeatureMetrics
from streamscore.contracts import DeadLetterReason
from streamscore.deadletters import DeadLetterGiveUpError, DeadLetterWriter, SourceRecord
from streamscore.features import RealtimeSnapshot

if TYPE_CHECKING:
    from feast import FeatureStore

    from feature_repo.settings import FeastSettings
    from feature_repo.store import RealtimeRedisWriter

log = logging.getLogger(__name__)

Row = tuple[str, RealtimeSnapshot]
"""(account_id, the account's snapshot after its latest applied transaction)."""
Ack = Callable[[], Awaitable[object]]
"""Marks one consumed event as processed, so its offset may be committed."""


GiveUp = Callable[[str], None]
"""Called once when infrastructure stayed down past the patience: the worker exits non-zero (see app.py)."""


class FeatureSink(Protocol):
    """Where snapshots go: one blocking call per batch (it runs in a worker thread)."""

    def push(self, rows: Sequence[Row]) -> None: ...

    def problem(self, snapshot: RealtimeSnapshot) -> str | None:
        """Why this snapshot can never be written (its data), or None."""
        ...

    def transient(self, exc: BaseException) -> bool:
        """Whether a failed push is worth retrying (infrastructure) rather than a row no retry can write."""
        ...


@dataclass
class MemorySink:
    """A sink that keeps the latest snapshot per account in a dict (unit tests, dry runs)."""

    rows: dict[str, RealtimeSnapshot] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)
    """Size of every batch pushed, in order."""

    def push(self, rows: Sequence[Row]) -> None:
        self.rows.update(rows)
        self.batches.append(len(rows))

    def problem(self, snapshot: RealtimeSnapshot) -> str | None:
        return None

    def transient(self, exc: BaseException) -> bool:
        return isinstance(exc, OSError | TimeoutError)


class FeastSink:
    """The production sink: per batch, one pipelined write in Feast's format to its Redis online store
    (`feature_repo.store.RealtimeRedisWriter`), or one `push_realtime` call (Feast's push source of
    `account_realtime`: SQLite, or `FEATURES_PUSH_WRITER=feast`)."""

    def __init__(self, store: FeatureStore, writer: RealtimeRedisWriter | None = None) -> None:
        self.store = store
        self.writer = writer

    @classmethod
    def open(cls, settings: FeastSettings, writer: str = "redis") -> FeastSink:
        """Open the store and check that the repository was applied: without the `account_realtime` view
        every push would fail, so the worker refuses to start instead."""
        # Imported here: Feast takes seconds to import, and the batcher's tests do not need it.
        from feature_repo.layout import REALTIME_VIEW
        from feature_repo.store import FeatureStoreError, open_store

        store = open_store(settings)
        try:
            store.get_feature_view(REALTIME_VIEW)
        except Exception as exc:
            raise FeatureStoreError(
                "open",
                f"feature view {REALTIME_VIEW!r} is not registered in project {settings.project!r} "
                f"(registry {settings.registry_path}): run `streamscore features apply` first ({exc})",
            ) from exc
        if writer == "redis" and settings.online_store == "redis":
            from feature_repo.store import RealtimeRedisWriter

            return cls(store, RealtimeRedisWriter.for_store(store, settings.redis))
        return cls(store)

    def push(self, rows: Sequence[Row]) -> None:
        if self.writer is not None:
            self.writer.write(rows)
            return
        from feature_repo.store import push_realtime

        push_realtime(self.store, rows)

    def problem(self, snapshot: RealtimeSnapshot) -> str | None:
        from feature_repo.store import snapshot_problem

        return snapshot_problem(snapshot)

    def transient(self, exc: BaseException) -> bool:
        from feature_repo.store import is_transient

        return is_transient(exc)


@dataclass(frozen=True, slots=True)
class PushPolicy:
    batch_size: int = 500
    """Accounts per push: a full batch is written at once."""
    max_delay_s: float = 0.2
    """The oldest queued row is written after at most this long."""
    hold_s: float = 0.0
    """A row is written only once its newest event has waited this long in the worker: the scorer reads an
    account's snapshot to score the account's next event, and a snapshot written before the scorer has scored its
    own event would hand that event its own features (seconds since the last transaction 0, its device already
    known) — what training's point-in-time join never shows. A row that keeps changing waits until it rests."""
    max_pending_events: int = 20_000
    """Events waiting for a push beyond which the agent stops consuming until a push succeeds."""
    retry_initial_s: float = 0.1
    """First backoff after a failed push; doubles per consecutive failure."""
    retry_max_s: float = 5.0
    """Longest backoff between two attempts."""
    unhealthy_after_s: float = 60.0
    """Pushes failing for this long make the health check fail."""
    give_up_after_s: float = 300.0
    """Pushes failing (transiently) for this long make the worker give up: exit non-zero for a restart."""

    def backoff_s(self, failures: int) -> float:
        """Wait after the `failures`-th consecutive failure (1, 2, …)."""
        return float(min(self.retry_max_s, self.retry_initial_s * 2 ** max(failures - 1, 0)))


@dataclass(frozen=True, slots=True)
class PushHealth:
    healthy: bool
    pending_rows: int
    pending_events: int
    consecutive_failures: int
    failing_for_s: float
    """Seconds since the first of the current run of failures; 0 when the last push succeeded."""
    last_error: str | None
    gave_up: bool = False
    """Infrastructure stayed down past `give_up_after_s`: the worker is exiting."""
    dead_lettered_rows: int = 0
    """Rows no push could write whose events went to the dead-letter topic (since start)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "healthy": self.healthy,
            "pending_rows": self.pending_rows,
            "pending_events": self.pending_events,
            "consecutive_failures": self.consecutive_failures,
            "failing_for_s": round(self.failing_for_s, 3),
            "last_error": self.last_error,
            "gave_up": self.gave_up,
            "dead_lettered_rows": self.dead_lettered_rows,
        }


def _log_crash(task: asyncio.Task[bool]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background push crashed", exc_info=task.exception())


@dataclass(slots=True)
class _Pending:
    seq: int
    """Sequence number of the add() that queued this snapshot (acks up to it are covered by it)."""
    snapshot: RealtimeSnapshot
    queued_at: float
    """When this account's row started waiting (kept when a newer snapshot replaces the queued one)."""
    updated_at: float = 0.0
    """When its newest snapshot was added (PushPolicy.hold_s)."""
    position: tuple[int, int] | None = None
    """(partition, offset) of the event that made the newest snapshot (publish after scoring, see `gate`)."""


class SnapshotBatcher:
    """Collects (account, snapshot, ack) and writes them to a `FeatureSink` in batches."""

    def __init__(
        self,
        sink: FeatureSink,
        policy: PushPolicy,
        metrics: FeatureMetrics,
        *,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        letters: DeadLetterWriter | None = None,
        on_give_up: GiveUp | None = None,
        gate: Callable[[int, int], bool] | None = None,
        gate_max_wait_s: float = 2.0,
    ) -> None:
        self.sink = sink
        self.gate = gate
        """Whether the event at (partition, offset) may be published (stream_processors.accounts.scored): a row
        waits for it at most `gate_max_wait_s`; None publishes at once."""
        self.gate_max_wait_s = gate_max_wait_s
        self.letters = letters
        """Where the events of unwritable rows go; without one (unit tests, dry runs) they are only logged."""
        self.on_give_up = on_give_up
        self.before_push: Callable[[Sequence[str]], Sequence[Awaitable[object]] | None] | None = None
        """Called with the accounts of a push just before it is written (the agent sends their changelog records);
        returns the sends, awaited before the push's acks are released (see `_delivered`)."""
        self.gave_up = False
        self.dead_lettered_rows = 0
        self.policy = policy
        self.metrics = metrics
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-push")
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = asyncio.Lock()
        self._rows: dict[str, _Pending] = {}
        """Queued rows, oldest first (a replaced snapshot keeps its account's place)."""
        self._acks: dict[str, list[tuple[int, Ack, SourceRecord | None]]] = {}
        self._n_acks = 0
        self._seq = 0
        self._retry_at = 0.0
        self._failures = 0
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._newest_pushed: float | None = None
        self._task: asyncio.Task[bool] | None = None
        self._in_flight: dict[str, _Pending] = {}

    # --- queueing (synchronous: called by the agent for every event) -----------------------------------

    def add(
        self,
        account_id: str,
        snapshot: RealtimeSnapshot,
        ack: Ack | None = None,
        record: SourceRecord | None = None,
        position: tuple[int, int] | None = None,
    ) -> None:
        """Queue the account's newest snapshot (replacing an older queued one) and the event's ack; the ack
        is released once a snapshot at least this new has been written (or, for a row no push can write, once
        `record`, the event, is dead-lettered)."""
        self._seq += 1
        queued = self._rows.get(account_id)
        now = self._clock()
        queued_at = queued.queued_at if queued is not None else now
        self._rows[account_id] = _Pending(self._seq, snapshot, queued_at, now, position)
        if ack is not None:
            self._acks.setdefault(account_id, []).append((self._seq, ack, record))
            self._n_acks += 1
        self._gauges()

    def add_many(
        self,
        account_id: str,
        snapshot: RealtimeSnapshot,
        acks: Sequence[tuple[Ack, SourceRecord | None]],
        position: tuple[int, int] | None = None,
    ) -> None:
        """`add` for several events of one account at once (the agent's batches): `snapshot` is the account's
        newest, every ack is released once it is written."""
        self._seq += 1
        seq = self._seq
        queued = self._rows.get(account_id)
        now = self._clock()
        queued_at = queued.queued_at if queued is not None else now
        self._rows[account_id] = _Pending(seq, snapshot, queued_at, now, position)
        if acks:
            waiting = self._acks.setdefault(account_id, [])
            waiting.extend((seq, ack, record) for ack, record in acks)
            self._n_acks += len(acks)
        self._gauges()

    @property
    def pending_rows(self) -> int:
        return len(self._rows)

    @property
    def last_seq(self) -> int:
        """Sequence number of the latest add()."""
        return self._seq

    def written_through(self, seq: int) -> bool:
        """Whether every snapshot added up to `seq` has been written (or superseded by one that was): nothing
        queued or in flight is that old."""
        return all(p.seq > seq for p in self._rows.values()) and all(p.seq > seq for p in self._in_flight.values())

    @property
    def pending_events(self) -> int:
        return self._n_acks

    @property
    def has_room(self) -> bool:
        return self._n_acks < self.policy.max_pending_events

    def due(self) -> bool:
        """A push should happen now: a full batch, too many waiting events or an old enough row, and no
        backoff in progress."""
        if not self._rows:
            return False
        now = self._clock()
        if now < self._retry_at:
            return False
        oldest = next(iter(self._rows.values())).queued_at
        due = len(self._rows) >= self.policy.batch_size or not self.has_room or now - oldest >= self.policy.max_delay_s
        return due and ((self.policy.hold_s <= 0 and self.gate is None) or any(True for _ in self._ready(now)))

    def _ready(self, now: float) -> Iterator[str]:
        """Queued accounts whose newest snapshot has rested `hold_s` and passed the gate (or waited for it too
        long), oldest queued first."""
        held = now - self.policy.hold_s
        gate = self.gate
        for key, p in self._rows.items():
            if p.updated_at > held:
                continue
            waiting = gate is not None and p.position is not None and not gate(*p.position)
            if waiting and now - p.updated_at < self.gate_max_wait_s:
                continue
            yield key

    # --- pushing -------------------------------------------------------------------------------------------

    def kick(self) -> None:
        """Start a push in the background if one is `due()` and none is running (the timer and the agent
        call this; neither waits for Redis)."""
        if self.due() and not self.flushing:
            self._task = asyncio.get_running_loop().create_task(self.flush(), name="push-snapshots")
            self._task.add_done_callback(_log_crash)

    @property
    def flushing(self) -> bool:
        return self._task is not None and not self._task.done()

    async def flush_if_due(self) -> bool:
        """Push now if `due()`; True when a push happened and succeeded."""
        if not self.due():
            return False
        return await self.flush()

    async def flush(self) -> bool:
        """Write what is queued now, `batch_size` rows per write. True on success; on failure the rows not
        written stay queued and the next attempt waits for the backoff. Rows queued while this runs wait for
        the next flush (so a slow push does not turn into a stream of tiny ones)."""
        async with self._lock:
            chunks = -(-len(self._rows) // self.policy.batch_size)
            for _ in range(chunks):
                keys = list(islice(self._ready(self._clock()), self.policy.batch_size))
                if not keys:
                    break
                if not await self._push_once(keys):
                    return False
            return True

    async def _push_once(self, keys: list[str]) -> bool:
        taken = {k: self._rows.pop(k) for k in keys}
        self._in_flight = taken
        sent = self.before_push(keys) if self.before_push is not None else ()
        rows = [(k, p.snapshot) for k, p in taken.items()]
        started = self._clock()
        written: list[Row] = []
        rejected: list[tuple[Row, BaseException]] = []
        try:
            await self._push_isolating(rows, written, rejected)
            if rejected and not written and len(rows) > 1:
                # Every row fails alone: not a few bad rows but something wrong with every write (a bug, a
                # schema change). Treated like an outage: retried, then the worker gives up.
                raise rejected[0][1]
        except asyncio.CancelledError:
            # Stopping (shutdown, rebalance): whether the write happened is unknown; keep the rows, their
            # acks were not released, so the events are replayed if they are not pushed later.
            self._requeue(taken)
            raise
        except Exception as exc:  # noqa: BLE001 — infrastructure (Redis down, timeout): retried, bounded
            done = {k for k, _ in written}
            self._requeue({k: p for k, p in taken.items() if k not in done})
            self._on_failure(exc, started, len(rows))
            if done and await self._delivered(sent):
                for key in done:
                    await self._release(key, taken[key].seq)
                self._gauges()
            return False
        self._in_flight = {}
        self._on_success(written, started)
        if not await self._delivered(sent):
            self._gauges()
            return True
        for key, _ in written:
            await self._release(key, taken[key].seq)
        for (key, _), error in rejected:
            if not await self._reject(key, taken[key].seq, error):
                return False
        self._gauges()
        return True

    async def _delivered(self, sent: Sequence[Awaitable[object]] | None) -> bool:
        """Wait until the changelog records sent for a push are in the broker: its acks may be released (and their
        offsets committed) only then. Faust flushes its producer before a commit, but its send buffer's flush gives up
        after 0.1 s without a message handed on; on a loaded worker records still waited there when the offsets went
        out, and the partition's next owner recovered the state without them and read on after their events (an
        event lost for good). False when a record could not be sent: the acks stay held (a later push of the same
        account releases them, with a record of the whole row)."""
        if not sent:
            return True
        try:
            await asyncio.gather(*sent)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("a changelog record of a push could not be sent; its events stay unacknowledged")
            return False
        return True

    async def _push_isolating(
        self, rows: list[Row], written: list[Row], rejected: list[tuple[Row, BaseException]]
    ) -> None:
        """Push `rows`; a failure the sink does not call transient splits them in halves until the rows that
        fail alone are found (`rejected`). What succeeded goes to `written`; a transient failure is raised."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.sink.push, rows)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.sink.transient(exc):
                raise
            if len(rows) == 1:
                rejected.append((rows[0], exc))
                return
            middle = len(rows) // 2
            await self._push_isolating(rows[:middle], written, rejected)
            await self._push_isolating(rows[middle:], written, rejected)
            return
        written.extend(rows)

    async def _reject(self, account_id: str, seq: int, exc: BaseException) -> bool:
        """A row no push can write: dead-letter the events it carried, then release their acks. False when the
        letters could not be delivered within the patience (the worker gives up; the acks stay held)."""
        waiting = self._acks.get(account_id, [])
        records = [record for s, _, record in waiting if s <= seq and record is not None]
        problem = f"the online store cannot write this account's snapshot: {type(exc).__name__}: {exc}"
        log.error("account %s: %s; dead-lettering its %d event(s)", account_id, problem, len(records))
        self.dead_lettered_rows += 1
        if self.letters is not None and records:
            letters = self.letters
            try:
                await letters.write(
                    [letters.letter(r, DeadLetterReason.UNWRITABLE_FEATURES, problem, "push") for r in records]
                )
            except DeadLetterGiveUpError as error:
                self.give_up(error.message)
                return False
        await self._release(account_id, seq)
        return True

    async def _release(self, account_id: str, seq: int) -> None:
        waiting = self._acks.get(account_id)
        if not waiting:
            return
        covered = [ack for s, ack, _ in waiting if s <= seq]
        rest = [entry for entry in waiting if entry[0] > seq]
        if rest:
            self._acks[account_id] = rest
        else:
            del self._acks[account_id]
        self._n_acks -= len(covered)
        for ack in covered:
            try:
                await ack()
            except Exception:
                log.exception("acknowledging a consumed event failed; it will be redelivered")

    def give_up(self, reason: str) -> None:
        """Infrastructure stayed down past the patience: tell the worker once (it exits non-zero)."""
        if self.gave_up:
            return
        self.gave_up = True
        log.critical("giving up: %s", reason)
        if self.on_give_up is not None:
            self.on_give_up(reason)

    def _requeue(self, taken: dict[str, _Pending]) -> None:
        self._in_flight = {}
        # The failed rows go back to the front. A row queued for the same account while the push ran is
        # newer: its snapshot wins, the older waiting time stays.
        merged: dict[str, _Pending] = {}
        for key, old in taken.items():
            newer = self._rows.pop(key, None)
            merged[key] = (
                old
                if newer is None
                else _Pending(newer.seq, newer.snapshot, old.queued_at, newer.updated_at, newer.position)
            )
        merged.update(self._rows)
        self._rows = merged
        self._gauges()

    def _on_failure(self, exc: Exception, started: float, size: int) -> None:
        now = self._clock()
        self.metrics.push_latency.observe(now - started)
        self.metrics.push_failures.inc()
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = started
        backoff = self.policy.backoff_s(self._failures)
        self._retry_at = now + backoff
        self._last_error = f"{type(exc).__name__}: {exc}"[:500]
        failing_for = now - self._failing_since
        if failing_for >= self.policy.give_up_after_s:
            self.give_up(f"pushes to the online store failing for {failing_for:.0f} s: {self._last_error}")
        log.warning(
            "push of %d rows failed (attempt %d, retry in %.2f s, %d rows and %d events wait): %s",
            size,
            self._failures,
            backoff,
            len(self._rows),
            self._n_acks,
            self._last_error,
            exc_info=self._failures == 1,
        )

    def _on_success(self, rows: list[Row], started: float) -> None:
        self.metrics.push_latency.observe(self._clock() - started)
        if self._failures:
            log.info("push succeeded again after %d failed attempts", self._failures)
        self._failures, self._failing_since, self._retry_at, self._last_error = 0, None, 0.0, None
        self.metrics.push_batches.inc()
        self.metrics.pushed_rows.inc(len(rows))
        newest = max((s.last_event_ts for _, s in rows if s.last_event_ts is not None), default=None)
        if newest is not None:
            self.metrics.freshness.observe(max(self._wall_clock() - newest, 0.0))
            if self._newest_pushed is None or newest > self._newest_pushed:
                self._newest_pushed = newest
                self.metrics.last_pushed_event.set(newest)

    def _gauges(self) -> None:
        self.metrics.pending_rows.set(len(self._rows))
        self.metrics.pending_events.set(self._n_acks)

    # --- waiting ---------------------------------------------------------------------------------------------

    async def wait_for_room(self) -> None:
        """Backpressure: return once fewer than `max_pending_events` events wait, pushing (after the
        backoff) until then."""
        while not self.has_room:
            if self._task is not None and not self._task.done():
                await asyncio.wait([self._task])
                continue
            wait = self._retry_at - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            elif await self.flush() and not self.has_room:
                # Cannot happen (every waiting ack has a queued row, and a successful flush wrote them all);
                # never spin without yielding to the event loop if it somehow does.
                await asyncio.sleep(self.policy.max_delay_s)

    async def drain(self, timeout_s: float) -> bool:
        """At shutdown: push everything queued, retrying with backoff for at most `timeout_s` (a push that
        hangs longer is abandoned; its events are replayed at the next start)."""
        try:
            await asyncio.wait_for(self._drain(), timeout_s)
        except TimeoutError:
            return False
        return not self._rows

    async def _drain(self) -> None:
        while self._rows:
            if await self.flush():
                if self._rows:  # rows still held (hold_s, the gate) or queued meanwhile: let them rest
                    await asyncio.sleep(max(self.policy.hold_s, 0.01 if self.gate is not None else 0.0))
                continue
            await asyncio.sleep(max(self._retry_at - self._clock(), 0.0))

    def health(self) -> PushHealth:
        failing_for = 0.0 if self._failing_since is None else self._clock() - self._failing_since
        return PushHealth(
            healthy=failing_for < self.policy.unhealthy_after_s,
            pending_rows=len(self._rows),
            pending_events=self._n_acks,
            consecutive_failures=self._failures,
            failing_for_s=failing_for,
            last_error=self._last_error,
            gave_up=self.gave_up,
            dead_lettered_rows=self.dead_lettered_rows,
        )

    def close(self) -> None:
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
