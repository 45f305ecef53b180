"""Where a partition's records must start after a rebalance, and refusing a batch fetched before it (the feature
processor uses it; the monitor does not yet, see docs/monitor.md "Scale-out").

After every rebalance Faust seeks each assigned partition to the group's committed offset, so the first record of a
partition an agent gets under the new consumer generation should be the record at that offset. One case breaks this:
Faust stamps a fetched batch with the generation current when the fetch *returns*, not when it was sent. A fetch in
flight across the rebalance (typical right after the broker comes back: the consumer fetches and is told it left the
group in the same instant) returns records from the old position stamped with the new generation. Faust then reads
on from the old position: its consumer's read offset jumps past the committed one, it counts the skipped offsets as a
gap that is safe to commit, and drops the records it reads again below its read offset. The records between the
committed offset and the old position are never processed, and the first acknowledgement of the partition commits
past them (seen in the feature processor's broker-kill test: offsets 43–66 of one partition lost, the commit went
from 41 to 68).

One-record holes at ordinary rebalances (first record at committed + 1) most likely came from a bug of ours, since
fixed: the event loop was chosen after the app was made, so a record handed to a suspended stream queue failed on
the wrong loop and was skipped (`streamscore.faust_apps.faust_app`, `loop`). The guard caught those too.

So the first record of every partition in a generation is checked against the committed offset (`StartGuard`): at
it, or past it only when no record lies in between (transaction markers take offsets but hold no records), it starts
the partition. A record of a partition this worker is not assigned is dropped. Otherwise the partition is sought back
to the committed offset with Faust's public `Consumer.seek` (which moves its read offset back too), and its records
are refused — neither processed nor acknowledged — until the record at that offset arrives; sought again if it has
not after `reseek_s`. What remains: the records the stale batch carried past the seek leave a gap entry in Faust's
bookkeeping, so once the partition's records are acknowledged again a commit can run ahead of records read but not
yet acknowledged — a crash in that moment (a push delay, after a rebalance with a hole) would lose them; without the
seek they were lost every time. A worker whose broker cannot say where a partition starts, or whose seek fails,
exits non-zero for a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)

T = TypeVar("T")


Partition = tuple[str, int]
"""(topic, partition)."""


class Positions(Protocol):
    """The broker's answers the guard needs (blocking calls: the guard runs them on an executor)."""

    def starts(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """Per partition, the offset the group resumes from: its committed offset, else the log's first offset."""
        ...

    def record_before(self, partition: Partition, start: int, end: int) -> bool:
        """Whether the partition holds a record at an offset in [start, end)."""
        ...


class KafkaPositions:
    """`Positions` from the broker: the group's committed offsets (one admin round trip), the log start for a
    partition without one, and a read of [start, end) with a consumer of its own (no group is joined)."""

    def __init__(self, admin: AdminClient, consumer_config: Mapping[str, object], group: str) -> None:
        self._admin = admin
        self._consumer_config = dict(consumer_config)
        self.group = group
        self.timeout_s = 10.0

    def starts(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        request = [ConsumerGroupTopicPartitions(self.group, [TopicPartition(t, p) for t, p in partitions])]
        result = self._admin.list_consumer_group_offsets(request, request_timeout=self.timeout_s)[self.group].result(
            timeout=self.timeout_s
        )
        starts = {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions if tp.offset >= 0}
        missing = [tp for tp in partitions if tp not in starts]
        if missing:
            with self._consumer() as consumer:
                for topic, p in missing:
                    low, _ = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=self.timeout_s)
                    starts[(topic, p)] = low
        return starts

    def record_before(self, partition: Partition, start: int, end: int) -> bool:
        topic, number = partition
        with self._consumer() as consumer:
            consumer.assign([TopicPartition(topic, number, start)])
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None:
                    continue
                if message.error() is not None:
                    raise KafkaException(message.error())
                offset = message.offset()
                return offset is not None and offset < end
        raise TimeoutError(f"no record of {topic}:{number} from offset {start} within {self.timeout_s:.0f} s")

    def _consumer(self) -> contextlib.closing[Consumer]:
        return contextlib.closing(
            Consumer({**self._consumer_config, "group.id": f"streamscore-starts-{uuid.uuid4().hex}"})
        )


@dataclass
class StartGuard:
    """Checks the first record of each partition in each consumer generation (see the module docstring)."""

    positions: Positions
    seek: Callable[[Partition, int], Awaitable[object]]
    """Seeks a partition of this worker's consumer (Faust's public `Consumer.seek`, which also moves its read
    offset back)."""
    on_stale: Callable[[str], None]
    """Stops the worker for a restart: when the broker cannot say where a partition starts, or a seek fails."""
    retry_s: float = 1.0
    patience_s: float = 60.0
    """How long the broker may fail to answer before the worker gives up (its records stay unacknowledged)."""
    reseek_s: float = 1.0
    """A partition still not back at its start this long after its seek is sought again."""
    clock: Callable[[], float] = time.monotonic
    generation: int | None = field(default=None, init=False)
    started: set[Partition] = field(default_factory=set, init=False)
    foreign: set[Partition] = field(default_factory=set, init=False)
    seeking: dict[Partition, tuple[int, float]] = field(default_factory=dict, init=False)
    """Partitions sought back to where the group resumes them: (that offset, when), until a record there arrives."""

    def settled(self, generation: int, partitions: Collection[Partition]) -> bool:
        """Whether every one of `partitions` is started in `generation` (the agent's fast path)."""
        return generation == self.generation and self.started.issuperset(partitions)

    async def admit(
        self, generation: int, assigned: Collection[Partition], firsts: Mapping[Partition, int]
    ) -> set[Partition]:
        """The partitions of a batch whose records may be processed, given the offset of each partition's first
        record in the batch and the partitions this worker is assigned now. A partition whose first record is past
        where the group resumes it, with records in between, is sought back there; its records are refused until the
        one at that offset arrives."""
        if generation != self.generation:
            self.generation, self.started, self.foreign, self.seeking = generation, set(), set(), {}
        new = sorted(p for p in firsts if p not in self.started and p not in self.foreign)
        foreign = [p for p in new if p not in assigned]
        if foreign:
            self.foreign.update(foreign)
            log.warning("dropping the records of partitions %s: not assigned here (generation %s)", foreign, generation)
        new = [p for p in new if p in assigned]
        for p in [p for p in new if p in self.seeking]:
            new.remove(p)
            target, since = self.seeking[p]
            if firsts[p] == target:
                del self.seeking[p]
                self.started.add(p)
                log.info("partition %s:%d starts at %d again", p[0], p[1], target)
            elif firsts[p] > target and self.clock() - since >= self.reseek_s:
                await self._seek(p, target, firsts[p])
        if new:
            starts = await self._ask(self.positions.starts, new)
            for p in new:
                if starts is None:
                    break  # gave up: the worker is stopping
                first, start = firsts[p], starts[p]
                between = first > start and await self._ask(self.positions.record_before, p, start, first)
                if between is None:
                    continue  # gave up: the worker is stopping
                if not between:
                    self.started.add(p)
                else:
                    log.warning(
                        "partition %s:%d: the first record of generation %s is at offset %d, the group resumes from "
                        "%d: a batch fetched before the rebalance, or records the stream dropped; seeking back",
                        p[0],
                        p[1],
                        generation,
                        first,
                        start,
                    )
                    await self._seek(p, start, first)
        return {p for p in firsts if p in self.started}

    async def _seek(self, partition: Partition, offset: int, seen: int) -> None:
        self.seeking[partition] = (offset, self.clock())
        try:
            await self.seek(partition, offset)
        except Exception as exc:  # noqa: BLE001 — the consumer cannot seek: a restart reads from the committed offset
            self.on_stale(
                f"seeking {partition[0]}:{partition[1]} back to {offset} (a record at {seen} came first) failed: {exc}"
            )

    async def _ask(self, function: Callable[..., T], *args: object) -> T | None:
        """`function(*args)` on an executor, retried while the broker does not answer; None once the patience is
        spent (the worker is told to stop, and the partitions stay unstarted: their events are not acknowledged)."""
        deadline = time.monotonic() + self.patience_s
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await loop.run_in_executor(None, function, *args)
            except (KafkaException, TimeoutError) as exc:
                if time.monotonic() >= deadline:
                    self.on_stale(f"where the partitions start could not be read for {self.patience_s:.0f} s: {exc}")
                    return None
                log.warning("reading where the partitions start failed (%s); retrying", exc)
                await asyncio.sleep(self.retry_s)
