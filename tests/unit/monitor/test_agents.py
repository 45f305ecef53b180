"""The Faust edge's own logic that needs no broker: reference loading shared by the warm-up and the agents, dead
letters for records that cannot be parsed, the patience with an unreachable registry."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import faust
import numpy as np
import pytest
from faust.types import TP
from mode.utils.queues import FlowControlEvent
from prometheus_client import CollectorRegistry

from monitor.agents import QueueClearWatch, Runtime, Topics
from monitor.app_settings import MonitorAppSettings
from monitor.metrics import MonitorMetrics
from monitor.partition import PartitionState
from monitor.references import ReferenceBook, ReferenceUnavailableError
from streamscore.contracts import DeadLetter
from streamscore.deadletters import DeadLetterRecord, DeadLetterWriter
from tests.support.monitoring import draw_features, label_event, model_scores, reference_document, score_event


def test_concurrent_requests_for_a_reference_load_it_once_and_one_at_a_time() -> None:
    """The start-up warm-up and the records agent ask for the same versions at once; two downloads into the same
    cache folder read each other's half-written file (seen: a truncated reference.json), so loads are serialized
    and a version loaded meanwhile is not loaded again."""
    x = draw_features(np.random.default_rng(1), 500)
    document = reference_document(x, model_scores(x))
    calls: list[str] = []
    running = [0, 0]
    guard = threading.Lock()

    def loader(version: str) -> Mapping[str, Any]:
        with guard:
            running[0] += 1
            running[1] = max(running[1], running[0])
        calls.append(version)
        time.sleep(0.05)
        with guard:
            running[0] -= 1
        return document

    runtime = Runtime(
        app=None,
        settings=MonitorAppSettings(),
        partitions=6,
        state_table=None,
        merge_table=None,
        topics=Topics(None, None, None, None, None, {}),
        book=ReferenceBook(loader),
        metrics=MonitorMetrics(CollectorRegistry()),
    )

    async def both() -> None:
        await asyncio.gather(runtime.ensure_references({"1", "2"}), runtime.ensure_references({"2", "1"}))

    asyncio.run(both())
    assert sorted(calls) == ["1", "2"], "each version loaded once"
    assert running[1] == 1, "never two loads at the same time"
    assert runtime.book.features("1") is not None


# --- records the monitor cannot parse or apply, and a registry that never answers ---------------------------------


@dataclass
class Message:
    """The parts of a Faust message the records agent reads."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = b"acc-1"
    timestamp: float = 1_700_000_000.5
    headers: list[tuple[str, bytes]] = field(default_factory=lambda: [("content-type", b"application/json")])


@dataclass
class Event:
    message: Message


def poisoned_runtime(loader: Any = None, **settings: Any) -> tuple[Runtime, list[DeadLetterRecord]]:
    sent: list[DeadLetterRecord] = []

    async def send(letters: Sequence[DeadLetterRecord]) -> None:
        sent.extend(letters)

    x = draw_features(np.random.default_rng(1), 200)
    document = reference_document(x, model_scores(x))
    app_settings = MonitorAppSettings(**settings)
    book = ReferenceBook(loader or (lambda version: document))
    metrics = MonitorMetrics(CollectorRegistry())
    runtime = Runtime(
        app=None,
        settings=app_settings,
        partitions=6,
        state_table=None,
        merge_table=None,
        topics=Topics(None, None, None, None, None, {"scores": "scores", "labels": "labels"}),
        book=book,
        metrics=metrics,
    )
    runtime.letters = DeadLetterWriter(
        send,
        topic="monitor.dlq",
        consumer_group="monitor",
        on_written=lambda reason, n: metrics.dead_letters.labels(reason=reason.value).inc(n),
    )
    runtime.states = {0: PartitionState(0, app_settings.stats, runtime.policy, book)}
    runtime.ready = True
    return runtime, sent


POISON = [
    (b'{"event_id": "broken', "not_json", "decode"),
    (b'{"event_id": "\xff\xfe"}', "not_json", "decode"),
    (b"[1, 2]", "schema_invalid", "validate"),
    (None, "not_json", "decode"),
]


