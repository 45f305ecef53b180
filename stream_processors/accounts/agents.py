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

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from stream_processors.accounts.pushing import SnapshotBatcher
from stream_processors.metrics import FeatureMetrics
from streamscore.contracts import HeadersIn, decode_transaction
from streamscore.errors import EventError
from streamscore.features import AccountState, RealtimeSnapshot, TransactionFacts, apply_transaction

log = logging.getLogger(__name__)

TABLE_NAME = "account-state"
"""Faust table name; its changelog topic is `<TOPICS_PREFIX><FEATURES_APP_ID>-account-state-changelog`."""
AGENT_NAME = "accounts"

SkipReason = Literal["duplicate", "late", "invalid"]


# --- pure core ---------------------------------------------------------------------------------------


def decode(key: bytes | None, value: bytes | None, headers: HeadersIn | None) -> TransactionFacts:
    """The feature-relevant facts of one transactions record; raises EventError for a defective one."""
    return TransactionFacts.of(decode_transaction(key, value, headers))


@dataclass(frozen=True, slots=True)
class Folded:
    """What one transaction does to its account."""

    state: dict[str, object] | None
    """The new state to store (AccountState.as_dict()); None when the state did not change."""
    snapshot: RealtimeSnapshot | None
    """The snapshot to (re)push: the new one, or the current one for a redelivered event; None for a late
    event (nothing to write)."""
    skipped: SkipReason | None = None


def fold(stored: Mapping[str, object] | None, tx: TransactionFacts) -> Folded:
    """Apply `tx` to the stored state of its account (None: a new account) with the one shared
    `apply_transaction`."""
    state = AccountState.from_dict(stored) if stored is not None else AccountState()
    redelivered = tx.event_id in state.seen
    if apply_transaction(state, tx):
        return Folded(state=state.as_dict(), snapshot=state.snapshot())
    if redelivered:
        # The state already holds this event, but its push may have been lost with a crashed worker:
        # pushing the account's current snapshot again is harmless (same value) and heals that case.
        return Folded(state=None, snapshot=state.snapshot(), skipped="duplicate")
    return Folded(state=None, snapshot=None, skipped="late")


# --- Faust edge --------------------------------------------------------------------------------------


def install(app: Any, topic: Any, table: Any, batcher: SnapshotBatcher, metrics: FeatureMetrics) -> Any:
    """Register the accounts agent on `app`, reading `topic` (raw bytes) and keeping state in `table`."""

    @app.agent(topic, name=AGENT_NAME, concurrency=1)  # type: ignore[untyped-decorator]
    async def accounts(stream: Any) -> None:
        async for event in stream.noack().events():
            await on_event(app, stream, event, table, batcher, metrics)

    return accounts


async def on_event(
    app: Any, stream: Any, event: Any, table: Any, batcher: SnapshotBatcher, metrics: FeatureMetrics
) -> None:
    message = event.message
    generation = message.generation_id

    async def ack() -> None:
        # After a rebalance the partition may belong to another worker, which will process the event
        # again: acknowledging it here could commit an offset this worker no longer owns.
        if generation == app.consumer_generation_id:
            await stream.ack(event)

    try:
        tx = decode(message.key, message.value, message.headers)
    except EventError as exc:
        # Defective events are the scorer's to dead-letter; here they only have no effect.
        metrics.events_skipped.labels(reason="invalid").inc()
        log.debug(
            "skipping invalid event topic=%s partition=%d offset=%d: %s",
            message.topic,
            message.partition,
            message.offset,
            exc.message,
        )
        await ack()
        return

    folded = fold(table.get(tx.account_id), tx)
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
    batcher.add(tx.account_id, folded.snapshot, ack)
    if batcher.has_room:
        batcher.kick()
    else:
        await batcher.wait_for_room()
