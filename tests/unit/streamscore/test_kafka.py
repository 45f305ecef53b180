"""The murmur2 partitioner matches the Java client's, so every client puts a key on the same partition."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from streamscore.contracts import DeadLetterReason, EventTimeWindow, decode_transaction, receiving_clock
from streamscore.errors import EventError
from streamscore.kafka import murmur2, partition_for
from streamscore.settings import KafkaSettings, TopicSettings
from streamscore.topics import TopicRegistry


@pytest.mark.parametrize(
    ("data", "expected"),
    # Vectors from Apache Kafka's UtilsTest.testMurmur2.
    [
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_java(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partition_for_is_in_range_and_stable() -> None:
    keys = [f"acc-{i:06d}".encode() for i in range(2000)]
    parts = [partition_for(k, 6) for k in keys]
    assert set(parts) == set(range(6))
    assert parts == [partition_for(k, 6) for k in keys]


def test_registry_prefix_and_partitions() -> None:
    registry = TopicSettings(prefix="t1.", partitions=3).registry()
    names = [spec.name for spec in registry.all()]
    assert len(names) == len(set(names)) == 10
    assert all(name.startswith("t1.") for name in names)
    assert registry.transactions.name == "t1.transactions"
    assert {spec.partitions for spec in registry.all()} == {3}
    assert {s.partitions for s in TopicRegistry.build().with_partitions(12).all()} == {12}
    assert registry.dlq.config()["cleanup.policy"] == "delete"
    assert {registry.features_dlq.name, registry.monitor_dlq.name} == {"t1.features.dlq", "t1.monitor.dlq"}


def test_kafka_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-a:9092,broker-b:9092")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    settings = KafkaSettings()
    assert settings.client_config()["bootstrap.servers"] == "broker-a:9092,broker-b:9092"
    assert "s3cret" not in repr(settings)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "  ")
    with pytest.raises(ValueError, match="KAFKA_BOOTSTRAP_SERVERS"):
        KafkaSettings()


def test_the_transactions_topic_is_stamped_by_the_broker_and_its_time_is_the_receiving_clock() -> None:
    registry = TopicSettings(prefix="t1.").registry()
    assert registry.transactions.config()["message.timestamp.type"] == "LogAppendTime"
    assert {s.config()["message.timestamp.type"] for s in registry.all() if s != registry.transactions} == {
        "CreateTime"
    }
    # The broker's append time is the clock; a producer's own timestamp is not trusted (the wall clock is used).
    assert receiving_clock(1_765_000_000_123, log_append_time=True) == 1_765_000_000.123
    assert receiving_clock(1_765_000_000_123, log_append_time=False) is None
    assert receiving_clock(-1, log_append_time=True) is None
    window = EventTimeWindow(max_ahead_s=300, max_behind_s=7 * 86400)
    arrived = datetime(2026, 1, 10, 12, tzinfo=UTC).timestamp()
    body = {
        "event_id": "e-1",
        "account_id": "a-1",
        "merchant_id": "m-1",
        "merchant_category": "5411",
        "amount": 12.5,
        "currency": "EUR",
        "country": "DE",
        "channel": "pos",
        "event_time": "2026-01-10T11:59:00+00:00",
    }
    value = json.dumps(body).encode()
    # Judged at its arrival, an event of January is in its window whenever the record is read (a replay, a backlog).
    assert decode_transaction(b"a-1", value, window=window, now_s=arrived).event_id == "e-1"
    with pytest.raises(EventError) as refused:
        decode_transaction(b"a-1", value, window=window, now_s=None)  # read "now", months later
    assert refused.value.reason == DeadLetterReason.EVENT_TIME_OUT_OF_WINDOW