def test_a_score_or_label_that_does_not_parse_is_dead_lettered_with_its_bytes_and_the_stream_goes_on() -> None:
    runtime, sent = poisoned_runtime()
    good = score_event("ev-1", "acc-1", 1_700_000_000.0, 0.3)
    records = [Event(Message("scores", 0, i, value)) for i, (value, _, _) in enumerate(POISON)]
    records.append(Event(Message("labels", 0, 0, b'{"schema_version": 1.0}')))
    records.append(Event(Message("scores", 0, len(POISON), good.to_json())))

    async def feed() -> None:
        for event in records:
            await runtime.on_record(event)

    asyncio.run(feed())
    assert [letter.value for letter in sent] == [value for value, _, _ in POISON] + [b'{"schema_version": 1.0}']
    for letter, (_, reason, stage) in zip(sent, POISON, strict=False):
        header = DeadLetter.from_headers(letter.headers)
        assert (header.error_class.value, header.stage, header.consumer_group) == (reason, stage, "monitor")
        assert (header.original_topic, letter.key) == ("scores", b"acc-1")
    # Every record is held for the checkpoint's acknowledgement, the good score counted after the bad ones.
    assert len(runtime.held[0]) == len(records)
    sample = runtime.metrics.registry.get_sample_value
    assert sample("streamscore_monitor_records_total", {"topic": "scores", "outcome": "counted"}) == 1
    assert sample("streamscore_monitor_dead_letters_total", {"reason": "not_json"}) == 3


def test_a_score_or_label_from_the_future_is_dead_lettered_and_a_label_weeks_late_is_not() -> None:
    """One record dated years ahead would move its partition's event-time clock past every open window; a chargeback
    label about a transaction weeks old is ordinary."""
    runtime, sent = poisoned_runtime(max_event_ahead_s=3600.0)
    now = time.time()
    future_score = score_event("ev-f", "acc-1", now + 80 * 365 * 86400, 0.3)
    late_score = score_event("ev-s", "acc-1", now + 2 * 3600, 0.3)
    future_label = label_event("ev-l", "acc-1", now - 60, fraud=False, delay_s=3 * 3600)
    good = score_event("ev-1", "acc-1", now - 10, 0.3)
    weeks_old_label = label_event("ev-old", "acc-1", now - 40 * 86400, fraud=True, delay_s=40 * 86400 - 60)
    records = [
        Event(Message("scores", 0, 0, future_score.to_json())),
        Event(Message("scores", 0, 1, late_score.to_json())),
        Event(Message("labels", 0, 0, future_label.to_json())),
        Event(Message("scores", 0, 2, good.to_json())),
        Event(Message("labels", 0, 1, weeks_old_label.to_json())),
    ]

    async def feed() -> None:
        for event in records:
            await runtime.on_record(event)

    asyncio.run(feed())
    reasons = [DeadLetter.from_headers(letter.headers).error_class.value for letter in sent]
    assert [letter.value for letter in sent] == [r.message.value for r in records[:3]]
    assert reasons == ["event_time_out_of_window"] * 3
    sample = runtime.metrics.registry.get_sample_value
    assert sample("streamscore_monitor_records_total", {"topic": "scores", "outcome": "counted"}) == 1
    assert sample("streamscore_monitor_dead_letters_total", {"reason": "event_time_out_of_window"}) == 3


def test_a_registry_that_never_answers_gives_up_after_the_patience() -> None:
    def unreachable(version: str) -> Mapping[str, Any]:
        raise ReferenceUnavailableError(version, "Connection refused")

    runtime, _ = poisoned_runtime(unreachable, give_up_after_s=0.3)
    reasons: list[str] = []
    runtime.on_give_up = reasons.append
    with pytest.raises(ReferenceUnavailableError):
        asyncio.run(runtime.ensure_references({"7"}))
    assert len(reasons) == 1 and "model registry" in reasons[0]


