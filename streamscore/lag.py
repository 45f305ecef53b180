"""Consumer-group lag in offsets and in seconds, as a read_committed consumer sees it.

The columns are those of `kafka-consumer-groups.sh --describe` plus LAG-SECONDS: how long ago the oldest
unconsumed record (the first one a read_committed consumer gets at the committed offset) was written.

Offsets are read as a read_committed consumer sees them: LOG-END-OFFSET is the last stable offset (an
open transaction's records are not lag yet). Transactions leave one control record (commit or abort
marker) per partition after their data, and those markers take offsets. A consumer that read every record
of a transaction and committed its position right after the last one sits *on* the marker, one offset
below the log end; Kafka's own tool then shows LAG 1 for a group that has nothing left to read. So when
the committed offset is below the log end we fetch at it: if no record comes before the end (only
markers or aborted records are left), the LAG is 0. Otherwise LAG is LOG-END-OFFSET − CURRENT-OFFSET as
Kafka defines it — an offset distance, which counts the markers of the transactions still ahead.

`partition_lag` is the pure rule; `LagReader` gathers its inputs from the broker (admin client for
committed offsets, members and log ends; an assign-only consumer that never commits for the peeks).
`consumer_partition_lag` feeds the same rule from a consumer's own state instead (the scorer's lag gauges of the
partitions it holds): librdkafka's statistics for the log end and the position, the consumer's owner for what it
committed and what it holds uncommitted — no broker round trip.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, NamedTuple

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

from streamscore.errors import StreamscoreError
from streamscore.kafka import admin_client, consumer_config
from streamscore.settings import KafkaSettings

log = logging.getLogger(__name__)

DEFAULT_SCORER_GROUP: Final = "streamscore-scorer"
"""The stream scorers' consumer group id (a deployment prefixes it with TOPICS_PREFIX)."""


class LagUnavailableError(StreamscoreError):
    """The broker did not describe the group or its offsets."""

    retryable = True
    http_status = 503

    def __init__(self, group: str, what: str, detail: str) -> None:
        super().__init__(f"could not read the {what} of consumer group '{group}': {detail}")
        self.group = group


class Head(NamedTuple):
    """The first record a read_committed consumer receives when it starts at the committed offset."""

    offset: int
    timestamp_ms: int | None
    """None when the record carries no timestamp."""


NOTHING_TO_READ: Final = "nothing-to-read"
"""Peek result: no record before the log end (only transaction markers or aborted records)."""

Peek = Head | Literal["nothing-to-read"] | None
"""What a fetch at the committed offset found; None when it did not answer in time."""


@dataclass(frozen=True, slots=True)
class Member:
    """A group member as `kafka-consumer-groups.sh` shows it."""

    consumer_id: str
    host: str
    client_id: str


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One row of `streamscore lag`. None prints as '-' (no committed offset, no member, not measured)."""

    group: str
    topic: str
    partition: int
    current_offset: int | None
    log_end_offset: int | None
    lag: int | None
    lag_seconds: float | None
    consumer_id: str | None = None
    host: str | None = None
    client_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class GroupLag:
    """Every partition a group has committed offsets for or is assigned, sorted by topic and partition."""

    group: str
    state: str
    """The coordinator's view: Stable, Empty (no members), Dead (unknown group), PreparingRebalance, …"""
    members: int
    partitions: list[PartitionLag] = field(default_factory=list)

    @property
    def total_lag(self) -> int:
        return sum(p.lag or 0 for p in self.partitions)

    @property
    def max_lag_seconds(self) -> float:
        return max((p.lag_seconds or 0.0 for p in self.partitions), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "state": self.state,
            "members": self.members,
            "total_lag": self.total_lag,
            "max_lag_seconds": self.max_lag_seconds,
            "partitions": [p.to_dict() for p in self.partitions],
        }


