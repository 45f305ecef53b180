"""The consumer group as its coordinator sees it, measured on a thread of its own: who owns which partition of the
input topic and how many records wait on each (from the group's committed offsets, `streamscore.lag`).

Why a group view and not the consumer's own position: the position says nothing once the partitions are gone (a
fenced or ejected member keeps polling an empty assignment), and a consumer that stopped fetching keeps stale
watermarks. The group's committed offsets against the log end are what an operator's alert needs, whichever
member holds a partition or whether any does. Every instance publishes the per-partition lag gauges, through
revocations and rebalances (alert on `max by (topic, partition)`), except for the partitions it holds and measured
itself: those the scoring loop publishes from its consumer's statistics (`scorer.stream`), fresher and with the same
rule (`streamscore.lag.partition_lag`).

Every call is bounded by the Kafka timeout; a failing measurement keeps the last gauges, marks the view unknown
and counts how long the coordinator has been unreachable (`failing_for`), which the loop bounds.

Committed offsets and log ends come from a consumer of the group that never subscribes (OffsetFetch and ListOffsets,
read_committed), not from the admin client: librdkafka 2.16's admin requests routed to the group coordinator
(DescribeConsumerGroups, ListConsumerGroupOffsets) aborted the process (`rd_kafka_enq_once_del_source_return:
Assertion eonce->refcnt > 0`) when the broker was SIGKILLed while one waited. The group's members and owners —
an admin coordinator request — are asked only while this instance holds no partitions, right after the broker
answered the offset requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from scorer.metrics import ScorerMetrics
from streamscore.kafka import admin_client, consumer_config
from streamscore.lag import GroupLag, LagReader, PartitionLag, partition_lag
from streamscore.settings import KafkaSettings

logger = logging.getLogger(__name__)


def should_hold(partitions: int, owners: Mapping[int, str | None], me: str | None) -> bool:
    """Whether the group has partitions for member `me`, given the coordinator's owner of each partition (absent or
    None: nobody): a partition nobody owns, one the coordinator says is ours, or another member holding two or more
    (a balanced assignment would give us one) mean yes. More members than partitions, each holding one, mean no."""
    if partitions <= 0:
        return False
    if any(owners.get(p) is None for p in range(partitions)):
        return True
    if me is not None and me in owners.values():
        return True
    return any(count >= 2 for count in Counter(owners.values()).values())


@dataclass(frozen=True, slots=True)
class GroupView:
    state: str
    members: int
    partitions: int
    owners: dict[int, str | None] = field(default_factory=dict)
    lag: dict[int, int] = field(default_factory=dict)
    """Records waiting per partition; from the log's end when the group never committed on it."""
    seconds: dict[int, float] = field(default_factory=dict)
    """Age of the oldest waiting record per partition (0 when none waits)."""


def view_of(report: GroupLag, topic: str, partitions: int, *, owners_known: bool = True) -> GroupView:
    """The view of `topic` in a lag report; with `owners_known` False the rows' owners are not the coordinator's
    (the report came from committed offsets alone) and `owners` stays empty."""
    owners: dict[int, str | None] = {}
    lag: dict[int, int] = {}
    seconds: dict[int, float] = {}
    for row in report.partitions:
        if row.topic != topic:
            continue
        if owners_known:
            owners[row.partition] = row.consumer_id
        if row.lag is not None:
            lag[row.partition] = row.lag
        elif row.current_offset is None and row.log_end_offset is not None:
            lag[row.partition] = row.log_end_offset
        if row.lag_seconds is not None:
            seconds[row.partition] = row.lag_seconds
    return GroupView(report.state, report.members, partitions, owners, lag, seconds)


