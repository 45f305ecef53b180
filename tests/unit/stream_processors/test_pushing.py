"""The snapshot batcher: batches by size and by delay, one row per account (last wins), acks only after the
push that covers them, and a failing sink keeps everything queued and is retried with backoff."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from stream_processors.accounts.pushing import Ack, MemorySink, PushPolicy, Row, SnapshotBatcher
from stream_processors.metrics import FeatureMetrics
from streamscore.contracts import DeadLetter, DeadLetterReason
from streamscore.deadletters import DeadLetterRecord, DeadLetterWriter, SourceRecord
from streamscore.features import RealtimeSnapshot

T0 = 1_790_000_000.0


def snap(count: int, last: float | None = T0) -> RealtimeSnapshot:
    return RealtimeSnapshot(count, count, count, float(count), float(count), float(count), 1, last, ("d1",), ("DE",))


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FailingSink(MemorySink):
    """A real MemorySink that raises for its first `failures` pushes (Redis down, then back)."""

    failures: int = 0
    attempts: int = 0

    def push(self, rows: Sequence[Row]) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        super().push(rows)


@dataclass
class ScriptedSink(MemorySink):
    """Succeeds or fails push by push, as scripted (True = success)."""

    outcomes: list[bool] = field(default_factory=list)

    def push(self, rows: Sequence[Row]) -> None:
        if not self.outcomes.pop(0):
            raise TimeoutError("Timeout reading from 127.0.0.1:6379")
        super().push(rows)


@dataclass
class BlockingSink(MemorySink):
    """Holds each push until released, to observe what happens while a push is in flight."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def push(self, rows: Sequence[Row]) -> None:
        self.entered.set()
        assert self.release.wait(5.0)
        super().push(rows)


class Acks:
    """Ack callbacks that record which events were acknowledged."""

    def __init__(self) -> None:
        self.done: list[str] = []

    def __call__(self, name: str) -> Ack:
        async def ack() -> None:
            self.done.append(name)

        return ack


def make(
    sink: MemorySink, clock: Callable[[], float] | None = None, **policy: float
) -> tuple[SnapshotBatcher, FeatureMetrics]:
    metrics = FeatureMetrics(CollectorRegistry())
    defaults: dict[str, float] = {"batch_size": 3, "max_delay_s": 0.2, "retry_initial_s": 0.5, "retry_max_s": 2.0}
    defaults.update(policy)
    batcher = SnapshotBatcher(
        sink,
        PushPolicy(**defaults),  # type: ignore[arg-type]
        metrics,
        clock=clock or FakeClock(),
        wall_clock=lambda: T0 + 0.25,
    )
    return batcher, metrics