def partition_lag(
    *,
    group: str,
    topic: str,
    partition: int,
    committed: int | None,
    log_end: int | None,
    peek: Peek,
    now_ms: int,
    member: Member | None = None,
) -> PartitionLag:
    """The row for one partition from its committed offset, its read_committed log end and the peek result.

    `peek` only matters when `committed < log_end`: then a fetch at `committed` decides whether anything
    readable is left (see the module docstring) and gives the oldest unconsumed record's timestamp.
    """
    lag: int | None = None
    seconds: float | None = None
    if committed is not None and log_end is not None:
        if committed >= log_end:
            lag, seconds = 0, 0.0
        elif peek == NOTHING_TO_READ or (isinstance(peek, Head) and peek.offset >= log_end):
            # Only markers or aborted records before the end (a record at or past `log_end` arrived after
            # the end was read, so it is not part of this measurement).
            lag, seconds = 0, 0.0
        else:
            lag = log_end - committed
            if isinstance(peek, Head) and peek.timestamp_ms is not None:
                seconds = max(now_ms - peek.timestamp_ms, 0) / 1000.0
    return PartitionLag(
        group=group,
        topic=topic,
        partition=partition,
        current_offset=committed,
        log_end_offset=log_end,
        lag=lag,
        lag_seconds=seconds,
        consumer_id=member.consumer_id if member else None,
        host=member.host if member else None,
        client_id=member.client_id if member else None,
    )


@dataclass(frozen=True, slots=True)
class ConsumerPartition:
    """One assigned partition as a consumer's librdkafka statistics describe it (`statistics.interval.ms`): read
    from the client's own fetch state, no broker round trip. None where librdkafka reports -1001 (not known yet)."""

    log_end: int | None
    """`ls_offset` (the last stable offset) for a read_committed consumer, `hi_offset` for read_uncommitted."""
    position: int | None
    """`app_offset`: the offset after the last record handed to the application. librdkafka moves it past the
    transaction markers and aborted records that follow (measured: 5 transactional records at offsets 0-4, their
    commit marker at 5 → position 6 = ls_offset once the five are consumed)."""
    committed: int | None
    """`committed_offset`: only this consumer's own commits (and the committed offset fetched at assignment). Offsets
    committed in a transaction by a producer (`send_offsets_to_transaction`) never reach it — measured: -1001 after a
    committed transaction — so librdkafka's own `consumer_lag` (log end − committed_offset) is unusable (-1, or stale
    and growing) for an exactly-once consumer; the consumer's caller supplies what it committed."""


def consumer_partitions(
    statistics: Mapping[str, Any], topic: str, *, read_committed: bool = True
) -> dict[int, ConsumerPartition]:
    """The assigned partitions of `topic` in one librdkafka statistics document (the `stats_cb` JSON, decoded)."""

    def known(value: object) -> int | None:
        return value if isinstance(value, int) and value >= 0 else None

    partitions = statistics.get("topics", {}).get(topic, {}).get("partitions", {})
    return {
        int(number): ConsumerPartition(
            log_end=known(p.get("ls_offset" if read_committed else "hi_offset")),
            position=known(p.get("app_offset")),
            committed=known(p.get("committed_offset")),
        )
        for number, p in partitions.items()
        if int(number) >= 0 and p.get("desired", True)  # -1: librdkafka's internal "unassigned" partition
    }


