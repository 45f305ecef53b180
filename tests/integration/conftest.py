"""One real Kafka broker and one real redis-server per test session, started by the project's own
infra code on free loopback ports (beside any running demo stack), and a unique topic set per test."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamscore.infra import LocalStack
from streamscore.infra.settings import InfraSettings
from streamscore.kafka import delete_topics, ensure_topics
from streamscore.settings import KafkaSettings, RedisSettings
from streamscore.topics import TopicRegistry


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def stack_settings(data_dir: Path) -> InfraSettings:
    kafka_port, controller_port, redis_port = free_ports(3)
    return InfraSettings(
        data_dir=data_dir, kafka_port=kafka_port, controller_port=controller_port, redis_port=redis_port
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    local = LocalStack(stack_settings(tmp_path_factory.mktemp("stack")))
    try:
        local.up()
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def kafka(stack: LocalStack) -> KafkaSettings:
    return stack.settings.kafka_settings()


@pytest.fixture(scope="session")
def redis_settings(stack: LocalStack) -> RedisSettings:
    return stack.settings.redis_settings()


@pytest.fixture
def topics(kafka: KafkaSettings, request: pytest.FixtureRequest) -> Iterator[TopicRegistry]:
    """Every registry topic under a prefix unique to this test; deleted afterwards."""
    name = request.node.name.replace("[", "-").replace("]", "")[:40]
    registry = TopicRegistry.build(prefix=f"t.{name}.{uuid.uuid4().hex[:6]}.", partitions=6)
    ensure_topics(kafka, registry.all())
    yield registry
    delete_topics(kafka, [spec.name for spec in registry.all()])
