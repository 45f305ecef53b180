"""Generated traffic through the real broker: nothing lost, nothing duplicated, keys and partitions
as the Java client would choose them, per-account order kept, labels delayed as configured."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from pydantic import ValidationError

from producers.client import EventProducer
from producers.generator import GeneratorConfig, TransactionGenerator
from producers.live import LiveRun, run_live
from producers.world import build_world
from streamscore.contracts import Label, Transaction, decode_transaction, header_value, parse_event
from streamscore.errors import DeliveryError
from streamscore.kafka import consumer_config, partition_for
from streamscore.settings import KafkaSettings
from streamscore.topics import TopicRegistry

EVENTS = 10_000
LABEL_DELAY_S = 2.0


class RecordingProducer(EventProducer):
    """The real producer, also remembering the order in which transactions were handed to it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Transaction] = []

    def send_transaction(self, event: Any, *, traceparent: str | None = None) -> Transaction:
        tx = super().send_transaction(event, traceparent=traceparent)
        self.sent.append(tx)
        return tx


def consume_all(kafka: KafkaSettings, topic: str, expected: int, timeout_s: float = 60.0) -> list[Message]:
    consumer = Consumer(consumer_config(kafka, f"test-{uuid.uuid4().hex[:8]}", "test"))
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                assert msg.error() is None, msg.error()
                messages.append(msg)
            if len(messages) >= expected:
                # Linger a moment: anything beyond `expected` would be a duplicate.
                for msg in consumer.consume(1000, 1.0):
                    messages.append(msg)
                break
    finally:
        consumer.close()
    return messages


def test_ten_thousand_generated_events_round_trip(kafka: KafkaSettings, topics: TopicRegistry) -> None:
    generator = TransactionGenerator(build_world(11, accounts=2_000, merchants=300), GeneratorConfig(seed=11))
    producer = RecordingProducer(kafka, topics)
    summary = run_live(
        generator, producer, LiveRun(events=EVENTS, rate=0.0, label_delay_s=LABEL_DELAY_S, keep_labels=True)
    )
    assert summary.events == EVENTS
    assert summary.failed == 0
    assert summary.labels_sent == EVENTS
    assert summary.labels_not_sent == 0

    tx_messages = consume_all(kafka, topics.transactions.name, EVENTS)
    assert len(tx_messages) == EVENTS, "every transaction exactly once"
    received: dict[str, tuple[Transaction, Message]] = {}
    order_by_account: dict[str, list[str]] = defaultdict(list)
    for msg in tx_messages:
        headers = msg.headers() or []
        key = msg.key() or b""
        tx = decode_transaction(key, msg.value(), headers)
        assert tx.event_id not in received, f"duplicate {tx.event_id}"
        received[tx.event_id] = (tx, msg)
        assert key == tx.account_id.encode()
        assert msg.partition() == partition_for(key, topics.transactions.partitions)
        assert header_value(headers, "content-type") == b"application/json"
        assert header_value(headers, "schema-version") == b"1"
        order_by_account[tx.account_id].append(tx.event_id)
    sent_order: dict[str, list[str]] = defaultdict(list)
    for tx in producer.sent:
        sent_order[tx.account_id].append(tx.event_id)
        assert received[tx.event_id][0] == tx, "the consumed event equals the sent one"
    assert order_by_account == sent_order, "per-account order is preserved"
    assert len(order_by_account) > 500

    label_messages = consume_all(kafka, topics.labels.name, EVENTS)
    assert len(label_messages) == EVENTS
    frauds = 0
    for msg in label_messages:
        label = parse_event(Label, msg.value() or b"")
        tx, tx_msg = received[label.event_id]
        assert msg.key() == tx_msg.key()
        assert label.event_time == tx.event_time
        # What the generator decided: reported fraud says fraud, 1 to 2 delays late; the rest says legitimate.
        assert label.is_fraud is summary.labels[label.event_id]
        delay = timedelta(seconds=LABEL_DELAY_S)
        if label.is_fraud:
            assert delay <= label.labeled_at - label.event_time <= 2 * delay
        else:
            assert label.labeled_at - label.event_time == delay
        # Broker-visible delay: the label reached the topic no earlier than its maturity time (ms resolution).
        # (Not compared with the transaction's broker timestamp: librdkafka stamps CreateTime inside produce(),
        # which a loaded machine may reach hundreds of ms after the event time was taken.)
        assert msg.timestamp()[1] >= int(label.labeled_at.timestamp() * 1000) - 1
        frauds += label.is_fraud
    assert 0.6 * summary.frauds < frauds <= summary.frauds, "unreported fraud is labelled legitimate"
    assert {m.partition() for m in tx_messages} == set(range(topics.transactions.partitions))


def test_client_validates_before_sending(kafka: KafkaSettings, topics: TopicRegistry) -> None:
    producer = EventProducer(kafka, topics)
    good = {
        "event_id": "evt-client-1",
        "account_id": "acc-000042",
        "merchant_id": "mer-00007",
        "merchant_category": "5411",
        "amount": 23.90,
        "currency": "EUR",
        "country": "DE",
        "channel": "contactless",
        "event_time": datetime.now(UTC).isoformat(),
    }
    with pytest.raises(ValidationError, match="currency"):
        producer.send_transaction({**good, "currency": "XXZ"})
    with pytest.raises(ValidationError, match="amount"):
        producer.send_transaction({**good, "amount": float("inf")})
    # What the receivers would dead-letter as `event_time_out_of_window` is refused before it is sent.
    with pytest.raises(ValidationError, match="event_time"):
        producer.send_transaction({**good, "event_time": "2100-01-01T00:00:00Z"})
    assert producer.stats.sent == 0
    producer.send_transaction(good, traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    stats = producer.flush(10)
    assert (stats.sent, stats.delivered, stats.failed) == (1, 1, 0)
    [msg] = consume_all(kafka, topics.transactions.name, 1, timeout_s=20)
    assert (header_value(msg.headers(), "traceparent") or b"").startswith(b"00-0af76519")
    low, high = Consumer(consumer_config(kafka, "probe", "probe")).get_watermark_offsets(
        TopicPartition(topics.transactions.name, msg.partition() or 0), timeout=5
    )
    assert high - low == 1


def test_delivery_errors_are_reported(kafka: KafkaSettings) -> None:
    missing = TopicRegistry.build(prefix=f"does-not-exist-{uuid.uuid4().hex[:6]}.")
    producer = EventProducer(kafka, missing, extra_config={"message.timeout.ms": 2000})
    producer.send_transaction(
        {
            "event_id": "evt-lost-1",
            "account_id": "acc-1",
            "merchant_id": "mer-1",
            "merchant_category": "5411",
            "amount": 1.0,
            "currency": "EUR",
            "country": "DE",
            "channel": "pos",
            "event_time": datetime.now(UTC).isoformat(),
        }
    )
    with pytest.raises(DeliveryError, match="not delivered"):
        producer.flush(15)
    assert producer.stats.failed == 1
