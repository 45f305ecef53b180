"""Which acknowledgements reach Faust's offset bookkeeping: only the agent's, for events it processed.

Faust's stream acknowledges an event it skips (delivered while the flow is stopped for a rebalance, or fetched under an
older consumer generation). The consumer here is Faust's own bookkeeping (`Consumer.ack` and `Consumer._new_offset`,
bound to the state they use), right after a rebalance revoked the partition: no committed offset is known yet."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from types import MethodType, SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from faust.types.tuples import TP, ConsumerMessage
from intervaltree import IntervalTree  # type: ignore[import-untyped]

from stream_processors.accounts.agents import _ack, guard_acks

TOPIC = "transactions"
PARTITION = TP(TOPIC, 5)
GENERATION = 4


def faust_offsets() -> Any:
    """Faust's consumer offset bookkeeping as it is after partitions were revoked (committed offset unknown)."""
    consumer = SimpleNamespace(
        app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True)),
        _committed_offset=defaultdict(lambda: None),
        _acked_index=defaultdict(set),
        _acked=defaultdict(list),
        _unacked_messages=set(),
        _n_acked=0,
        _waiting_for_ack=None,
        _gap=defaultdict(IntervalTree),
    )
    consumer.ack = MethodType(Consumer.ack, consumer)
    consumer.new_offset = MethodType(Consumer._new_offset, consumer)
    return consumer


def message(offset: int, generation: int = GENERATION) -> ConsumerMessage:
    return ConsumerMessage(
        TOPIC, PARTITION.partition, offset, 0.0, 0, [], b"acc", b"{}", None, 3, 2, PARTITION, generation_id=generation
    )


@dataclass
class Event:
    message: ConsumerMessage


@dataclass
class Stream:
    """Faust's `Stream.ack`: the event's message is acknowledged to the app's consumer."""

    consumer: Any

    async def ack(self, event: Event) -> bool:
        return bool(event.message.ack(self.consumer))


def test_faust_commits_past_events_nobody_processed_when_it_acks_one_it_skipped() -> None:
    # What the guard is for: events 10 and 11 wait for their push, Faust's stream skips 12 and acknowledges it.
    consumer = faust_offsets()
    message(12).ack(consumer)
    assert consumer.new_offset(PARTITION) == 13  # 10 and 11 would never be read again


def test_an_event_faust_skips_is_not_acknowledged_but_the_agents_own_are() -> None:
    consumer = faust_offsets()
    refused: list[int] = []
    guard_acks(consumer, lambda m: refused.append(m.offset))
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=GENERATION)
    stream = Stream(consumer)

    skipped = message(12)
    skipped.ack(consumer)  # Faust's stream, skipping an event (it never reached the agent)
    assert refused == [12]
    assert consumer.new_offset(PARTITION) is None  # nothing to commit: 10 and 11 are not processed yet

    for offset in (10, 11, 12):  # the agent's acks once the pushes are done (12 read again)
        asyncio.run(_ack(app, stream, Event(message(offset))))
    assert consumer.new_offset(PARTITION) == 13
    assert refused == [12]


def test_the_agent_does_not_acknowledge_an_event_of_an_older_generation() -> None:
    consumer = faust_offsets()
    guard_acks(consumer)
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=GENERATION + 1)
    asyncio.run(_ack(app, Stream(consumer), Event(message(10, generation=GENERATION))))
    assert consumer.new_offset(PARTITION) is None


def test_faust_commits_past_a_gap_a_stale_fetch_opened() -> None:
    # What the start guard (streamscore/starts.py) is for: the group resumes at 41 after a rebalance, but a fetch from
    # the old position returns 67 first. Faust's drain counts 42–66 as a gap (it never reads them again: they are below
    # its read offset), and one acknowledgement past it commits 68.
    consumer = faust_offsets()
    consumer._committed_offset[PARTITION] = 41
    consumer.add_gap = MethodType(Consumer._add_gap, consumer)
    asyncio.run(consumer.add_gap(PARTITION, 42, 67))  # as `_drain_messages` does: read offset 41, then 67
    message(67).ack(consumer)
    assert consumer.new_offset(PARTITION) == 68
