"""Measuring instruments of the pipeline benchmark: CPU time of processes from /proc, the timestamps of what
a topic holds, consumption progress of a group, and the moment records become visible to a read_committed
consumer."""

from __future__ import annotations

import os
import threading
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from streamscore.kafka import consumer_config
from streamscore.settings import KafkaSettings

CLK_TCK = os.sysconf("SC_CLK_TCK")
STEAL = "steal"


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: fields after its closing parenthesis start at field 3.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_busy_s() -> tuple[float, float]:
    """CPU seconds all cores spent busy in this machine (user, nice, system, irq, softirq) and stolen by the
    hypervisor (steal: the vCPU wanted to run, the host ran something else), since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    steal = values[7]
    return (sum(values) - values[3] - values[4] - steal) / CLK_TCK, steal / CLK_TCK


@dataclass
class Sample:
    at: float
    """Wall clock (time.time()), comparable with Kafka record timestamps."""
    cpu: dict[str, float]
    busy: float
    steal: float


class CpuSampler:
    """Samples the CPU time of named processes and of the whole machine every `interval_s`, so the CPU
    spent between two instants seen elsewhere (record timestamps) can be interpolated afterwards."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.pids: dict[str, int] = {}
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self.pids[name] = pid
        self.sample()

    def forget(self, name: str) -> None:
        self.sample()
        with self._lock:
            self.pids.pop(name, None)

    def start(self) -> CpuSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def sample(self) -> None:
        with self._lock:
            pids = dict(self.pids)
        cpu: dict[str, float] = {}
        for name, pid in pids.items():
            value = process_cpu_s(pid)
            if value is not None:
                cpu[name] = value
        sample = Sample(time.time(), cpu, *system_busy_s())
        with self._lock:
            self.samples.append(sample)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def _at(self, name: str | None, t: float) -> float | None:
        """Interpolated cumulative CPU seconds of `name` (None: the whole machine, "steal": the hypervisor's
        steal) at wall time `t`."""

        def value(s: Sample) -> float | None:
            return s.busy if name is None else s.steal if name == STEAL else s.cpu.get(name)

        with self._lock:
            points = [(s.at, value(s)) for s in self.samples]
        series = [(at, v) for at, v in points if v is not None]
        if not series:
            return None
        times = [at for at, _ in series]
        i = bisect_left(times, t)
        if i == 0:
            return series[0][1]
        if i >= len(series):
            return series[-1][1]
        (t0, v0), (t1, v1) = series[i - 1], series[i]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1

    def cpu_between(self, name: str | None, start: float, end: float) -> float | None:
        """CPU seconds `name` (None: all processes of the machine) used between two wall-clock instants."""
        a, b = self._at(name, start), self._at(name, end)
        return None if a is None or b is None else max(b - a, 0.0)


def partitions(kafka: KafkaSettings, topic: str) -> list[int]:
    consumer = Consumer(consumer_config(kafka, f"bench-meta-{uuid.uuid4().hex[:8]}", "bench-meta"))
    try:
        metadata = consumer.list_topics(topic, timeout=10.0)
        return sorted(metadata.topics[topic].partitions)
    finally:
        consumer.close()


def high_watermarks(kafka: KafkaSettings, topic: str) -> dict[int, int]:
    consumer = Consumer(consumer_config(kafka, f"bench-meta-{uuid.uuid4().hex[:8]}", "bench-meta"))
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)[1]
            for p in partitions(kafka, topic)
        }
    finally:
        consumer.close()


class GroupProgress:
    """How many records of `topic` the consumer group `group` has committed (sum over partitions). Reads
    the committed offsets without joining the group."""

    def __init__(self, kafka: KafkaSettings, group: str, topic: str) -> None:
        self.consumer = Consumer(consumer_config(kafka, group, "bench-progress"))
        self.tps = [TopicPartition(topic, p) for p in partitions(kafka, topic)]

    def committed(self) -> int:
        try:
            offsets = self.consumer.committed(self.tps, timeout=5.0)
        except Exception:  # noqa: BLE001 - the coordinator may still be loading; progress is best effort
            return 0
        return sum(max(tp.offset, 0) for tp in offsets)

    def close(self) -> None:
        self.consumer.close()


@dataclass
class TopicRead:
    count: int = 0
    timestamps_ms: list[int] = field(default_factory=list)
    """CreateTime of every record, in the order read (not sorted across partitions)."""
    values: list[bytes] = field(default_factory=list)


def read_topic(
    kafka: KafkaSettings,
    topic: str,
    expected: int,
    *,
    timeout_s: float = 120.0,
    keep_values: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> TopicRead:
    """Everything committed in `topic` from the beginning (read_committed), until `expected` records were
    read or nothing new arrived for 5 s (or `timeout_s` passed)."""
    consumer = Consumer(
        {**consumer_config(kafka, f"bench-read-{uuid.uuid4().hex[:8]}", "bench-read"), "enable.partition.eof": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions(kafka, topic)])
    out = TopicRead()
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while out.count < expected and time.monotonic() < deadline and time.monotonic() - last_new < 5.0:
            messages = consumer.consume(10_000, 0.5)
            for m in messages:
                if m.error() is not None:
                    continue
                out.count += 1
                out.timestamps_ms.append(m.timestamp()[1])
                if keep_values:
                    out.values.append(m.value() or b"")
            if messages:
                last_new = time.monotonic()
                if on_progress is not None:
                    on_progress(out.count)
    finally:
        consumer.close()
    return out


_EVENT_ID = b'"event_id":"'


def event_id_of(value: bytes) -> bytes:
    """The event id of a Score's JSON without parsing it (the probe must stay cheap next to the scorer)."""
    start = value.find(_EVENT_ID)
    if start < 0:
        return b""
    start += len(_EVENT_ID)
    return value[start : value.find(b'"', start)]


class VisibilityProbe:
    """A read_committed consumer of `topic` from its current end that notes, for every record, the wall-clock
    moment it was handed to the application: when the record became visible downstream."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        config: dict[str, Any] = {
            **consumer_config(kafka, f"bench-probe-{uuid.uuid4().hex[:8]}", "bench-probe"),
            # Bounds the broker's long poll: a fetch returns as soon as committed data is there, or after 5 ms.
            "fetch.wait.max.ms": 5,
            "enable.partition.eof": False,
        }
        self.consumer = Consumer(config)
        ends = high_watermarks(kafka, topic)
        self.consumer.assign([TopicPartition(topic, p, offset) for p, offset in ends.items()])
        self.seen: list[tuple[bytes, float]] = []

    def poll(self, seconds: float) -> int:
        """Read for `seconds`; returns the number of records seen meanwhile."""
        deadline = time.monotonic() + seconds
        before = len(self.seen)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            message = self.consumer.poll(min(remaining, 0.05))
            if message is None:
                continue
            now = time.time()
            if message.error() is None:
                self.seen.append((event_id_of(message.value() or b""), now))
        return len(self.seen) - before

    def close(self) -> None:
        self.consumer.close()