def consumer_partition_lag(
    *,
    group: str,
    topic: str,
    partition: int,
    stats: ConsumerPartition,
    committed: int | None,
    pending: Head | None,
    last_consumed_ms: int | None,
    now_ms: int,
) -> PartitionLag:
    """`partition_lag` for a partition this consumer holds, with what the consumer knows in place of a fetch.

    - `committed`: the offset the consumer's owner last committed (in its transaction); the larger of it and the
      statistics' `committed_offset` counts.
    - `pending`: the oldest record handed to the application and not committed yet (None when there is none): it is
      the oldest unconsumed record for the group, exactly what `streamscore lag`'s fetch at the committed offset
      finds.
    - nothing pending and the position at or past the log end: every readable record up to the end was handed over
      and committed, so what lies between the committed offset and the end is markers or aborted records: lag 0,
      like `streamscore lag` when its fetch finds nothing before the end.
    - nothing pending and records left to hand over: the offset distance, and for the seconds an estimate, now minus
      the timestamp of the last record consumed (`last_consumed_ms`; the oldest waiting record came after it, so
      this is an upper bound by at most the gap between the two records); None without one.
    """
    known = [c for c in (committed, stats.committed) if c is not None]
    peek: Peek
    if pending is not None:
        peek = pending
    elif stats.position is not None and stats.log_end is not None and stats.position >= stats.log_end:
        peek = NOTHING_TO_READ
    elif last_consumed_ms is not None and known:
        peek = Head(max(*known, stats.position or 0), last_consumed_ms)
    else:
        peek = None
    return partition_lag(
        group=group,
        topic=topic,
        partition=partition,
        committed=max(known) if known else None,
        log_end=stats.log_end,
        peek=peek,
        now_ms=now_ms,
    )


def group_lag(
    group: str,
    state: str,
    *,
    committed: Mapping[tuple[str, int], int | None],
    assigned: Mapping[tuple[str, int], Member],
    log_ends: Mapping[tuple[str, int], int | None],
    peeks: Mapping[tuple[str, int], Peek],
    now_ms: int,
    topics: Iterable[str] | None = None,
    members: int = 0,
) -> GroupLag:
    """Rows for every partition with a committed offset or an assigned member, optionally only some topics."""
    wanted = set(topics) if topics else None
    keys = sorted({*committed, *assigned})
    rows = [
        partition_lag(
            group=group,
            topic=topic,
            partition=partition,
            committed=committed.get((topic, partition)),
            log_end=log_ends.get((topic, partition)),
            peek=peeks.get((topic, partition)),
            now_ms=now_ms,
            member=assigned.get((topic, partition)),
        )
        for topic, partition in keys
        if wanted is None or topic in wanted
    ]
    return GroupLag(group=group, state=state, members=members, partitions=rows)


