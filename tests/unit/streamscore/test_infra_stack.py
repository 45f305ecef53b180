"""The local stack stops exactly what it started: a failed `up` stops its own starts, `down(only=…)` stops only those,
and a record whose process is not ours (a reused pid) is never stopped. The services are stand-ins (a sleeping
Python with the service's marker on its command line), so no broker or Redis is needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamscore.errors import InfraError
from streamscore.infra import LocalStack
from streamscore.infra import kafka as local_kafka
from streamscore.infra import redis as local_redis
from streamscore.infra import stack as stack_module
from streamscore.infra.process import ProcessRecord, is_running, spawn
from streamscore.infra.settings import InfraSettings


def stand_in(name: str, settings: InfraSettings) -> ProcessRecord:
    marker = f"stand-in-{name}-{settings.data_dir}"
    argv = [sys.executable, "-c", "import time; time.sleep(60)", marker]
    return spawn(name, argv, settings.data_dir / f"{name}.log", 1, marker)


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    monkeypatch.setattr(stack_module, "require_tool", lambda name: name)
    monkeypatch.setattr(stack_module, "ensure_free", lambda port, variable: None)
    monkeypatch.setattr(local_kafka, "fetch_jars", lambda *args, **kwargs: False)
    monkeypatch.setattr(local_kafka, "start", lambda settings: stand_in("kafka", settings))
    local = LocalStack(InfraSettings(data_dir=tmp_path))
    yield local
    for record in local.state.load().values():  # whatever a failing test left behind
        if is_running(record):
            os.kill(record.pid, signal.SIGKILL)


def test_a_failed_up_stops_what_it_started_and_only_that(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    def redis_fails(settings: InfraSettings) -> ProcessRecord:
        raise InfraError("redis", "redis-server exited during start-up")

    monkeypatch.setattr(local_redis, "start", redis_fails)
    with pytest.raises(InfraError, match="redis-server exited"):
        stack.up()
    assert stack.state.load() == {}, "the broker this `up` started was stopped and forgotten"


def test_a_failed_up_keeps_what_ran_before_it(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    before = stand_in("redis", stack.settings)
    stack.state.save({"redis": before})
    monkeypatch.setattr(local_redis, "wait_ready", lambda record, timeout: 0.0)

    def broker_never_answers(record: ProcessRecord) -> float:
        raise InfraError("kafka", "no answer")

    monkeypatch.setattr(stack, "_wait_kafka", broker_never_answers)
    with pytest.raises(InfraError, match="no answer"):
        stack.up()
    assert list(stack.state.load()) == ["redis"] and is_running(before)
    assert stack.down() == ["redis"]


def test_down_only_stops_the_services_named(stack: LocalStack) -> None:
    kafka, redis = stand_in("kafka", stack.settings), stand_in("redis", stack.settings)
    stack.state.save({"kafka": kafka, "redis": redis})
    assert stack.down(only=["redis"]) == ["redis"]
    assert is_running(kafka) and not is_running(redis)
    assert list(stack.state.load()) == ["kafka"]
    assert stack.down() == ["kafka"]


def test_a_record_whose_process_is_not_ours_is_never_stopped(stack: LocalStack) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "127.0.0.1:6379"])
    try:
        # The right command line at the recorded pid, but a process that started long after the record was written:
        # the pid was reused (after a reboot, a system redis-server on the same port looks exactly like ours).
        reused = ProcessRecord("redis", other.pid, 6379, "127.0.0.1:6379", "", time.time() - 3600)
        # Another command line, and a record "written" in the future (a clock set back): not a young process of ours.
        future = ProcessRecord("kafka", other.pid, 9092, "/tmp/server.properties", "", time.time() + 3600)
        assert not is_running(reused) and not is_running(future)
        stack.state.save({"redis": reused, "kafka": future})
        assert stack.record("redis") is None and stack.record("kafka") is None
        assert stack.down() == []
        assert other.poll() is None, "the process that was not ours still runs"
        assert stack.state.load() == {}, "its records are dropped"
        # the same process, recorded when it started, is ours
        assert is_running(ProcessRecord("redis", other.pid, 6379, "127.0.0.1:6379", "", time.time()))
    finally:
        other.kill()
        other.wait()