class GroupWatcher:
    """Measures the group every `interval_s` on a daemon thread; publishes the lag gauges and what the health checks
    need (`pending`, `pending_since`, `should_hold`). Attributes are replaced whole: safe to read from any thread."""

    def __init__(
        self,
        kafka: KafkaSettings,
        group: str,
        topic: str,
        metrics: ScorerMetrics,
        *,
        interval_s: float,
        timeout_s: float,
        member_id: Callable[[], str | None],
        held: Callable[[], frozenset[int]],
        published: Callable[[], frozenset[int]] = frozenset,
        on_measure: Callable[[], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.group = group
        self.topic = topic
        self.metrics = metrics
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.member_id = member_id
        self.held = held
        self.published = published
        """Partitions whose lag gauges the scoring loop publishes from its consumer's statistics (it holds them)."""
        self.on_measure = on_measure
        self.view: GroupView | None = None
        self.pending: int | None = None
        self.pending_since: float | None = None
        self.should_hold: bool | None = None
        self.failing_since: float | None = None
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scorer-group-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def failing_for(self) -> float:
        """Seconds the group view has been failing (the coordinator unreachable); 0 when it answers."""
        since = self.failing_since
        return 0.0 if since is None else time.monotonic() - since

    def _run(self) -> None:
        reader = LagReader(self.kafka, timeout_s=self.timeout_s, peek_timeout_s=min(5.0, self.timeout_s))
        admin = admin_client(self.kafka, quiet=True)
        # The group's committed offsets without joining it: a consumer of the group that never subscribes.
        offsets = Consumer(
            {**consumer_config(self.kafka, self.group, "scorer-watch"), "log_level": 3, "enable.auto.commit": False}
        )
        try:
            while not self._stop.is_set():
                try:
                    self.update(self._measure(offsets, reader, admin))
                except Exception as exc:  # noqa: BLE001 - the watcher must outlive any failure; it is bounded
                    self.failed(exc)
                if self.on_measure is not None:
                    try:
                        self.on_measure()
                    except Exception:
                        logger.exception("publishing readiness")
                self._stop.wait(self.interval_s)
        finally:
            for close in (reader.close, offsets.close):
                try:
                    close()
                except Exception as exc:  # noqa: BLE001
                    logger.debug("closing the watcher's clients: %s", exc)

    def _measure(self, offsets: Consumer, reader: LagReader, admin: Any) -> GroupView:
        metadata = offsets.list_topics(self.topic, timeout=self.timeout_s).topics.get(self.topic)
        if metadata is None or metadata.error is not None:
            raise KafkaException(metadata.error if metadata is not None else "no metadata")
        partitions = sorted(metadata.partitions)
        tps = [TopicPartition(self.topic, p) for p in partitions]
        committed = {
            tp.partition: tp.offset if tp.offset >= 0 else None for tp in offsets.committed(tps, timeout=self.timeout_s)
        }
        ends = {
            p: int(offsets.get_watermark_offsets(TopicPartition(self.topic, p), timeout=self.timeout_s)[1])
            for p in partitions
        }
        behind = {(self.topic, p): offset for p, offset in committed.items() if offset is not None and offset < ends[p]}
        peeks = reader.peek(behind)
        now_ms = int(time.time() * 1000)
        rows: list[PartitionLag] = [
            partition_lag(
                group=self.group,
                topic=self.topic,
                partition=p,
                committed=committed.get(p),
                log_end=ends[p],
                peek=peeks.get((self.topic, p)),
                now_ms=now_ms,
            )
            for p in partitions
        ]
        state, members, owners_known = "Unknown", 0, False
        if not self.held():
            # Only now ask the coordinator who owns what (an admin coordinator request, see the module docstring).
            description = admin.describe_consumer_groups([self.group], request_timeout=self.timeout_s)[
                self.group
            ].result(timeout=self.timeout_s)
            owner = {
                tp.partition: m.member_id
                for m in description.members
                for tp in (m.assignment.topic_partitions if m.assignment else [])
                if tp.topic == self.topic
            }
            rows = [replace(row, consumer_id=owner.get(row.partition)) for row in rows]
            state = getattr(description.state, "name", str(description.state)).title().replace("_", "")
            members, owners_known = len(description.members), True
        report = GroupLag(self.group, state, members, rows)
        return view_of(report, self.topic, len(partitions), owners_known=owners_known)

    def update(self, view: GroupView, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.failing_since is not None:
            logger.info("group %s answers again after %.0f s", self.group, now - self.failing_since)
        self.failing_since = None
        self.view = view
        # Same rule (streamscore.lag), two vantage points: the loop publishes what it holds and measured itself.
        mine = self.published()
        for partition, records in view.lag.items():
            if partition not in mine:
                self.metrics.lag_offsets.labels(topic=self.topic, partition=str(partition)).set(records)
        for partition, age in view.seconds.items():
            if partition not in mine:
                self.metrics.lag_seconds.labels(topic=self.topic, partition=str(partition)).set(age)
        held = self.held()
        pending = sum(view.lag.get(p, 0) for p in held)
        self.pending_since = (self.pending_since or now) if pending > 0 else None
        self.pending = pending
        # Owners are asked only while we hold nothing (_measure); holding some, the question does not arise.
        self.should_hold = should_hold(view.partitions, view.owners, self.member_id()) if not held else True

    def failed(self, exc: Exception, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.failing_since is None:
            self.failing_since = now
            logger.warning("group %s: no view from the coordinator (%s)", self.group, exc)
        self.last_error = str(exc)[:300]
        self.pending = None
        self.pending_since = None
        self.should_hold = None