# --- a checkpoint cut short ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stopping", [False, True])
def test_a_checkpoint_cut_short_stops_every_write_and_apply_from_the_states_in_memory(stopping: bool) -> None:
    """The checkpoint moves the state on before its records are stored: once a write fails, a later checkpoint (or
    the one at revocation) would store A/B counts whose units the changelog lacks, and the replay after a restart
    would count them again. So nothing more is written or applied, and the worker gives up unless it is stopping."""
    runtime, _ = poisoned_runtime()
    runtime.app = SimpleNamespace(should_stop=stopping, consumer=None)
    runtime.topics.kinds["scores.shadow"] = "shadow"
    reasons: list[str] = []
    runtime.on_give_up = reasons.append
    writes: list[int] = []
    broker_down = [True]

    async def queue(partition: int, records: list[Any]) -> list[Any]:
        writes.append(partition)
        if broker_down[0]:
            raise ConnectionError("the broker went away")
        return []

    async def write(partition: int, records: list[Any]) -> None:
        await queue(partition, records)

    runtime.queue = queue  # type: ignore[method-assign]
    runtime.write = write  # type: ignore[method-assign]

    async def run() -> None:
        at = 1_700_000_000.0
        await runtime.on_record(Event(Message("scores", 0, 0, score_event("ev-1", "acc-1", at, 0.3).to_json())))
        await runtime.on_record(Event(Message("labels", 0, 0, label_event("ev-1", "acc-1", at, False, 1.0).to_json())))
        with pytest.raises(ConnectionError):
            await runtime.checkpoint_all()
        broker_down[0] = False
        held = len(runtime.held[0])
        await runtime.on_record(Event(Message("scores", 0, 1, score_event("ev-2", "acc-1", at, 0.3).to_json())))
        assert len(runtime.held[0]) == held, "a record after the cut is neither applied nor acknowledged"
        await runtime.checkpoint_all()
        await runtime.on_revoked()

    asyncio.run(run())
    assert writes == [0], "only the checkpoint that failed wrote: not the next one, not the one at revocation"
    assert runtime.diverged is not None and "ConnectionError" in runtime.diverged
    assert runtime.health()["ready"] is False and runtime.health()["healthy"] is False
    assert len(reasons) == (0 if stopping else 1), "a worker not stopping anyway gives up, to be rebuilt"


class FakeConsumer:
    """The parts of Faust's consumer the rebuild uses: the assignment, committed offsets, log starts, and the fetch
    position and reader offset a seek sets (`monitor.agents.seek_now`)."""

    def __init__(self, assigned: set[TP], committed: Mapping[TP, int | None], starts: Mapping[TP, int]) -> None:
        self.assigned = assigned
        self.committed = committed
        self.starts = starts
        self.seeks: list[tuple[TP, int]] = []
        self._thread = SimpleNamespace(seek=lambda tp, offset: self.seeks.append((tp, offset)))
        self._read_offset: dict[TP, int | None] = {}

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    async def seek_to_committed(self) -> Mapping[TP, int | None]:
        return {tp: self.committed.get(tp) for tp in self.assigned}

    async def earliest_offsets(self, *partitions: TP) -> Mapping[TP, int]:
        return {tp: self.starts.get(tp, 0) for tp in partitions}


