"""Kafka plumbing shared by every service: client configurations, broker readiness, topic creation.

Producers use the `murmur2_random` partitioner so a key lands on the same partition whether it was
produced by librdkafka, the Java client or aiokafka (Faust): co-partitioning of the Faust tables
with the transactions topic depends on it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streamscore.errors import BrokerUnavailableError, ConfigError
from streamscore.settings import KafkaSettings
from streamscore.topics import TopicSpec

log = logging.getLogger(__name__)

PARTITIONER = "murmur2_random"
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")
"""librdkafka's own log lines go through Python logging (served on poll), not straight to stderr."""


TRANSACTIONAL_RETRY_BACKOFF = {"retry.backoff.ms": 5, "retry.backoff.max.ms": 100}
"""Back-to-back transactions: the coordinator answers CONCURRENT_TRANSACTIONS to the next transaction's first
AddPartitionsToTxn / AddOffsetsToTxn until the previous one's commit markers are written, and librdkafka retries
after `retry.backoff.ms` — 100 ms by default, which stalled the scorer's ~15 ms commits to 100–180 ms (the Java
client lowered its own backoff for this case to 20 ms, KAFKA-5477). Retries back off exponentially from 5 ms to
100 ms."""


def producer_config(
    kafka: KafkaSettings,
    client_id: str,
    *,
    transactional_id: str | None = None,
    linger_ms: int = 10,
    batch_bytes: int = 512 * 1024,
    compression: str = "lz4",
) -> dict[str, Any]:
    """An idempotent producer (acks=all, ordered per partition), transactional when an id is given."""
    config: dict[str, Any] = {
        **kafka.client_config(),
        "client.id": f"{kafka.client_id_prefix}-{client_id}",
        "logger": LIBRDKAFKA_LOG,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": PARTITIONER,
        "linger.ms": linger_ms,
        "batch.size": batch_bytes,
        "compression.type": compression,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    }
    if transactional_id:
        config["transactional.id"] = transactional_id
        config.update(TRANSACTIONAL_RETRY_BACKOFF)
    return config


def consumer_config(
    kafka: KafkaSettings,
    group_id: str,
    client_id: str,
    *,
    read_committed: bool = True,
    auto_offset_reset: str = "earliest",
    enable_auto_commit: bool = False,
) -> dict[str, Any]:
    """A consumer that reads only committed transactional data and commits offsets explicitly."""
    return {
        **kafka.client_config(),
        "group.id": group_id,
        "client.id": f"{kafka.client_id_prefix}-{client_id}",
        "logger": LIBRDKAFKA_LOG,
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        "auto.offset.reset": auto_offset_reset,
        "enable.auto.commit": enable_auto_commit,
        "partition.assignment.strategy": "cooperative-sticky",
    }


def admin_client(kafka: KafkaSettings, *, quiet: bool = False) -> AdminClient:
    config: dict[str, Any] = {
        **kafka.client_config(),
        "client.id": f"{kafka.client_id_prefix}-admin",
        "logger": LIBRDKAFKA_LOG,
    }
    if quiet:
        # Probing a broker that is still starting: "connection refused" is expected, not worth a log line.
        config["log_level"] = 2
    return AdminClient(config)


def wait_for_broker(kafka: KafkaSettings, timeout_s: float = 30.0) -> float:
    """Block until the cluster answers a metadata request; return the seconds waited."""
    started = time.monotonic()
    admin = admin_client(kafka, quiet=True)
    last_error = ""
    while True:
        try:
            metadata = admin.list_topics(timeout=2.0)
            if metadata.brokers:
                return time.monotonic() - started
        except KafkaException as exc:
            last_error = str(exc)
        waited = time.monotonic() - started
        if waited >= timeout_s:
            raise BrokerUnavailableError(kafka.bootstrap_servers, waited, last_error)
        time.sleep(0.2)


@dataclass
class TopicReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def missing_topic(kafka: KafkaSettings, name: str) -> ConfigError:
    """The error for a topic a service needs that the broker does not have: names the command that creates it."""
    return ConfigError(
        "TOPICS_PREFIX",
        f"topic {name!r} does not exist on {kafka.bootstrap_servers}; "
        "create it with `streamscore infra up` (or `streamscore infra topics`)",
    )


def ensure_topics(kafka: KafkaSettings, specs: list[TopicSpec], timeout_s: float = 30.0) -> TopicReport:
    """Create missing topics; existing ones are left alone (a partition-count mismatch is reported)."""
    admin = admin_client(kafka)
    report = TopicReport()
    current = admin.list_topics(timeout=timeout_s).topics
    wanted = []
    for spec in specs:
        if spec.name in current:
            report.existing.append(spec.name)
            if len(current[spec.name].partitions) != spec.partitions:
                report.mismatched.append(spec.name)
                log.warning(
                    "topic=%s has %d partitions, the registry wants %d; left unchanged",
                    spec.name,
                    len(current[spec.name].partitions),
                    spec.partitions,
                )
        else:
            wanted.append(NewTopic(spec.name, spec.partitions, 1, config=spec.config()))
    if not wanted:
        return report
    for name, future in admin.create_topics(wanted, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            report.created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            report.existing.append(name)
    # Creation is asynchronous on the controller: wait until every partition has a leader.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout_s).topics
        if all(
            name in topics and topics[name].partitions and all(p.leader >= 0 for p in topics[name].partitions.values())
            for name in report.created
        ):
            break
        time.sleep(0.1)
    return report


def delete_topics(kafka: KafkaSettings, names: list[str], timeout_s: float = 30.0) -> None:
    admin = admin_client(kafka)
    for future in admin.delete_topics(names, operation_timeout=timeout_s).values():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (the Java client's `Utils.murmur2`), as a signed 32-bit int."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java default partitioner (and librdkafka's murmur2) picks for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
