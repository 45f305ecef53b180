"""A read_committed tail of some topics that keeps counts: what `make demo` shows arriving."""

from __future__ import annotations

import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, Message

from streamscore.kafka import consumer_config
from streamscore.settings import KafkaSettings


@dataclass
class TopicCounts:
    messages: int = 0
    by_partition: Counter[int] = field(default_factory=Counter)
    keys: set[bytes] = field(default_factory=set)
    last_values: deque[bytes] = field(default_factory=lambda: deque(maxlen=5))
    last_timestamp_ms: int = 0


class TopicWatcher:
    """Consumes topics from the end (or the beginning) with a throw-away group, counting what arrives."""

    def __init__(self, kafka: KafkaSettings, topics: list[str], *, from_beginning: bool = False) -> None:
        group = f"streamscore-watch-{uuid.uuid4().hex[:8]}"
        config = consumer_config(kafka, group, "watch", auto_offset_reset="earliest" if from_beginning else "latest")
        self._consumer = Consumer(config)
        self._consumer.subscribe(topics)
        self.counts: dict[str, TopicCounts] = {topic: TopicCounts() for topic in topics}
        self.started = time.monotonic()
        self.errors: list[str] = []

    def assigned(self) -> bool:
        return bool(self._consumer.assignment())

    def poll(self, timeout_s: float = 0.2, max_messages: int = 5000) -> int:
        messages: list[Message] = self._consumer.consume(max_messages, timeout_s)
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    self.errors.append(error.str())
                continue
            counts = self.counts[str(msg.topic())]
            counts.messages += 1
            counts.by_partition[msg.partition() or 0] += 1
            key = msg.key()
            if key is not None:
                counts.keys.add(key)
            counts.last_values.append(msg.value() or b"")
            counts.last_timestamp_ms = msg.timestamp()[1]
        return len(messages)

    def close(self) -> None:
        self._consumer.close()