def test_a_record_delivered_while_the_states_are_rebuilt_is_applied_after_not_dropped() -> None:
    """Faust can hand over a record fetched before a rebalance while the states are being rebuilt. Dropping it left a
    hole in the acknowledgements that Faust's commit stepped over (the broker-kill test lost one unit per partition):
    it is kept and applied once the states are rebuilt, and held for the checkpoint like any other."""
    runtime, _ = poisoned_runtime()
    runtime.topics.kinds["scores.shadow"] = "shadow"
    assigned = {TP("scores", 0), TP("labels", 0)}
    runtime.app = SimpleNamespace(should_stop=False, consumer=FakeConsumer(assigned, dict.fromkeys(assigned, 3), {}))
    runtime.state_table = SimpleNamespace(data={})
    written: list[int] = []

    async def write(partition: int, records: list[Any]) -> None:
        written.append(partition)

    runtime.write = write  # type: ignore[method-assign]
    at = 1_700_000_000.0

    async def run() -> None:
        await runtime.on_revoked()
        assert not runtime.ready
        await runtime.on_record(Event(Message("scores", 0, 7, score_event("ev-7", "acc-1", at, 0.3).to_json())))
        await runtime.on_record(Event(Message("scores", 3, 1, score_event("ev-x", "acc-9", at, 0.3).to_json())))
        assert not runtime.held, "nothing applied before the rebuild"
        await runtime.on_recovered()

    asyncio.run(run())
    assert runtime.ready and sorted(runtime.states) == [0]
    assert [e.message.offset for e in runtime.held[0]] == [7], "applied after the rebuild and held for the checkpoint"
    assert "ev-7" in runtime.states[0].units
    assert not runtime.early and 3 not in runtime.held, "a partition not owned after the rebuild is left to its owner"


def test_a_partition_without_committed_offset_is_read_again_from_its_start_when_faust_clears_the_queues() -> None:
    """Faust resumes fetching before it seeks to the committed offsets, then clears the streams' queues. A partition
    with no committed offset was not sought back, and read on after the dropped records (the A/B crash test lost the
    first half's labels of four partitions: their units counted without them). At that clear — not before the rebuild,
    not at a later one — it is sought back to its log start, as Faust seeks the others to their committed offsets."""
    runtime, _ = poisoned_runtime()
    labels, scores = TP("labels", 0), TP("scores", 0)
    consumer = FakeConsumer({labels, scores}, {scores: 40, labels: None}, {labels: 5})
    runtime.app = SimpleNamespace(should_stop=False, consumer=consumer)
    runtime.state_table = SimpleNamespace(data={})

    async def write(partition: int, records: list[Any]) -> None:
        pass

    runtime.write = write  # type: ignore[method-assign]
    watch = QueueClearWatch(runtime.on_queues_cleared)
    flow = FlowControlEvent()
    flow.manage_queue(watch)  # type: ignore[arg-type]  # duck-typed: flow control only calls its clear()

    async def run() -> None:
        await runtime.on_revoked()
        flow.resume()  # the resumes during the table recovery, before the rebuild
        assert consumer.seeks == []
        await runtime.on_recovered()
        assert consumer.seeks == [], "the fetch would start there anyway; what matters is what Faust drops after"
        label = label_event("ev-5", "acc-1", 1_700_000_000.0, False, 1.0)
        await runtime.on_record(Event(Message("labels", 0, 5, label.to_json())))  # fetched before Faust's seek
        flow.resume()  # Faust's, right after its seek: the queues are cleared
        assert consumer.seeks == [(labels, 5)], "only the partition without a committed offset"
        flow.resume()
        assert consumer.seeks == [(labels, 5)], "once per rebuild"

    asyncio.run(run())
    assert consumer._read_offset == {labels: 5}
    assert "ev-5" in runtime.states[0].units, "what was applied stays (read again, it is a replay)"


def test_nothing_is_read_again_when_the_monitor_starts_from_the_latest_records() -> None:
    runtime, _ = poisoned_runtime(auto_offset_reset="latest")
    labels = TP("labels", 0)
    runtime.app = SimpleNamespace(should_stop=False, consumer=FakeConsumer({labels}, {}, {labels: 0}))
    assert asyncio.run(runtime.unread_starts()) == {}


def test_the_installed_faust_consumer_still_has_what_seek_now_reaches() -> None:
    # seek_now uses two private attributes of Faust's consumer; a Faust upgrade that renames them must fail here,
    # not silently narrow the fix for partitions without a committed offset.
    app = faust.App("seek-now-guard", broker="kafka://127.0.0.1:1", web_enabled=False)
    consumer: Any = app.consumer
    assert callable(getattr(consumer._thread, "seek", None))
    assert consumer._read_offset[TP("t", 0)] is None, "a dict of read offsets, None for unread partitions"
