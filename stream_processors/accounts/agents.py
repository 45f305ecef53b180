"""The accounts agent: transactions → per-account state (a Faust table) → batched snapshot pushes.

The agent is thin: `decode` and `fold` are pure and hold every decision; the agent moves bytes from Kafka
to them, writes the table and queues the snapshot.

Ordering and co-partitioning: the transactions topic is keyed by account_id with the murmur2 partitioner
(every producer of the project, like the Java client and aiokafka), so all of an account's events are on
one partition and arrive in order. The table's changelog has the same partition count and a table write
goes to the partition of the event being processed, so a worker that owns partition p of the
transactions topic also owns (and recovers) partition p of the state.

Delivery: at-least-once, concurrency 1. The offset of an event is acknowledged only after the snapshot
it produced is in the online store (see pushing.py), so a crash replays the events whose effect may not
be readable yet. `apply_transaction` is idempotent by event_id, so a replayed event does not change the
state; its account's current snapshot is queued again, which makes the online store catch up even when
the crash hit between the changelog write and the push. Net effect: effectively-once features.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from stream_processors.accounts.pushing import GiveUp, SnapshotBatcher
from stream_processors.metrics import FeatureMetrics
from streamscore.contracts import (
    DEFAULT_WINDOW,
    DeadLetterReason,
    DeadLetterStage,
    EventTimeWindow,
    HeadersIn,
    decode_transaction,
    receiving_clock,
)
from streamscore.deadletters import DeadLetterGiveUpError, DeadLetterWriter, SourceRecord
from streamscore.errors import ConfigError, EventError
from streamscore.features import AccountState, RealtimeSnapshot, TransactionFacts, apply_transaction
from streamscore.starts import StartGuard

log = logging.getLogger(__name__)

TABLE_NAME = "account-state"
"""Faust table name; its changelog topic is `<TOPICS_PREFIX><FEATURES_APP_ID>-account-state-changelog`."""
AGENT_NAME = "accounts"

SkipReason = Literal["duplicate", "late", "invalid"]
LOG_APPEND_TIME = 1
"""A record's timestamp type in Kafka's protocol (and aiokafka's ConsumerRecord): 0 CreateTime, 1 LogAppendTime."""


# --- pure core ---------------------------------------------------------------------------------------


def decode(
    key: bytes | None,
    value: bytes | None,
    headers: HeadersIn | None,
    window: EventTimeWindow = DEFAULT_WINDOW,
    received_s: float | None = None,
) -> TransactionFacts:
    """The feature-relevant facts of one transactions record; raises EventError for a defective one (`window`:
    the event-time window, CONTRACT_…, the scorer's too; `received_s`: the receiving clock, see
    `contracts.receiving_clock`)."""
    return TransactionFacts.of(decode_transaction(key, value, headers, window=window, now_s=received_s))


Problem = Callable[[RealtimeSnapshot], "str | None"]
"""Why a snapshot can never be written to the online store, or None (`FeatureSink.problem`)."""


def _writable(snapshot: RealtimeSnapshot) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Folded:
    """What one transaction does to its account."""

    state: dict[str, object] | None
    """The new state to store (AccountState.as_dict()); None when the state did not change."""
    snapshot: RealtimeSnapshot | None
    """The snapshot to (re)push: the new one, or the current one for a redelivered event; None for a late
    or rejected event (nothing to write)."""
    skipped: SkipReason | None = None
    rejected: str | None = None
    """The event would make its account's snapshot unwritable (why): it is dead-lettered, the state is kept."""
    reset: bool = False
    """The stored state itself could not be written (stored before this check existed): it was dropped and the
    account starts again from this event. With `state` None as well, the account's row is deleted."""


def fold(stored: Mapping[str, object] | None, tx: TransactionFacts, problem: Problem = _writable) -> Folded:
    """Apply `tx` to the stored state of its account (None: a new account) with the one shared
    `apply_transaction`, unless the snapshot it leads to could never be written (`problem`)."""
    step = fold_state(AccountState.from_dict(stored) if stored is not None else None, tx, problem)
    return Folded(
        state=None if step.state is None else step.state.as_dict(),
        snapshot=step.snapshot,
        skipped=step.skipped,
        rejected=step.rejected,
        reset=step.reset,
    )


@dataclass(frozen=True, slots=True)
class Step:
    """`Folded` over live `AccountState` objects: what the agent's batches keep between events of one account."""

    state: AccountState | None
    """The account's new state (a new object; the one passed in is never changed); None when it did not change."""
    snapshot: RealtimeSnapshot | None
    skipped: SkipReason | None = None
    rejected: str | None = None
    reset: bool = False


def copy_state(state: AccountState) -> AccountState:
    """A copy `apply_transaction` may change without touching `state` (it mutates the deques in place and replaces
    the lists): a few µs, where parsing the stored dict again costs tens."""
    return AccountState(deque(state.events), state.devices, state.countries, state.last_event_ts, deque(state.seen))


def state_dict(state: AccountState) -> dict[str, object]:
    """`state.as_dict()`, the same dict, at C speed for the event list (a busy account keeps hundreds of events)."""
    return {
        "events": list(map(list, state.events)),
        "devices": list(state.devices),
        "countries": list(state.countries),
        "last_event_ts": state.last_event_ts,
        "seen": list(state.seen),
    }


def fold_state(current: AccountState | None, tx: TransactionFacts, problem: Problem = _writable) -> Step:
    """`fold` on a live state (None: a new account); `current` itself is never changed, so a rejected event leaves
    it as it was."""
    state = copy_state(current) if current is not None else AccountState()
    redelivered = tx.event_id in state.seen
    if apply_transaction(state, tx):
        snapshot = state.snapshot()
        issue = problem(snapshot)
        if issue is None:
            return Step(state=state, snapshot=snapshot)
        if current is not None and problem(current.snapshot()) is not None:
            return _refold(tx, problem)
        return Step(state=None, snapshot=None, rejected=issue)
    # Checked only on this path (no new state): an account whose stored state cannot be written (one event
    # from the year 9999 folded before the check existed) turns every later event into a late one.
    snapshot_now = state.snapshot()
    if problem(snapshot_now) is not None:
        return _refold(tx, problem)
    if redelivered:
        # The state already holds this event, but its push may have been lost with a crashed worker:
        # pushing the account's current snapshot again is harmless (same value) and heals that case.
        return Step(state=None, snapshot=snapshot_now, skipped="duplicate")
    return Step(state=None, snapshot=None, skipped="late")


def _refold(tx: TransactionFacts, problem: Problem) -> Step:
    state = AccountState()
    apply_transaction(state, tx)
    snapshot = state.snapshot()
    issue = problem(snapshot)
    if issue is None:
        return Step(state=state, snapshot=snapshot, reset=True)
    return Step(state=None, snapshot=None, rejected=issue, reset=True)


class SeedStates:
    """Each account's state after a history (feature_repo.batch writes them, FEATURES_SEED_PATH): kept as JSON and
    parsed on first use, as most accounts may never transact during a run."""

    def __init__(self, states: Mapping[str, str] | None = None) -> None:
        self._states = dict(states or {})

    @classmethod
    def read(cls, path: Path) -> SeedStates:
        try:
            table = pq.read_table(path, columns=["account_id", "state"])
        except (OSError, pa.ArrowInvalid, KeyError) as exc:
            raise ConfigError("FEATURES_SEED_PATH", f"cannot read the seed states {path}: {exc}") from None
        seed = cls(dict(zip(table.column("account_id").to_pylist(), table.column("state").to_pylist(), strict=True)))
        log.info("seed states accounts=%d path=%s", len(seed), path)
        return seed

    def __len__(self) -> int:
        return len(self._states)

    def get(self, account_id: str) -> dict[str, object] | None:
        raw = self._states.get(account_id)
        return None if raw is None else dict(json.loads(raw))


# --- Faust edge --------------------------------------------------------------------------------------


@dataclass
class Edge:
    """What the accounts agent needs besides the stream: the table, the batcher, the letters, the metrics."""

    app: Any
    table: Any
    batcher: SnapshotBatcher
    metrics: FeatureMetrics
    letters: DeadLetterWriter | None = None
    on_give_up: GiveUp | None = None
    window: EventTimeWindow = DEFAULT_WINDOW
    """The event-time window (ContractSettings): the scorer's, so both refuse the same events."""
    seed: SeedStates = field(default_factory=lambda: SeedStates())
    """States an account starts from when the table does not hold it (FEATURES_SEED_PATH)."""
    batch_size: int = 2_000
    """Events folded together at most (FEATURES_STREAM_BATCH_SIZE); 1 folds and writes event by event."""
    live: LiveStates = field(default_factory=lambda: LiveStates())
    dirty: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Accounts whose table row changed since its changelog record was sent: (partition, consumer generation)."""
    received: dict[int, float] = field(default_factory=dict)
    """Per partition, the newest receiving time of a record taken (the sweep's clock, accounts/evict.py)."""
    starts: StartGuard | None = None
    """Checks where each partition starts in each consumer generation (streamscore/starts.py); None: not checked."""

    def send_changelog(self, accounts: Sequence[str]) -> list[Any]:
        """Send the changelog records of `accounts`' changed rows and return the sends (the batcher calls this just
        before it pushes their snapshots, and releases the push's acks only once every send is delivered: Faust's
        flush before a commit can give up on records still in its send buffer, see `SnapshotBatcher._delivered`).
        One record per account per push instead of one per event: a busy account's state holds hundreds of events, and
        its record was most of the worker's bytes to the broker.

        A row changed under an earlier consumer generation is not sent: its events are not acknowledged either
        (`_ack`), so the partition's owner replays them; if that is this worker, a replayed event is a duplicate of
        the row and marks it changed again."""
        dirty = self.dirty
        sent: list[Any] = []
        if not dirty:
            return sent
        generation = self.app.consumer_generation_id
        data = self.table.data
        for account in accounts:
            entry = dirty.pop(account, None)
            if entry is None:
                continue
            partition, seen_in = entry
            value = data.get(account)
            if seen_in == generation and value is not None:
                # Faust's future of the send: the batcher waits for it before it releases the push's acks.
                sent.append(self.table.send_changelog(partition, account, value))
        return sent


class LiveStates:
    """The parsed `AccountState` behind each table row this worker wrote, so the next batch of an account does not
    parse the row again. An entry is used only while the table still holds the very dict it was written with
    (identity): a row recovered from the changelog, replaced or dropped by anyone else is parsed afresh, so this cache
    can never serve a state the table does not hold. Bounded: cleared when full."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._states: dict[str, tuple[object, AccountState]] = {}

    def get(self, account_id: str, stored: object) -> AccountState | None:
        entry = self._states.get(account_id)
        if entry is not None and entry[0] is stored:
            return entry[1]
        return None

    def put(self, account_id: str, stored: object, state: AccountState) -> None:
        if len(self._states) >= self.limit:
            self._states.clear()
        self._states[account_id] = (stored, state)

    def drop(self, account_id: str) -> None:
        self._states.pop(account_id, None)


class EventBatch:
    """The events the agent has taken but not folded yet. Faust hands the agent one event at a time (its consumer
    yields to the event loop after every record), so a batch cannot be "what the stream has buffered": it closes when
    `size` events wait or its first event has waited `max_wait_s`, whichever first (the agent checks at every event,
    a timer when no event comes). Batches are folded one at a time, in order (an account's events stay in order)."""

    def __init__(self, edge: Edge, size: int, max_wait_s: float, clock: Callable[[], float]) -> None:
        self.edge = edge
        self.size = size
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.stream: Any = None
        self._events: list[Any] = []
        self._first_at = 0.0
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._events)

    def add(self, stream: Any, event: Any) -> bool:
        """Take an event; True when the batch should be folded now."""
        if not self._events:
            self._first_at = self.clock()
        self.stream = stream
        self._events.append(event)
        return len(self._events) >= self.size or self.clock() - self._first_at >= self.max_wait_s

    def due(self) -> bool:
        return bool(self._events) and self.clock() - self._first_at >= self.max_wait_s

    async def fold(self) -> None:
        """Fold what waits now (nothing when another fold took it first)."""
        events, self._events = self._events, []
        if not events:
            return
        async with self._lock:
            await on_events(self.edge, self.stream, events)


_AGENT_ACK: contextvars.ContextVar[bool] = contextvars.ContextVar("agent_ack", default=False)
"""Set while the agent acknowledges an event it processed (`_ack`); `guard_acks` lets only those acks through."""


def guard_acks(consumer: Any, on_refused: Callable[[Any], None] | None = None) -> None:
    """Let only the agent's own acknowledgements reach `consumer`'s offset bookkeeping.

    Faust's stream acknowledges every event it skips — one delivered while the flow is stopped for a rebalance, or
    fetched under an older consumer generation — so that lag does not grow. Nobody processed such an event: its offset
    marks a hole as safe to commit. Right after partitions are revoked the consumer knows no committed offset (until
    the seek that ends the recovery), and then Faust's `_new_offset` skips its head-gap check: one such ack is
    committed as is, stepping over every event before it whose snapshot and changelog record were not written yet (a
    batch taken before the rebalance, rows whose push the generation change cut off). The partition's next owner
    starts after them and the account's state misses them for good. Refused here, the skipped event stays unacknowledged
    like the others, and is read again from the committed offset."""
    ack = consumer.ack

    def guarded(message: Any) -> bool:
        if not _AGENT_ACK.get():
            if on_refused is not None:
                on_refused(message)
            return False
        return bool(ack(message))

    consumer.ack = guarded


def install(app: Any, topic: Any, edge: Edge, *, max_wait_s: float = 0.01) -> Any:
    """Register the accounts agent on `app`, reading `topic` (raw bytes) and keeping state in `edge.table`.

    Events are folded in batches (`EventBatch`: at most `edge.batch_size` events, at most `max_wait_s` old), so each
    account's state is parsed, written to the table (one changelog record) and queued for a push once per batch
    instead of once per event."""
    batch = EventBatch(edge, edge.batch_size, max_wait_s if edge.batch_size > 1 else 0.0, time.monotonic)

    def refused(message: Any) -> None:
        edge.metrics.acks_refused.inc()
        log.info(
            "not acknowledging an event Faust skipped topic=%s partition=%d offset=%d generation=%s (now %s)",
            message.topic,
            message.partition,
            message.offset,
            message.generation_id,
            app.consumer_generation_id,
        )

    @app.task  # type: ignore[untyped-decorator]
    async def guard_acknowledgements() -> None:
        # At the worker's start, before the first assignment (the consumer exists only once the app runs).
        guard_acks(app.consumer, refused)

    @app.agent(topic, name=AGENT_NAME, concurrency=1)  # type: ignore[untyped-decorator]
    async def accounts(stream: Any) -> None:
        async for event in stream.noack().events():
            if batch.add(stream, event):
                await batch.fold()

    if edge.batch_size > 1:

        @app.timer(interval=max(max_wait_s / 2.0, 0.001), name="fold-waiting-events")  # type: ignore[untyped-decorator]
        async def fold_waiting_events() -> None:
            if batch.due():
                await batch.fold()

    return accounts


async def on_event(edge: Edge, stream: Any, event: Any) -> None:
    """One event (a batch of one)."""
    await on_events(edge, stream, [event])


@dataclass(slots=True)
class _Pending:
    """One decoded event of a batch, waiting for its account's turn."""

    event: Any
    tx: TransactionFacts


async def on_events(edge: Edge, stream: Any, events: Sequence[Any]) -> None:
    """Fold a batch of consumed events: decode each (defective ones skipped and acknowledged), then account by
    account in the events' order: fold, write the account's final state to the table once, queue its newest snapshot
    once with every event's ack. Accounts live on one partition each, so the per-account order is the partition's."""
    app, metrics = edge.app, edge.metrics
    generation = app.consumer_generation_id
    if edge.starts is not None:
        events = await _admitted(edge, generation, events)
    by_account: dict[str, list[_Pending]] = {}
    for event in events:
        if event.message.generation_id != generation:
            # Taken before a rebalance: Faust drops the events its agents have not started on, and the partition's
            # owner reads them again from the committed offset. So does this batch (folding it could write the
            # state of a partition this worker no longer owns).
            continue
        message = event.message
        try:
            # Faust's timestamps are in seconds; aiokafka's timestamp type 1 is LogAppendTime (Kafka's protocol).
            stamp = message.timestamp * 1000.0 if message.timestamp else None
            received = receiving_clock(stamp, message.timestamp_type == LOG_APPEND_TIME)
            clock = time.time() if received is None else received  # what the window judges the event by
            if clock > edge.received.get(message.partition, 0.0):
                edge.received[message.partition] = clock
            tx = decode(message.key, message.value, message.headers, edge.window, received)
        except EventError as exc:
            # The contract rejects it: the scorer dead-letters it to transactions.dlq (same bytes, same reason);
            # a second letter here would only duplicate that one.
            metrics.events_skipped.labels(reason="invalid").inc()
            metrics.invalid_events.labels(reason=exc.reason).inc()
            log.debug(
                "skipping invalid event topic=%s partition=%d offset=%d: %s",
                message.topic,
                message.partition,
                message.offset,
                exc.message,
            )
            await _ack(app, stream, event)
            continue
        by_account.setdefault(tx.account_id, []).append(_Pending(event, tx))
    for account_id, pending in by_account.items():
        await _fold_account(edge, stream, account_id, pending, single=edge.batch_size == 1)
    batcher = edge.batcher
    if batcher.has_room:
        batcher.kick()
    else:
        await batcher.wait_for_room()


async def _admitted(edge: Edge, generation: int, events: Sequence[Any]) -> Sequence[Any]:
    """`events` less those of partitions the start guard refuses (not assigned here, or a stale fetch): they are
    neither folded nor acknowledged."""
    guard = edge.starts
    assert guard is not None
    firsts: dict[tuple[str, int], int] = {}
    for event in events:
        message = event.message
        if message.generation_id == generation:
            firsts.setdefault((message.topic, message.partition), message.offset)
    if not firsts or guard.settled(generation, firsts):
        return events
    assigned = {(tp.topic, tp.partition) for tp in edge.app.consumer.assignment()}
    admitted = await guard.admit(generation, assigned, firsts)
    kept = [
        e for e in events if e.message.generation_id != generation or (e.message.topic, e.message.partition) in admitted
    ]
    if len(kept) != len(events):
        edge.metrics.events_refused.inc(len(events) - len(kept))
    return kept


async def _ack(app: Any, stream: Any, event: Any) -> None:
    # After a rebalance the partition may belong to another worker, which will process the event again:
    # acknowledging it here could commit an offset this worker no longer owns.
    if event.message.generation_id == app.consumer_generation_id:
        token = _AGENT_ACK.set(True)
        try:
            await stream.ack(event)
        finally:
            _AGENT_ACK.reset(token)


def _acker(app: Any, stream: Any, event: Any) -> Callable[[], Any]:
    return lambda: _ack(app, stream, event)


async def _fold_account(edge: Edge, stream: Any, account_id: str, pending: list[_Pending], *, single: bool) -> None:
    app, table, batcher, metrics, live = edge.app, edge.table, edge.batcher, edge.metrics, edge.live
    stored = table.get(account_id)
    current: AccountState | None
    if stored is None:
        seeded = edge.seed.get(account_id)
        current = None if seeded is None else AccountState.from_dict(seeded)
    else:
        current = live.get(account_id, stored) or AccountState.from_dict(stored)
    changed = deleted = redelivered = False
    snapshot: RealtimeSnapshot | None = None
    acks: list[tuple[Callable[[], Any], SourceRecord | None]] = []
    last = pending[-1].event.message
    for item in pending:
        event, tx, message = item.event, item.tx, item.event.message
        try:
            step = fold_state(current, tx, batcher.sink.problem)
        except Exception as exc:  # the pure fold failing on one event must not stop the stream
            log.exception(
                "applying event %s topic=%s partition=%d offset=%d failed",
                tx.event_id,
                message.topic,
                message.partition,
                message.offset,
            )
            why = f"{type(exc).__name__}: {exc}"
            await _dead_letter(edge, message, DeadLetterReason.PROCESSING_FAILED, "apply", why)
            await _ack(app, stream, event)
            continue
        if step.reset:
            metrics.state_resets.inc()
            log.warning("account %s: its stored state could not be written to the online store; reset", account_id)
            if step.state is None:
                # The row is dropped: the account's next event starts from its seed, as a new account would.
                seeded = edge.seed.get(account_id)
                current = None if seeded is None else AccountState.from_dict(seeded)
                deleted, changed = True, False
        if step.rejected is not None:
            why = f"the account's snapshot after this event could not be written: {step.rejected}"
            await _dead_letter(edge, message, DeadLetterReason.UNWRITABLE_FEATURES, "features", why)
            await _ack(app, stream, event)
            continue
        if step.skipped is None:
            metrics.events_processed.inc()
        else:
            metrics.events_skipped.labels(reason=step.skipped).inc()
        if step.state is not None:
            current, changed, deleted = step.state, True, False
        elif step.skipped == "duplicate":
            redelivered = True
        if step.snapshot is None:
            await _ack(app, stream, event)
            continue
        snapshot = step.snapshot
        acks.append((_acker(app, stream, event), SourceRecord.of_faust(message) if edge.letters is not None else None))
        last = message
    if changed and current is not None:
        value = state_dict(current)
        if single:
            table[account_id] = value  # in the event's context: the changelog record goes to its partition
        else:
            # The memory store holds the row now; its changelog record goes to the partition of the account's
            # events (co-partitioning) when its snapshot is pushed (Edge.send_changelog).
            table.data[account_id] = value
            edge.dirty[account_id] = (last.partition, last.generation_id)
        live.put(account_id, value, current)
    elif redelivered and not single and account_id in table.data:
        # A replay after a rebalance may find the row ahead of the changelog (see Edge.send_changelog).
        edge.dirty[account_id] = (last.partition, last.generation_id)
    elif deleted:
        live.drop(account_id)
        if single:
            table.pop(account_id, None)
        elif account_id in table.data:
            edge.dirty.pop(account_id, None)
            table.send_changelog(last.partition, account_id, None, value_serializer="raw")
            del table.data[account_id]
    if snapshot is not None:
        batcher.add_many(account_id, snapshot, acks, (last.partition, last.offset))


async def _dead_letter(edge: Edge, message: Any, reason: DeadLetterReason, stage: DeadLetterStage, why: str) -> None:
    """Dead-letter one consumed record and wait for its delivery (its ack follows). Giving up on the broker
    raises, so the event is never acknowledged."""
    if edge.letters is None:
        log.error(
            "no dead-letter topic configured; dropping topic=%s offset=%d: %s", message.topic, message.offset, why
        )
        edge.metrics.dead_letters.labels(reason=reason.value).inc()
        return
    try:
        await edge.letters.write([edge.letters.letter(SourceRecord.of_faust(message), reason, why, stage)])
    except DeadLetterGiveUpError as exc:
        if edge.on_give_up is not None:
            edge.on_give_up(exc.message)
        raise
