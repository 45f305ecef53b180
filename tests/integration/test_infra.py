"""`infra up|down|status` against the real programs: a second stack beside the session's one."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from streamscore.infra import LocalStack
from streamscore.kafka import admin_client
from streamscore.topics import TopicRegistry
from tests.integration.conftest import stack_settings


def test_up_is_idempotent_and_down_stops_exactly_what_it_started(tmp_path: Path, stack: LocalStack) -> None:
    own = LocalStack(stack_settings(tmp_path / "second"))
    registry = TopicRegistry.build(prefix="infra-test.", partitions=3)
    try:
        started = time.monotonic()
        first = own.up(registry)
        startup_s = time.monotonic() - started
        assert sorted(first.started) == ["kafka", "redis"]
        assert sorted(first.topics.created) == sorted(spec.name for spec in registry.all())
        print(f"second stack up in {startup_s:.1f} s (broker answered after {first.kafka_ready_s:.1f} s)")

        status = own.status()
        assert all(s.running for s in status.services)
        assert status.topics is not None
        assert {spec.name: 3 for spec in registry.all()}.items() <= status.topics.items()

        again = own.up(registry)
        assert again.started == []
        assert sorted(again.already_running) == ["kafka", "redis"]
        assert again.topics.created == []
        assert sorted(again.topics.existing) == sorted(spec.name for spec in registry.all())
        assert redis.Redis(port=own.settings.redis_port).ping()
    finally:
        stopped = own.down()
    assert sorted(stopped) == ["kafka", "redis"]
    assert not any(s.running for s in own.status().services)
    # The session's stack beside it is untouched.
    assert all(s.running for s in stack.status().services)
    assert admin_client(stack.settings.kafka_settings()).list_topics(timeout=5).brokers
    assert own.down() == []
