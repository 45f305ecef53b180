"""`streamscore infra up|down|status`: the local stack as one object.

`up` is idempotent: services already running (per the pid file) are kept, topics already present are
kept; a port another process holds is refused before anything starts, and an `up` that fails stops what it started
itself. `down` stops exactly the processes `up` recorded, by process id (or only some of them: the demo stops what
its own `up` started).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal as signals
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from streamscore.errors import BrokerUnavailableError, InfraError
from streamscore.failures import env_name
from streamscore.infra import kafka as local_kafka
from streamscore.infra import redis as local_redis
from streamscore.infra.process import ProcessRecord, StateFile, is_running, require_tool, stop, tail
from streamscore.infra.settings import InfraSettings
from streamscore.kafka import TopicReport, admin_client, ensure_topics, wait_for_broker
from streamscore.ports import ensure_free
from streamscore.topics import TopicRegistry

log = logging.getLogger(__name__)

StepCallback = Callable[[str], None]


@dataclass
class UpReport:
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)
    jars_fetched: bool = False
    kafka_ready_s: float | None = None
    redis_ready_s: float | None = None
    topics: TopicReport = field(default_factory=TopicReport)


@dataclass
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    port: int | None
    uptime_s: float | None
    log: str | None


@dataclass
class StackStatus:
    services: list[ServiceStatus]
    topics: dict[str, int] | None
    """Topic name → partition count, when the broker answers."""


class LocalStack:
    def __init__(self, settings: InfraSettings | None = None) -> None:
        self.settings = settings or InfraSettings()
        self.state = StateFile(self.settings.data_dir / "stack.json")

    def up(self, registry: TopicRegistry | None = None, on_step: StepCallback | None = None) -> UpReport:
        step = on_step or (lambda message: log.info("%s", message))
        # Both found (on PATH, else in their wheels) before a jar is downloaded or anything started.
        for tool in ("java", "redis-server"):
            require_tool(tool)
        report = UpReport()
        records = {name: r for name, r in self.state.load().items() if is_running(r)}
        # A port held by another process (a Redis or a broker of someone else's) is refused before anything starts:
        # ours would exit at once, and a foreign Redis answering our PING would pass for ours.
        for name in ("kafka", "redis"):
            if name not in records:
                for port, variable in self.ports(name):
                    ensure_free(port, variable)

        step("checking the Kafka jars cache")
        report.jars_fetched = local_kafka.fetch_jars(self.settings, on_step=step)

        starters = {
            "kafka": (f"starting Kafka on 127.0.0.1:{self.settings.kafka_port}", local_kafka.start),
            "redis": (f"starting redis-server on 127.0.0.1:{self.settings.redis_port}", local_redis.start),
        }
        try:
            for name, (message, start) in starters.items():
                if name in records:
                    report.already_running.append(name)
                    continue
                step(message)
                records[name] = start(self.settings)
                # Saved after each start, so `down` finds a half-started stack too.
                self.state.save(records)
                report.started.append(name)

            step("waiting for redis to answer PING")
            report.redis_ready_s = local_redis.wait_ready(records["redis"], self.settings.start_timeout_s)
            step("waiting for the Kafka broker to answer")
            report.kafka_ready_s = self._wait_kafka(records["kafka"])

            if registry is not None:
                step(f"creating {len(registry.all())} topics")
                report.topics = ensure_topics(self.settings.kafka_settings(), registry.all())
        except BaseException:
            # A failed (or interrupted) `up` leaves nothing of its own running; what ran before it keeps running.
            if report.started:
                self.down(step, only=report.started)
            raise
        return report

    def ports(self, name: str) -> list[tuple[int, str]]:
        """The loopback ports service `name` listens on, with the setting that moves each."""
        fields = ("kafka_port", "controller_port") if name == "kafka" else ("redis_port",)
        return [(getattr(self.settings, field), env_name(InfraSettings, field)) for field in fields]

    def _wait_kafka(self, record: ProcessRecord) -> float:
        started = time.monotonic()
        kafka = self.settings.kafka_settings()
        while True:
            if not is_running(record):
                raise InfraError(
                    "kafka",
                    "the broker exited during start-up",
                    tail(local_kafka.server_log(self.settings)) or tail(record.log),
                    local_kafka.server_log(self.settings),
                )
            try:
                wait_for_broker(kafka, timeout_s=1.0)
                return time.monotonic() - started
            except BrokerUnavailableError:
                if time.monotonic() - started > self.settings.start_timeout_s:
                    raise InfraError(
                        "kafka",
                        f"no answer on {kafka.bootstrap_servers} within {self.settings.start_timeout_s:.0f} s",
                        tail(local_kafka.server_log(self.settings)) or tail(record.log),
                        local_kafka.server_log(self.settings),
                    ) from None

    def down(self, on_step: StepCallback | None = None, only: Collection[str] | None = None) -> list[str]:
        """Stop what `up` started (Redis first, then the broker), or only the services named in `only`; returns the
        names stopped. A record whose process is no longer ours (it exited, its pid was reused) is dropped, and that
        process left alone (`stop` checks the command line)."""
        step = on_step or (lambda message: log.info("%s", message))
        records = self.state.load()
        stopped = []
        for name in ("redis", "kafka"):
            if only is not None and name not in only:
                continue
            record = records.pop(name, None)
            if record is None:
                continue
            step(f"stopping {name} (pid {record.pid})")
            if stop(record, timeout_s=30.0):
                stopped.append(name)
        self.state.save(records)
        return stopped

    def record(self, name: str) -> ProcessRecord | None:
        """The running process `up` started for `name` ("kafka" or "redis"), if it still runs."""
        record = self.state.load().get(name)
        return record if record is not None and is_running(record) else None

    def signal(self, name: str, sig: signals.Signals) -> int:
        """Send `sig` to the running `name` service (fault injection: SIGKILL, SIGSTOP, SIGCONT); returns its pid.
        A killed service is started again by `up()`, on the same port and data folder."""
        record = self.record(name)
        if record is None:
            raise InfraError(name, "not running; start it with `streamscore infra up`")
        os.kill(record.pid, sig)
        if sig == signals.SIGKILL:
            while is_running(record):
                time.sleep(0.02)
            with contextlib.suppress(ChildProcessError):  # our own child (tests, the fault suite): reap it
                os.waitpid(record.pid, os.WNOHANG)
        return record.pid

    def status(self) -> StackStatus:
        records = self.state.load()
        services = []
        for name in ("kafka", "redis"):
            record = records.get(name)
            running = record is not None and is_running(record)
            services.append(
                ServiceStatus(
                    name=name,
                    running=running,
                    pid=record.pid if record else None,
                    port=record.port if record else None,
                    uptime_s=time.time() - record.started_at if record and running else None,
                    log=record.log if record else None,
                )
            )
        topics = None
        if services[0].running:
            try:
                metadata = admin_client(self.settings.kafka_settings()).list_topics(timeout=3.0)
                topics = {
                    name: len(t.partitions) for name, t in sorted(metadata.topics.items()) if not name.startswith("__")
                }
            except Exception:  # noqa: BLE001 - status must report, not fail
                topics = None
        return StackStatus(services, topics)