class LagReader:
    """Reads group lag from the broker. Keep one for a live view: it reuses its admin client and consumer.

    The peek consumer only assigns partitions and fetches; it never joins a group or commits, so measuring
    changes nothing for the group measured.
    """

    def __init__(self, kafka: KafkaSettings, *, timeout_s: float = 10.0, peek_timeout_s: float = 5.0) -> None:
        self.kafka = kafka
        self.timeout_s = timeout_s
        self.peek_timeout_s = peek_timeout_s
        self._admin = admin_client(kafka)
        self._consumer: Consumer | None = None

    def read(self, group: str, topics: Iterable[str] | None = None) -> GroupLag:
        wanted = list(topics) if topics else None
        state, members, assigned = self._describe(group)
        committed = self._committed(group)
        keys = {key for key in {*committed, *assigned} if wanted is None or key[0] in wanted}
        log_ends = self._log_ends(keys)
        behind = {
            key: offset
            for key in keys
            if (offset := committed.get(key)) is not None and (end := log_ends.get(key)) is not None and offset < end
        }
        peeks = self.peek(behind)
        return group_lag(
            group,
            state,
            committed=committed,
            assigned=assigned,
            log_ends=log_ends,
            peeks=peeks,
            now_ms=int(time.time() * 1000),
            topics=wanted,
            members=members,
        )

    def _describe(self, group: str) -> tuple[str, int, dict[tuple[str, int], Member]]:
        try:
            description = self._admin.describe_consumer_groups([group], request_timeout=self.timeout_s)[group].result(
                timeout=self.timeout_s
            )
        except KafkaException as exc:
            raise LagUnavailableError(group, "members", str(exc)) from exc
        assigned: dict[tuple[str, int], Member] = {}
        for m in description.members:
            member = Member(consumer_id=m.member_id, host=m.host, client_id=m.client_id)
            for tp in m.assignment.topic_partitions if m.assignment else []:
                assigned[(tp.topic, tp.partition)] = member
        state = getattr(description.state, "name", str(description.state)).title().replace("_", "")
        return state, len(description.members), assigned

    def _committed(self, group: str) -> dict[tuple[str, int], int | None]:
        request = [ConsumerGroupTopicPartitions(group)]
        try:
            result = self._admin.list_consumer_group_offsets(request, request_timeout=self.timeout_s)[group].result(
                timeout=self.timeout_s
            )
        except KafkaException as exc:
            raise LagUnavailableError(group, "committed offsets", str(exc)) from exc
        # A partition without a commit comes back as OFFSET_INVALID (-1001): no committed offset.
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in result.topic_partitions}

    def _log_ends(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        """Each partition's read_committed end (last stable offset); None where the broker keeps refusing."""
        ends: dict[tuple[str, int], int | None] = dict.fromkeys(keys)
        pending = set(ends)
        for attempt in range(3):
            if not pending:
                break
            if attempt:
                time.sleep(0.2 * attempt)  # a leader moving or a topic just created: retriable, short-lived
            request = {
                TopicPartition(topic, partition): OffsetSpec.latest()  # type: ignore[no-untyped-call]
                for topic, partition in pending
            }
            futures = self._admin.list_offsets(
                request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=self.timeout_s
            )
            for tp, future in futures.items():
                key = (tp.topic, tp.partition)
                try:
                    ends[key] = future.result(timeout=self.timeout_s).offset
                    pending.discard(key)
                except KafkaException as exc:
                    if attempt == 2:
                        log.warning("topic=%s partition=%d log end not available: %s", tp.topic, tp.partition, exc)
        return ends

    def peek(self, offsets: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], Peek]:
        """For each (topic, partition) → offset: the first read_committed record at or after that offset."""
        if not offsets:
            return {}
        consumer = self._peek_consumer()
        pending = dict(offsets)
        found: dict[tuple[str, int], Peek] = {}
        paused: list[TopicPartition] = []
        consumer.assign([TopicPartition(t, p, o) for (t, p), o in pending.items()])
        deadline = time.monotonic() + self.peek_timeout_s
        try:
            while pending and (remaining := deadline - time.monotonic()) > 0:
                for msg in consumer.consume(num_messages=max(len(pending), 16), timeout=min(remaining, 0.1)):
                    key = (str(msg.topic()), int(msg.partition() or 0))
                    if key not in pending:
                        continue
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            found[key] = NOTHING_TO_READ
                            del pending[key]
                        else:
                            log.warning("topic=%s partition=%d peek failed: %s", key[0], key[1], error.str())
                        continue
                    kind, timestamp = msg.timestamp()
                    found[key] = Head(int(msg.offset() or 0), None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp)
                    del pending[key]
                    paused.append(TopicPartition(*key))
                    consumer.pause(paused[-1:])
        finally:
            # librdkafka keeps a partition's pause flag across assignments; the next peek must fetch it.
            if paused:
                consumer.resume(paused)
            consumer.unassign()
        for topic, partition in pending:
            log.warning("topic=%s partition=%d peek unanswered after %.1f s", topic, partition, self.peek_timeout_s)
        return found

    def _peek_consumer(self) -> Consumer:
        if self._consumer is None:
            config = consumer_config(self.kafka, f"{self.kafka.client_id_prefix}-lag-{uuid.uuid4().hex[:8]}", "lag")
            config.update(
                {
                    "enable.partition.eof": True,
                    # One record per partition is all a peek needs; do not pull megabytes per refresh.
                    "max.partition.fetch.bytes": 64 * 1024,
                    "fetch.max.bytes": 1024 * 1024,
                }
            )
            self._consumer = Consumer(config)
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> LagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
