"""The start guard: the first event of each partition in a consumer generation must be where the group resumes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaException
from faust.types.tuples import TP
from prometheus_client import CollectorRegistry

from stream_processors.accounts.agents import _admitted
from stream_processors.metrics import FeatureMetrics
from streamscore.starts import StartGuard

TOPIC = "transactions"


@dataclass
class Broker:
    """`Positions` over a fixed log of one topic: committed offsets, and the offsets that hold records."""

    committed: dict[int, int]
    records: dict[int, set[int]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    failures: int = 0

    def starts(self, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        assert all(t == TOPIC for t, _ in partitions)
        self.calls.append(f"starts {[p for _, p in partitions]}")
        if self.failures:
            self.failures -= 1
            raise KafkaException("broker away")
        return {(t, p): self.committed[p] for t, p in partitions}

    def record_before(self, partition: tuple[str, int], start: int, end: int) -> bool:
        self.calls.append(f"read {partition[1]} [{start}, {end})")
        return any(start <= o < end for o in self.records.get(partition[1], set()))


def tps(*partitions: int) -> set[tuple[str, int]]:
    return {(TOPIC, p) for p in partitions}


def at(**offsets: int) -> dict[tuple[str, int], int]:
    """First offsets by partition: at(p4=67, p5=7)."""
    return {(TOPIC, int(k[1:])): v for k, v in offsets.items()}


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


def guard(broker: Broker, stopped: list[str], clock: Clock | None = None) -> StartGuard:
    async def seek(partition: tuple[str, int], offset: int) -> None:
        broker.calls.append(f"seek {partition[1]} {offset}")

    return StartGuard(broker, seek, stopped.append, retry_s=0.0, patience_s=0.05, clock=clock or Clock())


def test_a_partition_starting_at_its_committed_offset_is_admitted_once_per_generation() -> None:
    broker, stopped = Broker({0: 10, 1: 20}), list[str]()
    g = guard(broker, stopped)
    assert asyncio.run(g.admit(3, tps(0, 1), at(p0=10, p1=20))) == tps(0, 1)
    assert g.settled(3, tps(0, 1)) and not g.settled(4, tps(0, 1))
    assert broker.calls == ["starts [0, 1]"]
    assert asyncio.run(g.admit(4, tps(0), at(p0=12))) == tps(0)  # a new generation checks again: 12 is past 10, but
    assert broker.calls[1:] == ["starts [0]", "read 0 [10, 12)"]  # no record lies between (markers)
    assert stopped == []


def test_a_partition_starting_past_where_the_group_resumes_is_sought_back_and_refused_until_it_is_there() -> None:
    # The broker-kill test's case: the group resumes partition 4 at 41; a fetch from the old position returns 67.
    broker, stopped, clock = Broker({4: 41, 5: 7}, records={4: set(range(0, 200))}), list[str](), Clock()
    g = guard(broker, stopped, clock)
    assert asyncio.run(g.admit(3, tps(4, 5), at(p4=67, p5=7))) == tps(5)
    assert broker.calls == ["starts [4, 5]", "read 4 [41, 67)", "seek 4 41"]
    assert asyncio.run(g.admit(3, tps(4, 5), at(p4=68, p5=9))) == tps(5)  # the stale batch goes on: refused
    clock.now = 2.0  # still not back after reseek_s: sought again
    assert asyncio.run(g.admit(3, tps(4), at(p4=69))) == set()
    assert broker.calls[-1] == "seek 4 41"
    assert asyncio.run(g.admit(3, tps(4), at(p4=30))) == set()  # older records are refused, without a seek
    assert broker.calls.count("seek 4 41") == 2
    assert asyncio.run(g.admit(3, tps(4), at(p4=41))) == tps(4)  # back where the group resumes: started
    assert g.settled(3, tps(4, 5)) and stopped == []


def test_a_seek_that_fails_stops_the_worker_for_a_restart() -> None:
    broker, stopped = Broker({4: 41}, records={4: set(range(200))}), list[str]()

    async def seek(partition: tuple[str, int], offset: int) -> None:
        raise RuntimeError("consumer stopped")

    g = StartGuard(broker, seek, stopped.append, retry_s=0.0, patience_s=0.05)
    assert asyncio.run(g.admit(3, tps(4), at(p4=67))) == set()
    assert len(stopped) == 1 and "transactions:4" in stopped[0] and "consumer stopped" in stopped[0]


def test_offsets_without_records_between_the_committed_one_and_the_first_event_are_markers() -> None:
    broker, stopped = Broker({0: 10}, records={0: {13, 14}}), list[str]()
    g = guard(broker, stopped)
    assert asyncio.run(g.admit(1, tps(0), at(p0=13))) == tps(0)
    assert broker.calls == ["starts [0]", "read 0 [10, 13)"]
    assert stopped == []


def test_an_event_before_the_committed_offset_is_admitted_as_a_duplicate() -> None:
    broker, stopped = Broker({0: 10}, records={0: set(range(20))}), list[str]()
    assert asyncio.run(guard(broker, stopped).admit(1, tps(0), at(p0=8))) == tps(0)
    assert stopped == []


def test_events_of_a_partition_not_assigned_here_are_dropped_without_asking_the_broker() -> None:
    broker, stopped = Broker({0: 10}), list[str]()
    g = guard(broker, stopped)
    assert asyncio.run(g.admit(1, tps(0), at(p0=10, p3=99))) == tps(0)
    assert asyncio.run(g.admit(1, tps(0), at(p3=100))) == set()
    assert broker.calls == ["starts [0]"] and stopped == []


def test_a_broker_that_does_not_answer_within_the_patience_stops_the_worker_and_admits_nothing() -> None:
    broker, stopped = Broker({0: 10}, failures=10_000), list[str]()
    g = guard(broker, stopped)
    assert asyncio.run(g.admit(1, tps(0), at(p0=10))) == set()
    assert len(stopped) == 1 and "could not be read" in stopped[0]
    broker.failures = 1  # one failure within the patience is retried
    assert asyncio.run(g.admit(2, tps(0), at(p0=10))) == tps(0)


def message(partition: int, offset: int, generation: int) -> Any:
    return SimpleNamespace(
        message=SimpleNamespace(topic=TOPIC, partition=partition, offset=offset, generation_id=generation)
    )


def test_the_agent_folds_only_the_admitted_partitions_events_and_counts_the_rest() -> None:
    broker, stopped = Broker({4: 41, 5: 7}, records={4: set(range(200))}), list[str]()
    metrics = FeatureMetrics(CollectorRegistry())
    consumer = SimpleNamespace(assignment=lambda: {TP(TOPIC, 4), TP(TOPIC, 5), TP("other", 1)})
    edge: Any = SimpleNamespace(starts=guard(broker, stopped), app=SimpleNamespace(consumer=consumer), metrics=metrics)
    old = message(4, 40, 2)  # an older generation's: on_events drops it on its own, no need to count it here
    events = [old, message(4, 67, 3), message(5, 7, 3), message(4, 68, 3), message(5, 8, 3)]
    kept = asyncio.run(_admitted(edge, 3, events))
    assert [(e.message.partition, e.message.offset) for e in kept] == [(4, 40), (5, 7), (5, 8)]
    assert metrics.registry.get_sample_value("streamscore_features_events_refused_total") == 2
    assert asyncio.run(_admitted(edge, 3, [message(5, 9, 3)])) == [message(5, 9, 3)]
    assert broker.calls.count("starts [4, 5]") == 1  # settled partitions cost nothing
