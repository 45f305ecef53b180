"""Read the monitor's latest results back from Kafka (`streamscore report`, the demo's summary).

`monitor.drift` holds one record per series and closed window (key: the series), `monitor.ab` one record per look
(key: the experiment). Both are read from the tail of each partition up to the log end at the time of the call;
a window evaluated twice (a restart of the merging agent between publishing and committing) appears twice and is
deduplicated here by (window, series), the latest copy winning. `read_latest_scores` reads the tail of `scores` and
`scores.shadow` for the operating point each variant decides with now.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition
from pydantic import ValidationError

from monitor.ab import ABRecord
from monitor.drift import DriftRecord
from monitor.operating import latest_by_variant
from streamscore.contracts import Score, parse_event
from streamscore.errors import EventError
from streamscore.kafka import consumer_config, missing_topic
from streamscore.settings import KafkaSettings
from streamscore.topics import TopicRegistry


@dataclass
class Results:
    drift: list[DriftRecord] = field(default_factory=list)
    """The records of the `windows` latest windows, one per (window, series)."""
    ab: list[ABRecord] = field(default_factory=list)
    """The latest look of each experiment."""
    windows_seen: int = 0
    looks_seen: int = 0
    unreadable: int = 0


def _read_tails(
    kafka: KafkaSettings, names: Sequence[str], *, tail: int, timeout_s: float, on_message: Callable[[str, bytes], None]
) -> None:
    """Hand every record of the last `tail` of each partition of the topics `names`, up to their log end at the time
    of the call, to `on_message(topic, value)`."""
    config = consumer_config(kafka, f"streamscore-report-{uuid.uuid4().hex[:8]}", "report")
    consumer = Consumer(config)
    try:
        metadata = consumer.list_topics(timeout=timeout_s)
        assignment: list[TopicPartition] = []
        ends: dict[tuple[str, int], int] = {}
        for name in names:
            topic = metadata.topics.get(name)
            if topic is None:
                raise missing_topic(kafka, name)
            for partition in topic.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=timeout_s)
                if high > low:
                    ends[(name, partition)] = high
                    assignment.append(TopicPartition(name, partition, max(low, high - tail)))
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                if message.error() is not None:
                    continue
                where = (message.topic() or "", message.partition() or 0)
                offset = message.offset() or 0
                if offset + 1 >= ends.get(where, 0):
                    ends.pop(where, None)
                on_message(where[0], message.value() or b"")
            # Transaction markers or compaction can leave an end offset that no record reaches.
            for where, end in list(ends.items()):
                position = consumer.position([TopicPartition(where[0], where[1])])[0].offset
                if position >= end:
                    ends.pop(where)
    finally:
        consumer.close()


def read_latest(
    kafka: KafkaSettings, topics: TopicRegistry, *, windows: int = 1, tail: int = 5000, timeout_s: float = 15.0
) -> Results:
    """The latest `windows` drift windows and the latest look per experiment, from the last `tail` records of each
    partition of `monitor.drift` and `monitor.ab`."""
    results = Results()
    drift: dict[tuple[int, str], DriftRecord] = {}
    looks: dict[str, ABRecord] = {}

    def on_message(topic: str, value: bytes) -> None:
        try:
            if topic == topics.monitor_drift.name:
                record = DriftRecord.model_validate_json(value)
                drift[(record.window, record.feature)] = record
            else:
                look = ABRecord.model_validate_json(value)
                results.looks_seen += 1
                if look.experiment_id not in looks or look.at >= looks[look.experiment_id].at:
                    looks[look.experiment_id] = look
        except ValidationError:
            results.unreadable += 1

    _read_tails(
        kafka,
        (topics.monitor_drift.name, topics.monitor_ab.name),
        tail=tail,
        timeout_s=timeout_s,
        on_message=on_message,
    )
    indices = sorted({window for window, _ in drift})
    results.windows_seen = len(indices)
    keep = set(indices[-windows:]) if windows > 0 else set()
    results.drift = [r for (window, _), r in sorted(drift.items()) if window in keep]
    results.ab = sorted(looks.values(), key=lambda r: r.experiment_id)
    return results


def read_latest_scores(
    kafka: KafkaSettings, topics: TopicRegistry, *, tail: int = 200, timeout_s: float = 15.0
) -> dict[str, tuple[Score, bool]]:
    """The latest score of each variant (with whether it is a shadow's) in the last `tail` records of each partition
    of `scores` and `scores.shadow`: what model version and thresholds decide for each variant now (a Score carries
    its thresholds). Unreadable records are skipped: this is a report, the monitor dead-letters them."""
    seen: list[tuple[Score, bool]] = []

    def on_message(topic: str, value: bytes) -> None:
        with contextlib.suppress(EventError):
            seen.append((parse_event(Score, value), topic == topics.scores_shadow.name))

    _read_tails(
        kafka, (topics.scores.name, topics.scores_shadow.name), tail=tail, timeout_s=timeout_s, on_message=on_message
    )
    return latest_by_variant(seen)
