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

import json
import logging
from collections.abc import Callable, Mapping
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
    state = AccountState.from_dict(stored) if stored is not None else AccountState()
    redelivered = tx.event_id in state.seen
    if apply_transaction(state, tx):
        snapshot = state.snapshot()
        issue = problem(snapshot)
        if issue is None:
            return Folded(state=state.as_dict(), snapshot=snapshot)
        if stored is not None and problem(AccountState.from_dict(stored).snapshot()) is not None:
            return _refold(tx, problem)
        return Folded(state=None, snapshot=None, rejected=issue)
    # Checked only on this path (no new state): an account whose stored state cannot be written (one event
    # from the year 9999 folded before the check existed) turns every later event into a late one.
    current = state.snapshot()
    if problem(current) is not None:
        return _refold(tx, problem)
    if redelivered:
        # The state already holds this event, but its push may have been lost with a crashed worker:
        # pushing the account's current snapshot again is harmless (same value) and heals that case.
        return Folded(state=None, snapshot=current, skipped="duplicate")
    return Folded(state=None, snapshot=None, skipped="late")


def _refold(tx: TransactionFacts, problem: Problem) -> Folded:
    state = AccountState()
    apply_transaction(state, tx)
    snapshot = state.snapshot()
    issue = problem(snapshot)
    if issue is None:
        return Folded(state=state.as_dict(), snapshot=snapshot, reset=True)
    return Folded(state=None, snapshot=None, rejected=issue, reset=True)


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


def install(app: Any, topic: Any, edge: Edge) -> Any:
    """Register the accounts agent on `app`, reading `topic` (raw bytes) and keeping state in `edge.table`."""

    @app.agent(topic, name=AGENT_NAME, concurrency=1)  # type: ignore[untyped-decorator]
    async def accounts(stream: Any) -> None:
        async for event in stream.noack().events():
            await on_event(edge, stream, event)

    return accounts


async def on_event(edge: Edge, stream: Any, event: Any) -> None:
    app, table, batcher, metrics = edge.app, edge.table, edge.batcher, edge.metrics
    message = event.message
    generation = message.generation_id

    async def ack() -> None:
        # After a rebalance the partition may belong to another worker, which will process the event
        # again: acknowledging it here could commit an offset this worker no longer owns.
        if generation == app.consumer_generation_id:
            await stream.ack(event)

    try:
        # Faust's timestamps are in seconds; aiokafka's timestamp type 1 is LogAppendTime (Kafka's protocol).
        stamp = message.timestamp * 1000.0 if message.timestamp else None
        received = receiving_clock(stamp, message.timestamp_type == LOG_APPEND_TIME)
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
        await ack()
        return

    try:
        stored = table.get(tx.account_id)
        folded = fold(edge.seed.get(tx.account_id) if stored is None else stored, tx, batcher.sink.problem)
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
        await ack()
        return
    if folded.reset:
        metrics.state_resets.inc()
        log.warning("account %s: its stored state could not be written to the online store; reset", tx.account_id)
        if folded.state is None:
            table.pop(tx.account_id, None)
    if folded.rejected is not None:
        why = f"the account's snapshot after this event could not be written: {folded.rejected}"
        await _dead_letter(edge, message, DeadLetterReason.UNWRITABLE_FEATURES, "features", why)
        await ack()
        return
    if folded.skipped is None:
        metrics.events_processed.inc()
    else:
        metrics.events_skipped.labels(reason=folded.skipped).inc()
    if folded.state is not None:
        # Written in the event's context: the changelog record goes to the event's partition.
        table[tx.account_id] = folded.state
    if folded.snapshot is None:
        await ack()
        return
    batcher.add(
        tx.account_id,
        folded.snapshot,
        ack,
        SourceRecord.of_faust(message) if edge.letters is not None else None,
        (message.partition, message.offset),
    )
    if batcher.has_room:
        batcher.kick()
    else:
        await batcher.wait_for_room()


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
