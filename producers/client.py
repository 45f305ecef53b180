"""The producer client for people sending events from their own code.

    from producers.client import EventProducer

    with EventProducer(KafkaSettings(), TopicSettings().registry()) as producer:
        producer.send_transaction({"event_id": "e-1", "account_id": "acc-1", ...})
    # leaving the block flushes and raises DeliveryError if any event was not delivered

Every event is validated against its contract before it is sent (a ValidationError names the field),
keyed by `account_id`, and sent with the standard headers. A transaction's event time must also be inside the
receivers' window around the clock (`window`, default the receivers' defaults: 5 minutes ahead, 7 days behind; see
docs/contracts.md): what the scorer would dead-letter is refused here, before it is sent. The producer is
idempotent (acks=all, no duplicates on retry, ordered per partition) and uses the murmur2 partitioner like the Java
client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from streamscore.contracts import DEFAULT_WINDOW, Contract, EventTimeWindow, Label, Transaction, headers_for
from streamscore.errors import DeliveryError
from streamscore.kafka import producer_config
from streamscore.settings import KafkaSettings
from streamscore.topics import TopicRegistry

log = logging.getLogger(__name__)

_MAX_ERRORS_KEPT = 20


@dataclass
class DeliveryStats:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def in_flight(self) -> int:
        return self.sent - self.delivered - self.failed


class EventProducer:
    """Validating, idempotent producer of transactions and labels."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicRegistry,
        *,
        client_id: str = "producer",
        linger_ms: int = 10,
        extra_config: Mapping[str, Any] | None = None,
        window: EventTimeWindow | None = DEFAULT_WINDOW,
    ) -> None:
        self.window = window
        """The receivers' event-time window (their CONTRACT_… settings); None sends any time the contract's
        absolute bounds allow (replaying old events on purpose, which the receivers will dead-letter)."""
        config = producer_config(kafka, client_id, linger_ms=linger_ms)
        config.update(extra_config or {})
        self._producer = Producer(config)
        self.topics = topics
        self.stats = DeliveryStats()

    def send_transaction(
        self, event: Transaction | Mapping[str, Any], *, traceparent: str | None = None
    ) -> Transaction:
        data = event.model_dump() if isinstance(event, Transaction) else dict(event)
        context = None if self.window is None else self.window.at()
        tx = Transaction.model_validate(data, strict=False, context=context)
        self._send(self.topics.transactions.name, tx.account_id, tx, traceparent)
        return tx

    def send_label(self, event: Label | Mapping[str, Any]) -> Label:
        label = event if isinstance(event, Label) else Label.model_validate(dict(event), strict=False)
        self._send(self.topics.labels.name, label.account_id, label, None)
        return label

    def _send(self, topic: str, key: str, event: Contract, traceparent: str | None) -> None:
        value = event.to_json()
        headers = headers_for(event, traceparent)
        while True:
            try:
                self._producer.produce(topic, value, key.encode(), headers=headers, on_delivery=self._on_delivery)
                break
            except BufferError:
                # The local queue is full: serve delivery reports until there is room again.
                self._producer.poll(0.05)
        self.stats.sent += 1

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.stats.delivered += 1
            return
        self.stats.failed += 1
        if len(self.stats.errors) < _MAX_ERRORS_KEPT:
            self.stats.errors.append(f"topic={msg.topic()} key={msg.key()!r}: {err.str()}")
        log.error("delivery failed topic=%s key=%r: %s", msg.topic(), msg.key(), err.str())

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports; call regularly when sending in a loop."""
        return int(self._producer.poll(timeout_s))

    def flush(self, timeout_s: float = 60.0, *, raise_on_error: bool = True) -> DeliveryStats:
        """Wait for every sent event to be acknowledged; raise DeliveryError if any failed."""
        deadline = time.monotonic() + timeout_s
        remaining = self._producer.flush(timeout_s)
        if remaining and time.monotonic() >= deadline:
            self.stats.errors.append(f"{remaining} message(s) still in flight after {timeout_s:.0f} s")
        if raise_on_error and (self.stats.failed or remaining):
            first = self.stats.errors[0] if self.stats.errors else "timed out"
            raise DeliveryError(self.stats.failed + remaining, first)
        return self.stats

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.flush(raise_on_error=exc_type is None)
