"""The murmur2 partitioner matches the Java client's, so every client puts a key on the same partition."""

from __future__ import annotations

import pytest

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