def value(metrics: FeatureMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    result = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if result is None else result


def test_a_full_batch_is_due_at_once_and_pushed_in_one_write() -> None:
    sink, acks = MemorySink(), Acks()
    batcher, metrics = make(sink)
    batcher.add("a1", snap(1), acks("e1"))
    batcher.add("a2", snap(1), acks("e2"))
    assert not batcher.due()
    batcher.add("a3", snap(1), acks("e3"))
    assert batcher.due()

    assert asyncio.run(batcher.flush_if_due())
    assert sink.batches == [3]
    assert set(sink.rows) == {"a1", "a2", "a3"}
    assert acks.done == ["e1", "e2", "e3"]
    assert (batcher.pending_rows, batcher.pending_events) == (0, 0)
    assert value(metrics, "streamscore_features_push_batches_total") == 1
    assert value(metrics, "streamscore_features_pushed_rows_total") == 3


def test_a_partial_batch_is_pushed_once_its_oldest_row_waited_max_delay() -> None:
    sink, clock, acks = MemorySink(), FakeClock(), Acks()
    batcher, _ = make(sink, clock)
    batcher.add("a1", snap(1), acks("e1"))
    clock.now += 0.1
    batcher.add("a2", snap(1), acks("e2"))
    clock.now += 0.09
    assert not batcher.due()
    assert not asyncio.run(batcher.flush_if_due())
    assert sink.batches == []

    clock.now += 0.01  # the oldest row has now waited max_delay_s
    assert batcher.due()
    assert asyncio.run(batcher.flush_if_due())
    assert sink.batches == [2]
    assert acks.done == ["e1", "e2"]
    assert not batcher.due()


def test_the_last_snapshot_of_an_account_wins_and_its_place_and_age_are_kept() -> None:
    sink, clock, acks = MemorySink(), FakeClock(), Acks()
    batcher, _ = make(sink, clock, batch_size=10)
    batcher.add("a1", snap(1), acks("e1"))
    clock.now += 0.15
    batcher.add("a2", snap(1), acks("e2"))
    batcher.add("a1", snap(2), acks("e3"))
    batcher.add("a1", snap(3), acks("e4"))
    assert (batcher.pending_rows, batcher.pending_events) == (2, 4)
    clock.now += 0.05  # due by a1's first snapshot, queued 0.2 s ago
    assert batcher.due()

    assert asyncio.run(batcher.flush())
    assert sink.batches == [2]
    assert sink.rows == {"a1": snap(3), "a2": snap(1)}
    assert sorted(acks.done) == ["e1", "e2", "e3", "e4"]


def test_a_failing_push_keeps_rows_and_acks_and_is_retried_with_backoff() -> None:
    sink, clock, acks = FailingSink(failures=2), FakeClock(), Acks()
    batcher, metrics = make(sink, clock)
    for i in range(3):
        batcher.add(f"a{i}", snap(1), acks(f"e{i}"))

    assert not asyncio.run(batcher.flush_if_due())  # Redis down: first failure
    assert (batcher.pending_rows, batcher.pending_events, acks.done) == (3, 3, [])
    assert not batcher.due()  # backing off 0.5 s
    clock.now += 0.49
    assert not batcher.due()
    clock.now += 0.01
    assert batcher.due()
    batcher.add("a0", snap(2), acks("e3"))  # a newer snapshot arrives while Redis is down

    assert not asyncio.run(batcher.flush_if_due())  # second failure: the backoff doubles
    clock.now += 0.99
    assert not batcher.due()
    clock.now += 0.01
    health = batcher.health()
    assert (health.consecutive_failures, health.pending_rows, health.pending_events) == (2, 3, 4)
    assert health.last_error is not None and "Connection refused" in health.last_error

    assert asyncio.run(batcher.flush_if_due())  # Redis is back
    assert sink.batches == [3]
    assert sink.rows == {"a0": snap(2), "a1": snap(1), "a2": snap(1)}
    assert sorted(acks.done) == ["e0", "e1", "e2", "e3"]
    assert batcher.health().consecutive_failures == 0
    assert value(metrics, "streamscore_features_push_failures_total") == 2
    assert value(metrics, "streamscore_features_push_batches_total") == 1


def test_health_turns_bad_after_failing_for_unhealthy_after_s() -> None:
    clock = FakeClock()
    batcher, _ = make(FailingSink(failures=100), clock, unhealthy_after_s=30.0, retry_max_s=1.0)
    batcher.add("a1", snap(1))
    clock.now += 1.0
    assert not asyncio.run(batcher.flush())
    clock.now += 29.9
    assert batcher.health().healthy
    clock.now += 0.1
    health = batcher.health()
    assert not health.healthy
    assert health.as_dict()["failing_for_s"] == 30.0


def test_more_rows_than_a_batch_are_written_in_batch_size_chunks_and_acks_follow_their_chunk() -> None:
    sink, acks = FailingSink(), Acks()
    batcher, _ = make(sink, batch_size=3)
    for i in range(7):
        batcher.add(f"a{i}", snap(1), acks(f"e{i}"))
    assert asyncio.run(batcher.flush())
    assert sink.batches == [3, 3, 1]
    assert len(acks.done) == 7

    # The second chunk fails: the first one's events are acknowledged, the others wait.
    sink2, acks2 = ScriptedSink(outcomes=[True, False]), Acks()
    batcher2, _ = make(sink2, batch_size=3)
    for i in range(7):
        batcher2.add(f"a{i}", snap(1), acks2(f"e{i}"))
    assert not asyncio.run(batcher2.flush())
    assert sink2.batches == [3]
    assert acks2.done == ["e0", "e1", "e2"]
    assert (batcher2.pending_rows, batcher2.pending_events) == (4, 4)


def test_an_ack_waits_for_a_push_of_its_own_snapshot_not_an_older_one() -> None:
    sink, acks = BlockingSink(), Acks()
    batcher, _ = make(sink, batch_size=1)

    async def scenario() -> None:
        batcher.add("a1", snap(1), acks("e1"))
        batcher.kick()
        assert batcher.flushing
        await asyncio.get_running_loop().run_in_executor(None, sink.entered.wait, 5.0)
        batcher.add("a1", snap(2), acks("e2"))  # arrives while snap(1) is being written
        sink.release.set()
        while batcher.flushing:
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert sink.rows == {"a1": snap(1)}
    assert acks.done == ["e1"]  # e2's effect is not in the store yet
    assert (batcher.pending_rows, batcher.pending_events) == (1, 1)
    assert asyncio.run(batcher.flush())
    assert sink.rows == {"a1": snap(2)}
    assert acks.done == ["e1", "e2"]


def test_wait_for_room_blocks_until_a_push_succeeds() -> None:
    sink, acks = FailingSink(failures=2), Acks()
    # Real time: the backoff is slept through.
    batcher, _ = make(
        sink, time.monotonic, batch_size=100, max_pending_events=3, retry_initial_s=0.01, retry_max_s=0.02
    )
    for i in range(3):
        batcher.add("a1", snap(i), acks(f"e{i}"))
    assert not batcher.has_room

    asyncio.run(asyncio.wait_for(batcher.wait_for_room(), 5.0))
    assert batcher.has_room
    assert sink.attempts == 3
    assert sink.rows == {"a1": snap(2)}
    assert acks.done == ["e0", "e1", "e2"]


def test_drain_gives_up_after_its_timeout_and_keeps_the_rows() -> None:
    batcher, _ = make(FailingSink(failures=1000), time.monotonic, retry_initial_s=0.01, retry_max_s=0.01)
    batcher.add("a1", snap(1))
    assert not asyncio.run(batcher.drain(0.2))
    assert batcher.pending_rows == 1

    ok_batcher, _ = make(FailingSink(failures=2), time.monotonic, retry_initial_s=0.01, retry_max_s=0.01)
    ok_batcher.add("a1", snap(1))
    assert asyncio.run(ok_batcher.drain(5.0))
    assert ok_batcher.pending_rows == 0


def test_freshness_is_measured_from_the_newest_event_in_the_batch() -> None:
    batcher, metrics = make(MemorySink())
    batcher.add("a1", snap(1, last=T0 - 5.0))
    batcher.add("a2", snap(1, last=T0))
    batcher.add("a3", snap(1, last=None))
    assert asyncio.run(batcher.flush())
    assert value(metrics, "streamscore_features_last_pushed_event_timestamp_seconds") == T0
    assert value(metrics, "streamscore_features_freshness_seconds_sum") == pytest.approx(0.25)
    assert value(metrics, "streamscore_features_freshness_seconds_bucket", {"le": "0.5"}) == 1


def test_backoff_doubles_up_to_its_maximum() -> None:
    policy = PushPolicy(retry_initial_s=0.1, retry_max_s=1.0)
    assert [policy.backoff_s(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


# --- data errors are isolated, infrastructure errors are retried and then given up on ----------------------------


@dataclass
class PoisonSink(MemorySink):
    """A MemorySink that cannot write the rows of the `poison` accounts (as pandas cannot convert a year-9999
    timestamp): any batch holding one fails with a non-transient error, and nothing of that batch is written."""

    poison: set[str] = field(default_factory=set)
    attempts: list[list[str]] = field(default_factory=list)

    def push(self, rows: Sequence[Row]) -> None:
        self.attempts.append([k for k, _ in rows])
        bad = [k for k, _ in rows if k in self.poison]
        if bad:
            raise ValueError(f"Out of bounds nanosecond timestamp for {bad[0]}")
        super().push(rows)


@dataclass
class Letters:
    """A DeadLetterWriter over a list (or over a failing broker)."""

    fail: bool = False
    sent: list[DeadLetterRecord] = field(default_factory=list)
    clock: FakeClock = field(default_factory=FakeClock)

    def writer(self, give_up_after_s: float = 1.0) -> DeadLetterWriter:
        async def send(letters: Sequence[DeadLetterRecord]) -> None:
            self.clock.now += 0.4  # each attempt takes a while
            if self.fail:
                raise BrokerTimeoutError("the broker did not answer")
            self.sent.extend(letters)

        return DeadLetterWriter(
            send,
            topic="features.dlq",
            consumer_group="g",
            give_up_after_s=give_up_after_s,
            retry_initial_s=0.001,
            clock=self.clock,
        )


class BrokerTimeoutError(Exception):
    pass


def source(name: str, offset: int) -> SourceRecord:
    return SourceRecord("transactions", 0, offset, 1_000, name.encode(), f'{{"event":"{name}"}}'.encode(), [])


def test_a_row_the_store_cannot_write_is_isolated_its_events_dead_lettered_and_the_rest_written() -> None:
    sink, acks, letters = PoisonSink(poison={"a3"}), Acks(), Letters()
    batcher, metrics = make(sink, batch_size=8)
    batcher.letters = letters.writer()
    for i in range(6):
        batcher.add(f"a{i}", snap(1), acks(f"e{i}"), source(f"a{i}", i))
    batcher.add("a3", snap(2), acks("e6"), source("a3", 6))  # a second event of the poisoned account

    assert asyncio.run(batcher.flush())
    assert set(sink.rows) == {"a0", "a1", "a2", "a4", "a5"}
    assert sink.attempts[0] == ["a0", "a1", "a2", "a3", "a4", "a5"]  # then bisected
    assert ["a3"] in sink.attempts
    # Both events behind the unwritable row are dead-lettered, with their original bytes, before their acks.
    assert [letter.value for letter in letters.sent] == [b'{"event":"a3"}', b'{"event":"a3"}']
    assert {letter.reason for letter in letters.sent} == {DeadLetterReason.UNWRITABLE_FEATURES}
    headers = dict(letters.sent[0].headers)
    assert (headers["dlq-stage"], headers["dlq-original-offset"]) == (b"push", b"3")
    assert b"Out of bounds" in (headers["dlq-error-message"] or b"")
    assert sorted(acks.done) == [f"e{i}" for i in range(7)]
    assert (batcher.pending_rows, batcher.pending_events) == (0, 0)
    assert batcher.health().dead_lettered_rows == 1 and batcher.health().consecutive_failures == 0
    assert value(metrics, "streamscore_features_push_failures_total") == 0


def test_a_failure_of_every_row_is_not_a_data_error_but_retried() -> None:
    sink, acks, letters = PoisonSink(poison={"a0", "a1", "a2"}), Acks(), Letters()
    batcher, metrics = make(sink)
    batcher.letters = letters.writer()
    for i in range(3):
        batcher.add(f"a{i}", snap(1), acks(f"e{i}"), source(f"a{i}", i))
    assert not asyncio.run(batcher.flush())
    assert (letters.sent, acks.done, batcher.pending_rows, batcher.pending_events) == ([], [], 3, 3)
    assert value(metrics, "streamscore_features_push_failures_total") == 1


def test_a_transient_failure_during_bisection_releases_what_was_written_and_keeps_the_rest() -> None:
    @dataclass
    class Flaky(PoisonSink):
        def push(self, rows: Sequence[Row]) -> None:
            if len(self.attempts) == 2:  # Redis goes away in the middle of the bisection
                self.attempts.append([k for k, _ in rows])
                raise ConnectionError("Connection refused")
            super().push(rows)

    sink, acks = Flaky(poison={"a3"}), Acks()
    batcher, _ = make(sink, batch_size=4)
    for i in range(4):
        batcher.add(f"a{i}", snap(1), acks(f"e{i}"))
    assert not asyncio.run(batcher.flush())
    assert set(sink.rows) == {"a0", "a1"} and sorted(acks.done) == ["e0", "e1"]
    assert (batcher.pending_rows, batcher.pending_events) == (2, 2)
    assert batcher.health().consecutive_failures == 1


def test_infrastructure_down_past_the_patience_gives_up_once() -> None:
    clock, reasons = FakeClock(), list[str]()
    batcher, _ = make(FailingSink(failures=100), clock, give_up_after_s=10.0, retry_max_s=1.0)
    batcher.on_give_up = reasons.append
    batcher.add("a1", snap(1))
    for _ in range(12):
        asyncio.run(batcher.flush())
        clock.now += 1.0
    assert len(reasons) == 1 and "failing for 1" in reasons[0] and "Connection refused" in reasons[0]
    assert batcher.health().gave_up


def test_dead_letters_the_broker_never_takes_give_up_and_keep_the_acks_held() -> None:
    sink, acks, letters, reasons = PoisonSink(poison={"a1"}), Acks(), Letters(fail=True), list[str]()
    batcher, _ = make(sink)
    batcher.letters = letters.writer(give_up_after_s=1.0)
    batcher.on_give_up = reasons.append
    batcher.add("a1", snap(1), acks("e1"), source("a1", 1))
    assert not asyncio.run(batcher.flush())
    assert acks.done == [] and batcher.pending_events == 1
    assert len(reasons) == 1 and "features.dlq" in reasons[0]


def test_the_writer_retries_a_failed_delivery_and_counts_what_it_wrote() -> None:
    attempts: list[int] = []
    counted: list[tuple[str, int]] = []

    async def send(letters: Sequence[DeadLetterRecord]) -> None:
        attempts.append(len(letters))
        if len(attempts) < 3:
            raise BrokerTimeoutError("not yet")

    writer = DeadLetterWriter(
        send,
        topic="features.dlq",
        consumer_group="g",
        retry_initial_s=0.001,
        on_written=lambda r, n: counted.append((r.value, n)),
    )
    letter = writer.letter(source("a1", 5), DeadLetterReason.PROCESSING_FAILED, "boom", "apply")
    asyncio.run(writer.write([letter, letter]))
    assert attempts == [2, 2, 2] and counted == [("processing_failed", 2)]
    assert DeadLetter.from_headers(letter.headers).error_class is DeadLetterReason.PROCESSING_FAILED


def test_a_snapshot_is_held_until_its_newest_event_has_rested_hold_s() -> None:
    """FEATURES_PUSH_HOLD_MS: the scorer must score an event before the event's own snapshot is readable."""
    sink, clock, acks = MemorySink(), FakeClock(), Acks()
    batcher, _ = make(sink, clock, max_delay_s=0.01, hold_s=0.05)
    batcher.add("a1", snap(1), acks("e1"))
    clock.now += 0.03
    batcher.add("a2", snap(1), acks("e2"))
    assert not batcher.due(), "the oldest row waited max_delay, but nothing has rested hold_s"
    assert asyncio.run(batcher.flush()) and sink.rows == {}
    clock.now += 0.025  # a1 rested 0.055 s, a2 0.025 s
    assert batcher.due()
    assert asyncio.run(batcher.flush_if_due())
    assert set(sink.rows) == {"a1"} and acks.done == ["e1"]
    batcher.add("a2", snap(2), acks("e3"))  # a2 changes again: it waits from now
    clock.now += 0.04
    assert not batcher.due()
    clock.now += 0.02
    assert asyncio.run(batcher.flush_if_due())
    assert sink.rows["a2"] == snap(2) and acks.done == ["e1", "e2", "e3"]
    # Shutdown drains the held rows once they have rested (a real clock here).
    real, _ = make(MemorySink(), time.monotonic, hold_s=0.02, max_delay_s=0.01)
    real.add("a9", snap(1), acks("e9"))
    assert asyncio.run(real.drain(2.0))


def test_a_snapshot_waits_for_the_scorer_to_have_scored_its_event_at_most_max_wait() -> None:
    """FEATURES_PUBLISH_AFTER_GROUP: the gate says whether the scorer committed past the event's offset."""
    sink, clock, acks = MemorySink(), FakeClock(), Acks()
    committed = {0: 10}
    metrics = FeatureMetrics(CollectorRegistry())
    batcher = SnapshotBatcher(
        sink,
        PushPolicy(batch_size=3, max_delay_s=0.01),
        metrics,
        clock=clock,
        wall_clock=lambda: T0,
        gate=lambda partition, offset: committed.get(partition, -1) > offset,
        gate_max_wait_s=1.0,
    )
    batcher.add("a1", snap(1), acks("e1"), position=(0, 9))  # scored
    batcher.add("a2", snap(1), acks("e2"), position=(0, 10))  # not yet
    batcher.add("a3", snap(1), acks("e3"), position=(1, 0))  # its partition: nothing committed yet
    clock.now += 0.02
    assert asyncio.run(batcher.flush_if_due())
    assert set(sink.rows) == {"a1"}
    committed[0] = 11
    clock.now += 0.02
    assert asyncio.run(batcher.flush_if_due())
    assert set(sink.rows) == {"a1", "a2"}
    clock.now += 1.0  # a3 waited max_wait: published whatever the scorer did
    assert asyncio.run(batcher.flush_if_due())
    assert set(sink.rows) == {"a1", "a2", "a3"} and acks.done == ["e1", "e2", "e3"]


def test_add_many_queues_one_row_for_several_events_and_before_push_sees_its_accounts_first() -> None:
    sink, acks = MemorySink(), Acks()
    batcher, _ = make(sink, batch_size=10)
    seen: list[tuple[list[str], dict[str, RealtimeSnapshot]]] = []
    batcher.before_push = lambda keys: seen.append((list(keys), dict(sink.rows)))
    batcher.add_many("a1", snap(3), [(acks("e1"), None), (acks("e2"), None), (acks("e3"), None)], (0, 7))
    batcher.add("a2", snap(1), acks("e4"))
    assert (batcher.pending_rows, batcher.pending_events) == (2, 4)
    assert asyncio.run(batcher.flush())
    assert seen == [(["a1", "a2"], {})]  # called before the write, with the accounts of the push
    assert sink.rows == {"a1": snap(3), "a2": snap(1)} and sink.batches == [2]
    assert acks.done == ["e1", "e2", "e3", "e4"]
    assert (batcher.pending_rows, batcher.pending_events) == (0, 0)


def test_acks_wait_until_the_changelog_records_sent_before_the_push_are_delivered() -> None:
    # Faust's flush before a commit can return while records still wait in its send buffer (it gives up after 0.1 s
    # without a message handed on): an ack released before its record is delivered lets the offset be committed ahead
    # of the state the partition's next owner recovers.
    sink, acks = MemorySink(), Acks()
    batcher, _ = make(sink)

    async def scenario() -> tuple[list[str], list[str]]:
        record: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        sent: list[Sequence[str]] = []

        def send_changelog(accounts: Sequence[str]) -> list[asyncio.Future[object]]:
            sent.append(accounts)
            return [record]

        batcher.before_push = send_changelog
        batcher.add("a1", snap(1), acks("e1"))
        push = asyncio.create_task(batcher.flush())
        for _ in range(20):
            await asyncio.sleep(0.01)
        before = list(acks.done)
        record.set_result(None)  # the broker acknowledged the changelog record
        assert await push
        assert sent == [["a1"]] and sink.rows == {"a1": snap(1)}
        return before, list(acks.done)

    before, after = asyncio.run(scenario())
    assert before == []
    assert after == ["e1"]


def test_a_changelog_record_that_could_not_be_sent_keeps_the_acks_held() -> None:
    sink, acks = MemorySink(), Acks()
    batcher, _ = make(sink)

    async def scenario() -> None:
        record: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        record.set_exception(ConnectionError("the broker refused the record"))
        batcher.before_push = lambda accounts: [record]
        batcher.add("a1", snap(1), acks("e1"))
        assert await batcher.flush()
        assert acks.done == [] and batcher.pending_events == 1
        batcher.before_push = lambda accounts: []  # the account's next push (its record is the whole row)
        batcher.add("a1", snap(2), acks("e2"))
        assert await batcher.flush()

    asyncio.run(scenario())
    assert acks.done == ["e1", "e2"]
