"""Publish after scoring: a snapshot becomes readable only once the scorer has scored the event that made it.

The feature processor and the scorer read the same transactions. When the processor is faster — the scorer is
batching, busy, or catching up — an account's new snapshot can be in the online store before the scorer reads
features for that very event, which then is scored with features that already include it (seconds since the last
transaction 0, its device already known, its amount in the sums): what training's point-in-time join never shows,
and a leak a compressed demo clock or a scorer backlog makes common. So the processor can hold each snapshot until
the scorer group's committed offset on the event's partition has passed the event (FEATURES_PUBLISH_AFTER_GROUP).
The scorer commits its offsets in the same transaction as its scores, so a committed offset past an event means
that event's score is written. The cost is freshness: the next event of the account sees the snapshot one scorer
commit (and one poll) later.

The committed offsets come from the broker (`list_consumer_group_offsets`, one round trip) every `poll_s`, in a
thread of its own, never in the agent's event loop. A snapshot waits at most `max_wait_s`: a scorer that is down or
far behind must not freeze the features (it would then be stale on every account), so past that the row is
published anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException
from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)


class ScoredWatermark:
    """The scorer group's committed offset per partition of the transactions topic, refreshed by a thread."""

    def __init__(
        self,
        admin: AdminClient,
        group: str,
        topic: str,
        *,
        poll_s: float = 0.05,
        timeout_s: float = 5.0,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._admin = admin
        self.group = group
        self.topic = topic
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self._on_error = on_error
        self._committed: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scored(self, partition: int, offset: int) -> bool:
        """Whether the scorer has committed past `offset` on `partition` (its score is written)."""
        return self._committed.get(partition, -1) > offset

    def refresh(self) -> None:
        """One round trip: the group's committed offsets on the topic."""
        request = [ConsumerGroupTopicPartitions(self.group)]
        result = self._admin.list_consumer_group_offsets(request, request_timeout=self.timeout_s)[self.group].result(
            timeout=self.timeout_s
        )
        # Replaced whole (one reference assignment): the agent's thread reads a consistent dict.
        self._committed = {
            tp.partition: tp.offset for tp in result.topic_partitions if tp.topic == self.topic and tp.offset >= 0
        }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scored-watermark", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except (KafkaException, TimeoutError, RuntimeError) as exc:
                # The broker away or the group unknown: snapshots wait up to their max wait, then go anyway.
                log.debug("scorer group %s offsets not read: %s", self.group, exc)
                if self._on_error is not None:
                    self._on_error(str(exc))
            self._stop.wait(self.poll_s)
