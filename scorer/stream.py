"""The Kafka transport of the scoring engine: consume a micro-batch → decode (defects → dead letters) → engine →
produce scores, shadow scores and dead letters → commit, exactly once.

Exactly-once (the default): every batch is one Kafka transaction holding its scores, shadow scores, dead
letters *and* the consumed offsets (`send_offsets_to_transaction` with the consumer's group metadata, so a
zombie of an older generation is fenced). Downstream reads `read_committed`. On an abortable error the
transaction is aborted and the consumer rewound to the committed offsets; on a fatal one (fenced, invalid
epoch) the producer is rebuilt with the same transactional id and the consumer rewound.

Pipelining: a batch's delivery (produce + commit) runs on a committer thread while the batch loop polls and
scores the next batch; the loop hands batch n+1 over only after batch n's delivery succeeded, so at most one
transaction is open and outputs stay in order. When a delivery fails, whatever was consumed after it (the next
batch included) is dropped and every partition rewound to its committed offsets. A revoke (cooperative-sticky,
served inside `poll`) first waits for the delivery in flight to commit or abort, so the partitions' new owner
starts from final offsets; not-yet-delivered records of revoked partitions are dropped, never produced.

At-least-once (`SCORER_DELIVERY=at_least_once`): outputs go through an idempotent, non-transactional
producer, are flushed, then the offsets are committed. A crash between flush and commit re-scores the batch
(duplicates downstream); in exchange no transaction markers and no transactional coordinator round trips.

Infrastructure failures (Redis, the broker) are retried with exponential backoff while the partitions are
paused and the consumer keeps polling, so it stays in its group; they are never dead-lettered. After
`give_up_after_s` without success the process exits non-zero so its supervisor restarts it.

Nothing waits unbounded: every broker call has `SCORER_KAFKA_TIMEOUT_S`, the wait on the committer thread has a
bound, and closing the clients has `SCORER_EXIT_TIMEOUT_S`. A fatal client error (a static member fenced by
another with its `group.instance.id`, a fenced transactional producer, any error librdkafka flags fatal) ends the
loop with `FatalClientError` (exit code 4): the client is unusable, and rebuilding a producer fenced by a live
duplicate would fence that one in turn. A loop that turns without progress — records wait on its partitions and
nothing commits, or it holds no partitions while the group has some for it (`scorer.health.stalled`) — ends with
`StalledError` (exit code 5) after `SCORER_STALL_EXIT_AFTER_S`. The group's own view (members, owners, lag from
the committed offsets) comes from `scorer.watcher.GroupWatcher` on a thread of its own.

Lag gauges of the partitions this instance holds come from the loop itself, with no broker round trip: the
consumer's librdkafka statistics (every `SCORER_LAG_INTERVAL_S`) give each partition's read_committed log end and
position, the loop knows what it committed and what it holds uncommitted, and `streamscore.lag.consumer_partition_lag`
applies the rule of `streamscore lag` to them. The watcher publishes the other partitions' (the group's view).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_LOG_APPEND_TIME,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from scorer.deadletters import DeadLetterRecord, SourceRecord, dead_letter
from scorer.engine import BatchResult, Request, ScoringEngine
from scorer.features.base import FeatureStoreUnavailableError
from scorer.health import HealthBounds, LoopState, readiness, stalled
from scorer.metrics import Outcome, ScorerMetrics
from scorer.serving import Reloader
from scorer.settings import ScorerSettings
from scorer.watcher import GroupWatcher
from streamscore.contracts import (
    DeadLetterReason,
    Header,
    decode_transaction,
    header_value,
    headers_for,
    is_traceparent,
    receiving_clock,
)
from streamscore.errors import EventError, StreamscoreError
from streamscore.kafka import consumer_config, producer_config
from streamscore.lag import Head, consumer_partition_lag, consumer_partitions
from streamscore.logs import kafka_context

logger = logging.getLogger(__name__)


EXIT_CRASH = 1
EXIT_INFRA = 3
EXIT_FATAL = 4
EXIT_STALLED = 5
CALL_MARGIN_S = 10.0
"""How long past its own timeout a broker call on the committer thread may take before the loop gives up on it."""


class ScorerExitError(StreamscoreError):
    """The loop decided to end the process with `exit_code`, for its supervisor to start a fresh one."""

    retryable = True
    exit_code = EXIT_CRASH


class InfraGiveUpError(ScorerExitError):
    """Infrastructure stayed unavailable longer than `SCORER_GIVE_UP_AFTER_S`."""

    exit_code = EXIT_INFRA

    def __init__(self, what: str, seconds: float, last: str) -> None:
        super().__init__(f"{what} unavailable for {seconds:.0f} s (last error: {last}); exiting for a restart")


class FatalClientError(ScorerExitError):
    """A Kafka client reported a fatal error: it can do nothing more, only a new process can."""

    exit_code = EXIT_FATAL

    def __init__(self, client: str, error: KafkaError | str) -> None:
        detail = f"{error.name()}: {error.str()}" if isinstance(error, KafkaError) else error
        super().__init__(f"fatal {client} error ({detail}); exiting for a restart")


class StalledError(ScorerExitError):
    """The loop turns but makes no progress (see `scorer.health.stalled`)."""

    exit_code = EXIT_STALLED

    def __init__(self, why: str) -> None:
        super().__init__(f"stalled: {why}; exiting for a restart")


FATAL_CODES = frozenset(
    {
        KafkaError._FATAL,
        KafkaError._FENCED,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.PRODUCER_FENCED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)
"""Errors no retry or rebuild within this process cures: librdkafka flags most of them fatal itself (a fenced
static member, a fenced producer); the authorization ones need an operator."""


def is_fatal(error: KafkaError) -> bool:
    return bool(error.fatal()) or error.code() in FATAL_CODES


class Committer:
    """One daemon thread that runs submitted calls in order (the committer of `StreamScorer`). A daemon, unlike
    ThreadPoolExecutor's workers, so that a call stuck inside librdkafka cannot keep the process from exiting."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((future, call))
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)

    def shutdown(self, timeout_s: float) -> bool:
        """Let the queued calls finish, at most `timeout_s`; False when the thread is still busy (left behind)."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def bounded(what: str, call: Callable[[], Any], timeout_s: float) -> bool:
    """Run `call` on a daemon thread and wait at most `timeout_s` (closing a client whose broker is gone can block
    for long); False when it did not return in time. Exceptions are logged, not raised."""
    done = threading.Event()

    def target() -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            logger.warning("%s: %s", what, exc)
        finally:
            done.set()

    threading.Thread(target=target, name=f"scorer-{what.replace(' ', '-')}", daemon=True).start()
    if done.wait(timeout_s):
        return True
    logger.error("%s did not return within %.0f s; going on without it", what, timeout_s)
    return False


@dataclass(slots=True)
class Output:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]
    timestamp_ms: int | None = None


@dataclass(slots=True)
class Delivery:
    """A scored batch on its way out: what the committer thread produces and commits, and what the batch loop
    accounts for once it has."""

    outputs: list[Output]
    offsets: list[TopicPartition]
    timestamps: list[tuple[str, int, float]]
    """(topic, partition, record timestamp in epoch seconds) of every consumed record."""
    scored: int
    shadow: int
    outcomes: Counter[Outcome]
    """Scores by variant, kind, model version, decision and feature status (ScorerMetrics.count_scores)."""
    reasons: Counter[str]
    shadow_failures: int
    metadata: Any = None
    """The consumer's group metadata at hand-over (exactly-once), fencing zombies of older generations."""
    started: float = 0.0
    finished: float = 0.0
    committed_at: float = 0.0
    error: KafkaError | str | None = None
    crash: BaseException | None = None
    failures: list[str] = field(default_factory=list)
    """At-least-once: delivery errors reported by the producer."""
    records: Sequence[Message] = ()
    """The consumed records (the lag gauges read the oldest uncommitted one per partition while it is in flight)."""


def _record(message: Message) -> SourceRecord:
    _, timestamp = message.timestamp()
    return SourceRecord(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        timestamp_ms=timestamp,
        key=message.key(),
        value=message.value(),
        headers=message.headers(),
    )


class Backoff:
    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0
        self.first_failure: float | None = None

    def next_delay(self) -> float:
        if self.first_failure is None:
            self.first_failure = time.monotonic()
        delay = float(min(self.initial_s * 2.0**self.failures, self.max_s))
        self.failures += 1
        return delay

    def failing_for(self) -> float:
        return 0.0 if self.first_failure is None else time.monotonic() - self.first_failure

    def reset(self) -> None:
        self.failures = 0
        self.first_failure = None


class StreamScorer:
    """The scoring loop over Kafka. `run()` blocks until `stop()` (SIGTERM/SIGINT) and returns an exit code, or
    raises a `ScorerExitError` naming the code the process should end with."""

    def __init__(
        self,
        settings: ScorerSettings,
        engine: ScoringEngine,
        metrics: ScorerMetrics,
        *,
        reloader: Reloader | None = None,
        on_swap: Callable[[], None] | None = None,
        stopping: threading.Event | None = None,
        on_exit: Callable[[int], object] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.reloader = reloader
        self.on_swap = on_swap
        self.on_exit = on_exit
        """Called with the exit code as soon as the loop decides to end the process (before closing the clients):
        the service arms its hard-exit deadline there."""
        registry = settings.topics.registry()
        self.input_topic = registry.transactions.name
        self.scores_topic = registry.scores.name
        self.shadow_topic = registry.scores_shadow.name
        self.dlq_topic = registry.dlq.name
        self.group = settings.group
        self.exactly_once = settings.delivery == "exactly_once"
        self.bounds = HealthBounds.of(settings)
        self._timeout_s = settings.kafka_timeout_s
        self._stopping = stopping or threading.Event()
        self._assigned: set[tuple[str, int]] = set()
        self._revoked: set[tuple[str, int]] = set()
        self._carry: list[Message] = []
        self._committer = Committer("scorer-commit")
        self._pending: Future[Delivery] | None = None
        self._call_since: float | None = None
        """When the committer thread's current broker call began (None between calls)."""
        self._rewind_needed = False
        self._deferred: ScorerExitError | None = None
        """An exit decided inside a rebalance callback, raised by the loop once poll() has returned."""
        # What the health checks read from other threads: plain attributes, each replaced whole (atomic).
        self.started = time.monotonic()
        self.last_iteration = self.started
        self.last_commit: float | None = None
        self.held: frozenset[int] = frozenset()
        self.assigned_since = self.started
        self.recovering: str | None = None
        self.fatal: str | None = None
        self.totals = {"records": 0, "scored": 0, "shadow": 0, "dead_letters": 0, "batches": 0}
        # The lag gauges of held partitions (see the module docstring), all on the loop's thread.
        self._statistics: str | None = None
        """The consumer's latest librdkafka statistics document, not yet published."""
        self._in_flight: Delivery | None = None
        self._committed: dict[int, int] = {}
        """Input partition → the offset this instance last committed on it."""
        self._last_timestamp_s: dict[int, float] = {}
        """Input partition → timestamp of the last record this instance committed on it."""
        self.lag_published: frozenset[int] = frozenset()
        """Held partitions whose lag gauges the loop publishes (the watcher leaves them alone)."""
        self.consumer = Consumer(
            {
                **consumer_config(settings.kafka, self.group, f"scorer-{settings.instance_id}"),
                "enable.auto.offset.store": False,
                "fetch.wait.max.ms": max(1, min(100, int(settings.max_queue_delay_ms))),
                "queued.max.messages.kbytes": 65536,
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": max(settings.session_timeout_ms // 5, 500),
                **({"group.instance.id": settings.transactional_id} if settings.static_membership else {}),
                # Served inside poll()/consume() on this thread; the document is stored, published by the loop.
                "statistics.interval.ms": max(100, int(settings.lag_interval_s * 1000)),
                "stats_cb": self._on_statistics,
            }
        )
        self.producer = self._new_producer()
        self.watcher = GroupWatcher(
            settings.kafka,
            self.group,
            self.input_topic,
            metrics,
            interval_s=settings.lag_interval_s,
            timeout_s=settings.kafka_timeout_s,
            member_id=self._member_id,
            held=lambda: self.held,
            published=lambda: self.lag_published,
            on_measure=self._publish_readiness,
        )

    # --- lifecycle ---------------------------------------------------------------------------------------

    def _new_producer(self) -> Producer:
        config = producer_config(
            self.settings.kafka,
            f"scorer-{self.settings.instance_id}",
            transactional_id=self.settings.transactional_id if self.exactly_once else None,
            linger_ms=2,
        )
        if self.exactly_once:
            config["transaction.timeout.ms"] = self.settings.transaction_timeout_ms
        producer = Producer(config)
        if self.exactly_once:
            # Fences any older producer with our transactional id and aborts its open transaction.
            self._retry_infra("broker", lambda: producer.init_transactions(self._timeout_s))
        return producer

    @property
    def _running(self) -> bool:
        return not self._stopping.is_set()

    def stop(self, *_: Any) -> None:
        if self._running:
            logger.info("stopping: finishing the current batch")
        self._stopping.set()

    def _beat(self) -> None:
        """The loop is turning (also while it waits, bounded, on the broker or the feature store): liveness."""
        self.last_iteration = time.monotonic()

    def _member_id(self) -> str | None:
        try:
            return self.consumer.memberid()
        except (KafkaException, RuntimeError):
            return None  # closed, or not (yet) in the group

    def state(self) -> LoopState:
        """A snapshot for the health checks (any thread)."""
        return LoopState(
            now=time.monotonic(),
            started=self.started,
            last_iteration=self.last_iteration,
            assigned=len(self.held),
            assigned_since=self.assigned_since,
            last_commit=self.last_commit,
            pending=self.watcher.pending,
            pending_since=self.watcher.pending_since,
            should_hold=self.watcher.should_hold,
            recovering=self.recovering,
            fatal=self.fatal,
        )

    def _publish_readiness(self) -> None:
        self.metrics.ready.set(1 if readiness(self.state(), self.bounds).ok else 0)

    def run(self) -> int:
        self.consumer.subscribe(
            [self.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        self.metrics.up.set(1)
        self.watcher.start()
        next_progress = time.monotonic()
        progress_from = dict(self.totals)
        progress_at = time.monotonic()
        try:
            while self._running:
                self._maybe_swap()
                try:
                    batch, opened = self._collect()
                    self._raise_deferred()
                    if self._rewind_needed:
                        # A delivery failed and was settled in a rebalance callback: drop what came after it.
                        self._rewind()
                    elif batch:
                        self._process(batch, opened)
                    elif self._pending is not None and self._pending.done():
                        self._settle()
                except KafkaException as exc:
                    error: KafkaError = exc.args[0]
                    if is_fatal(error):
                        raise FatalClientError("consumer", error) from exc
                    raise
                self._raise_deferred()
                if self._statistics is not None:
                    self._publish_lag()
                self._check_progress()
                now = time.monotonic()
                self.last_iteration = now
                if now >= next_progress:
                    elapsed = max(now - progress_at, 1e-9)
                    rate = (self.totals["records"] - progress_from["records"]) / elapsed
                    logger.info(
                        "progress records=%d scored=%d shadow=%d dead_letters=%d batches=%d rate=%.0f/s "
                        "assigned=%d pending=%s",
                        self.totals["records"],
                        self.totals["scored"],
                        self.totals["shadow"],
                        self.totals["dead_letters"],
                        self.totals["batches"],
                        rate,
                        len(self.held),
                        "?" if self.watcher.pending is None else self.watcher.pending,
                    )
                    progress_from, progress_at = dict(self.totals), now
                    next_progress = now + self.settings.progress_interval_s
        except BaseException as exc:
            code = exc.exit_code if isinstance(exc, ScorerExitError) else EXIT_CRASH
            if isinstance(exc, Exception):
                self.fatal = str(exc)[:300]
                logger.error("the scoring loop ends (exit code %d): %s", code, exc)
                if self.on_exit is not None:
                    self.on_exit(code)
            raise
        finally:
            self.metrics.up.set(0)
            self.metrics.ready.set(0)
            self.close()
        return 0

    def _on_statistics(self, document: str) -> None:
        self._statistics = document

    def _publish_lag(self) -> None:
        """The lag gauges of the held partitions from the latest statistics (see the module docstring): what is
        uncommitted is the delivery in flight and the records carried to the next batch."""
        document, self._statistics = self._statistics, None
        if document is None or self._rewind_needed:
            return
        try:
            partitions = consumer_partitions(json.loads(document), self.input_topic)
        except (ValueError, TypeError, AttributeError) as exc:
            logger.debug("unreadable consumer statistics: %s", exc)
            return
        pending: dict[int, Head] = {}
        in_flight = self._in_flight.records if self._in_flight is not None else ()
        for message in (*in_flight, *self._carry):
            partition = message.partition() or 0
            if partition not in pending and message.topic() == self.input_topic:
                kind, timestamp_ms = message.timestamp()
                pending[partition] = Head(
                    message.offset() or 0, None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp_ms
                )
        now_ms = int(time.time() * 1000)
        published: set[int] = set()
        for partition in self.held & partitions.keys():
            last = self._last_timestamp_s.get(partition)
            row = consumer_partition_lag(
                group=self.group,
                topic=self.input_topic,
                partition=partition,
                stats=partitions[partition],
                committed=self._committed.get(partition),
                pending=pending.get(partition),
                last_consumed_ms=None if last is None else int(last * 1000),
                now_ms=now_ms,
            )
            if row.lag is None or row.lag_seconds is None:
                continue  # not measurable from here yet (nothing committed, nothing consumed): the watcher's view
            labels = {"topic": self.input_topic, "partition": str(partition)}
            self.metrics.lag_offsets.labels(**labels).set(row.lag)
            self.metrics.lag_seconds.labels(**labels).set(row.lag_seconds)
            published.add(partition)
        self.lag_published = frozenset(published)

    def _raise_deferred(self) -> None:
        if self._deferred is not None:
            exc, self._deferred = self._deferred, None
            raise exc

    def _check_progress(self) -> None:
        """Exit when the loop turns without progress, or the broker has been unreachable, for too long."""
        why = stalled(self.state(), self.bounds)
        if why is not None:
            raise StalledError(why)
        failing = self.watcher.failing_for()
        if failing > self.settings.give_up_after_s:
            raise InfraGiveUpError("the broker (group coordinator)", failing, self.watcher.last_error)

    def close(self) -> None:
        """Finish (or abort) the delivery in flight, leave the group, flush: each step bounded, so a process that
        must exit does exit."""
        budget = self.settings.exit_timeout_s
        try:
            if self._pending is not None:
                try:
                    self._settle(rewind=False)  # the batch in flight commits (or aborts) before we leave the group
                except Exception as exc:  # noqa: BLE001 - leaving anyway
                    logger.warning("settling the delivery in flight: %s", exc)
        finally:
            self.watcher.stop(budget)
            if not self._committer.shutdown(budget):
                logger.error("the committer thread is still inside a broker call; leaving it behind")
            self._close_clients(budget)

    def _close_clients(self, budget: float) -> None:
        # Leaves the group; offsets are already committed with each batch. Bounded: with the coordinator gone,
        # or a consumer fenced, close() can wait long.
        bounded("closing the consumer", self.consumer.close, budget)
        bounded("flushing the producer", lambda: self.producer.flush(min(10.0, budget)), budget)

    # --- rebalancing -------------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._assigned.add((tp.topic, tp.partition))
            self._revoked.discard((tp.topic, tp.partition))
        self._held_changed()
        logger.info("assigned %s", sorted(p for _, p in ((tp.topic, tp.partition) for tp in partitions)))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The delivery in flight commits (or aborts) before the partitions go: their new owner resumes from
        # offsets that are final. Records of these partitions not yet handed over are dropped. A failed delivery
        # is rewound by the batch loop once poll() returns (not from inside the callback). The lag gauges stay:
        # they are the group's view (scorer.watcher), whoever holds the partitions.
        if self._pending is not None:
            try:
                self._settle(rewind=False)
            except ScorerExitError as exc:
                self._deferred = exc  # raised by the loop: an exception inside librdkafka's callback is awkward
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._assigned.discard(key)
            self._revoked.add(key)
            if tp.topic == self.input_topic:
                self._committed.pop(tp.partition, None)
                self._last_timestamp_s.pop(tp.partition, None)
        self._held_changed()
        self._carry = [m for m in self._carry if (m.topic(), m.partition()) not in self._revoked]
        logger.info("revoked %s", sorted(tp.partition for tp in partitions))

    def _held_changed(self) -> None:
        self.held = frozenset(p for t, p in self._assigned if t == self.input_topic)
        self.lag_published &= self.held
        self.assigned_since = time.monotonic()
        self.metrics.assigned_partitions.set(len(self.held))

    # --- batching ----------------------------------------------------------------------------------------

    def _collect(self) -> tuple[list[Message], float]:
        """Up to max_batch_size records; the batch closes max_queue_delay_ms after its first record arrived."""
        size = self.settings.max_batch_size
        delay = self.settings.max_queue_delay_ms / 1000.0
        batch: list[Message] = self._carry[:size]
        self._carry = self._carry[size:]
        opened = time.monotonic() if batch else 0.0
        self._revoked.clear()
        if not batch:
            # poll() returns as soon as one record is there; consume(n, t) would wait the whole timeout for n of
            # them (librdkafka), delaying a lone event by up to 100 ms before the batch clock even starts.
            first = self.consumer.poll(0.1)
            if first is None:
                return [], 0.0
            error = first.error()
            if error is not None:
                self._consumer_error(error)
                return [], 0.0
            batch.append(first)
            opened = time.monotonic()
        while len(batch) < size and self._running:
            remaining = opened + delay - time.monotonic()
            if remaining <= 0:
                break
            messages = self.consumer.consume(size - len(batch), remaining)
            if self._revoked:
                batch = [m for m in batch if (m.topic(), m.partition()) not in self._revoked]
                self._revoked.clear()
            for message in messages:
                error = message.error()
                if error is not None:
                    self._consumer_error(error)
                    continue
                batch.append(message)
            if not messages:
                break  # the delay passed with nothing new: close the batch
        return batch, opened

    def _consumer_error(self, error: KafkaError) -> None:
        """A fatal one (a static member fenced by another with its group.instance.id, …) ends the loop; the others
        are librdkafka telling what it recovers from by itself (a broker gone, a connection refused)."""
        if is_fatal(error):
            raise FatalClientError("consumer", error)
        if error.code() != KafkaError._PARTITION_EOF:
            logger.warning("consumer error: %s", error)

    # --- one batch ---------------------------------------------------------------------------------------

    def _process(self, batch: list[Message], opened: float) -> None:
        """Score `batch` while the previous batch's commit is in flight; once that one has succeeded, produce
        this batch's outputs and hand its commit to the committer thread."""
        delivery = self._prepare(batch, opened)
        if delivery is None:
            return  # the batch was rewound (revoked while retrying): nothing produced, nothing committed
        if not self._settle():
            return  # the previous delivery failed: everything after its committed offsets, this batch too, is rewound
        delivery.started = time.monotonic()
        try:
            if self.exactly_once:
                delivery.metadata = self.consumer.consumer_group_metadata()
                self.producer.begin_transaction()
            self._produce(delivery.outputs, delivery.failures if not self.exactly_once else None)
        except KafkaException as exc:
            delivery.error = exc.args[0]
            self._fail(delivery, rewind=True)
            return
        delivery.records = batch
        self._in_flight = delivery
        self._pending = self._committer.submit(lambda: self._commit(delivery))

    def _prepare(self, batch: list[Message], opened: float) -> Delivery | None:
        """Decode, score and build the outputs of `batch`; None when it was rewound while retrying."""
        closed = time.monotonic()
        self.metrics.batch_size.observe(len(batch))
        self.metrics.queue_latency.observe(closed - opened)
        self.metrics.events_in.inc(len(batch))
        requests: list[Request] = []
        request_messages: list[Message] = []
        letters: list[DeadLetterRecord] = []
        max_bytes = self.settings.max_message_bytes
        window = self.settings.contract.window()
        # (topic, partition, record timestamp in s) of every record, read once: end-to-end latency and lag use it.
        stamps = [m.timestamp() for m in batch]
        timestamps = [
            (m.topic() or "", m.partition() or 0, ts / 1000.0) for m, (_, ts) in zip(batch, stamps, strict=True)
        ]
        for message, (_, _, timestamp_s), (kind, ts) in zip(batch, timestamps, stamps, strict=True):
            headers = message.headers()
            try:
                tx = decode_transaction(
                    message.key(),
                    message.value(),
                    headers,
                    max_bytes=max_bytes,
                    window=window,
                    now_s=receiving_clock(ts, kind == TIMESTAMP_LOG_APPEND_TIME),
                )
            except EventError as exc:
                letters.append(self._letter(_record(message), exc.reason, exc.detail, "decode"))
                continue
            traceparent = header_value(headers, Header.TRACEPARENT) if headers else None
            text = traceparent.decode("ascii", "replace") if traceparent else None
            requests.append(Request(tx, timestamp_s, text if text and is_traceparent(text) else None))
            request_messages.append(message)

        result = self._score(requests, batch)
        if result is None:
            return None
        self.metrics.feature_latency.observe(result.feature_seconds)
        self.metrics.inference_latency.observe(result.inference_seconds)

        outputs: list[Output] = []
        scored = shadow = 0
        for item in result.scored:
            score = item.score
            outputs.append(
                Output(
                    self.shadow_topic if item.shadow else self.scores_topic,
                    score.account_id.encode(),
                    score.to_json(),
                    headers_for(score, requests[item.index].traceparent, model_version=score.model_version),
                )
            )
            if item.shadow:
                shadow += 1
            else:
                scored += 1
        for index, why in result.failed:
            letters.append(
                self._letter(_record(request_messages[index]), DeadLetterReason.INFERENCE_FAILED, why, "inference")
            )
        for letter in letters:
            outputs.append(Output(self.dlq_topic, letter.key, letter.value, letter.headers, letter.timestamp_ms))
        return Delivery(
            outputs=outputs,
            offsets=self._next_offsets(batch),
            timestamps=timestamps,
            scored=scored,
            shadow=shadow,
            outcomes=Counter(
                (
                    item.score.variant,
                    "shadow" if item.shadow else "live",
                    item.score.model_version,
                    item.score.decision,
                    item.score.feature_status,
                )
                for item in result.scored
            ),
            reasons=Counter(letter.reason.value for letter in letters),
            shadow_failures=result.shadow_failures,
        )

    # --- delivery (the committer thread) -----------------------------------------------------------------

    @contextmanager
    def _client_call(self) -> Iterator[None]:
        """Marks one broker call of the committer thread, so `_wait` can tell one that outlives its own timeout."""
        self._call_since = time.monotonic()
        try:
            yield
        finally:
            self._call_since = None

    def _commit(self, delivery: Delivery) -> Delivery:
        """On the committer thread (the calls wait on the broker with the GIL released): commit the produced
        outputs with the offsets. Never raises — the outcome is on the delivery, for `_settle`."""
        try:
            if self.exactly_once:
                with self._client_call():
                    self.producer.send_offsets_to_transaction(delivery.offsets, delivery.metadata, self._timeout_s)
                self._commit_transaction()
            else:
                with self._client_call():
                    remaining = self.producer.flush(self._timeout_s)
                if delivery.failures or remaining:
                    delivery.error = f"{delivery.failures[:1]}, {remaining} undelivered"
                    return delivery
                # The offsets are committed by the batch loop (`_settle`): a synchronous commit from this thread
                # while the loop sits in poll() did not return (reproduced: test_at_least_once, 2 runs of 5).
                return delivery
            delivery.committed_at = time.time()
        except KafkaException as exc:
            delivery.error = exc.args[0]
        except Exception as exc:  # noqa: BLE001 - re-raised on the batch loop's thread by _settle
            delivery.crash = exc
        finally:
            delivery.finished = time.monotonic()
        return delivery

    def _settle(self, *, rewind: bool = True) -> bool:
        """Wait for the delivery in flight, if any, and account for it. False when it failed: its transaction is
        aborted (or the producer rebuilt) and — now, or by the batch loop when `rewind` is False — every
        assigned partition is rewound to its committed offsets, dropping whatever was consumed after them."""
        future, self._pending = self._pending, None
        self._in_flight = None
        if future is None:
            return True
        delivery = self._wait(future)
        if delivery.crash is not None:
            raise delivery.crash
        if delivery.error is None and not self.exactly_once:
            # At-least-once: the outputs are flushed; now the offsets, on the consumer's own thread.
            offsets = delivery.offsets
            try:
                self._retry_infra("broker", lambda: self.consumer.commit(offsets=offsets, asynchronous=False))
                delivery.committed_at = time.time()
            except KafkaException as exc:
                delivery.error = exc.args[0]
        if delivery.error is None:
            self._account(delivery)
            return True
        self._fail(delivery, rewind=rewind)
        return False

    def _wait(self, future: Future[Delivery]) -> Delivery:
        """The committer's outcome, waiting at most as long as its own calls may take (each bounded by
        SCORER_KAFKA_TIMEOUT_S, retriable commit errors by SCORER_GIVE_UP_AFTER_S) plus a margin: a committer
        that has not returned by then is stuck inside the client, and only a new process gets out of that."""
        limit = self.settings.give_up_after_s + 4 * self._timeout_s
        deadline = time.monotonic() + limit
        while True:
            try:
                return future.result(timeout=min(1.0, max(deadline - time.monotonic(), 0.0)))
            except FutureTimeoutError:
                if time.monotonic() >= deadline:
                    raise StalledError(
                        f"the committer thread has not returned from the broker in {limit:.0f} s"
                    ) from None
                # One call past its own timeout is stuck inside librdkafka: measured, send_offsets_to_transaction
                # with a 30 s timeout did not return for minutes after a broker SIGKILL + restart (fault campaign).
                since = self._call_since
                if since is not None and time.monotonic() - since > self._timeout_s + CALL_MARGIN_S:
                    raise StalledError(
                        f"a broker call of the committer thread has not returned in "
                        f"{time.monotonic() - since:.0f} s, past its own {self._timeout_s:.0f} s timeout"
                    ) from None
                self._beat()  # waiting, bounded: the loop is not stuck (yet)

    def _fail(self, delivery: Delivery, *, rewind: bool) -> None:
        """A delivery failed: abort its transaction (or rebuild the producer) and rewind — now, or by the batch
        loop when `rewind` is False (inside a rebalance callback)."""
        error = delivery.error
        if isinstance(error, KafkaError) and is_fatal(error):
            # Fenced by a newer producer with our transactional id (a duplicate instance, or our own restart) or
            # otherwise unusable: rebuilding would fence the newer one in turn. The transaction is aborted by
            # whoever fenced us, or by the broker after transaction.timeout.ms.
            self.metrics.aborts.labels(cause="fatal").inc()
            raise FatalClientError("producer", error)
        if isinstance(error, KafkaError) and self.exactly_once:
            logger.warning("transaction failed (%s): aborting and rewinding", error)
            self.metrics.aborts.labels(cause="abortable" if error.txn_requires_abort() else "error").inc()
            self._abort()
        else:
            logger.warning("delivery failed (%s): rewinding", error)
            self.metrics.aborts.labels(cause="delivery").inc()
        self._rewind_needed = True
        if rewind:
            self._rewind()

    def _account(self, delivery: Delivery) -> None:
        self.metrics.commit_latency.observe(delivery.finished - delivery.started)
        self.metrics.batches.inc()
        now_s = delivery.committed_at
        observe = self.metrics.end_to_end_latency.observe
        last = self._last_timestamp_s  # the consumer reads the input topic only: a partition number is enough
        for _, partition, timestamp_s in delivery.timestamps:
            observe(max(now_s - timestamp_s, 0.0))
            last[partition] = timestamp_s
        for tp in delivery.offsets:
            self._committed[tp.partition] = tp.offset
        self.last_commit = delivery.finished
        self.metrics.last_commit.set(now_s)
        self.recovering = None
        self.metrics.count_scores(delivery.outcomes)
        for reason, count in delivery.reasons.items():
            self.metrics.dead_letters.labels(reason=reason).inc(count)
        self.metrics.shadow_failures.inc(delivery.shadow_failures)
        self.totals["records"] += len(delivery.timestamps)
        self.totals["scored"] += delivery.scored
        self.totals["shadow"] += delivery.shadow
        self.totals["dead_letters"] += sum(delivery.reasons.values())
        self.totals["batches"] += 1

    def _letter(self, record: SourceRecord, reason: str, message: str, stage: str) -> DeadLetterRecord:
        return dead_letter(
            record,
            DeadLetterReason(reason),
            message,
            stage=stage,  # type: ignore[arg-type]
            consumer_group=self.group,
        )

    def _score(self, requests: list[Request], batch: list[Message]) -> BatchResult | None:
        """The engine's result; while the feature store is down, back off with the partitions paused (polling
        keeps us in the group). None when a rebalance took the batch's partitions meanwhile."""
        backoff = Backoff(self.settings.retry_initial_ms / 1000.0, self.settings.retry_max_ms / 1000.0)
        paused: list[TopicPartition] = []
        try:
            while True:
                try:
                    return self.engine.score(requests)
                except FeatureStoreUnavailableError as exc:
                    self.recovering = "feature store unavailable, retrying the batch"
                    self.metrics.infra_retries.labels(dependency="feature_store").inc()
                    if backoff.failing_for() > self.settings.give_up_after_s:
                        raise InfraGiveUpError("the feature store", backoff.failing_for(), str(exc)) from exc
                    delay = backoff.next_delay()
                    logger.warning("feature store unavailable (%s); retrying the batch in %.2fs", exc, delay)
                    if not paused:
                        paused = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
                        if paused:
                            self.consumer.pause(paused)
                    self._idle_poll(delay)
                    if not self._running:
                        self._rewind()
                        return None
                    if self._revoked & {(m.topic(), m.partition()) for m in batch}:
                        # Simplest correct answer: give up this batch; owned partitions are rewound and
                        # re-consumed, revoked ones belong to someone else now.
                        self._rewind()
                        return None
        finally:
            if self.recovering and self.recovering.startswith("feature store"):
                self.recovering = None
            if paused:
                try:
                    self.consumer.resume([tp for tp in paused if (tp.topic, tp.partition) in self._assigned])
                except KafkaException as exc:
                    logger.warning("resume: %s", exc)

    def _idle_poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._running:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._beat()
            message = self.consumer.poll(min(remaining, 0.2))
            if message is None:
                continue
            error = message.error()
            if error is not None:
                self._consumer_error(error)
            else:
                # Fetched before the pause took effect: keep it, in order, for the next batch.
                self._carry.append(message)

    @staticmethod
    def _next_offsets(batch: Sequence[Message]) -> list[TopicPartition]:
        highest: dict[tuple[str, int], int] = {}
        for m in batch:
            key = (m.topic() or "", m.partition() or 0)
            highest[key] = max(highest.get(key, -1), m.offset() or 0)
        return [TopicPartition(t, p, o + 1) for (t, p), o in highest.items()]

    def _produce(self, outputs: Sequence[Output], failures: list[str] | None = None) -> None:
        """Hand the outputs to the producer; with `failures`, delivery errors are collected there."""

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None and failures is not None:
                failures.append(str(err))

        callback = on_delivery if failures is not None else None
        produce = self.producer.produce
        for out in outputs:
            while True:
                try:
                    # timestamp 0 = now (scores); dead letters keep the original record's timestamp.
                    produce(
                        out.topic,
                        out.value,
                        out.key,
                        headers=out.headers,
                        timestamp=out.timestamp_ms or 0,
                        on_delivery=callback,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)  # local queue full: let deliveries drain
        self.producer.poll(0)

    def _commit_transaction(self) -> None:
        backoff = Backoff(0.1, 2.0)
        while True:
            try:
                with self._client_call():
                    self.producer.commit_transaction(self._timeout_s)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.retriable() and not error.txn_requires_abort() and not error.fatal():
                    if backoff.failing_for() > self.settings.give_up_after_s:
                        raise InfraGiveUpError("the broker", backoff.failing_for(), str(error)) from exc
                    self.metrics.infra_retries.labels(dependency="broker").inc()
                    time.sleep(backoff.next_delay())
                    continue
                raise

    def _abort(self) -> None:
        try:
            self.producer.abort_transaction(self._timeout_s)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if is_fatal(error):
                raise FatalClientError("producer", error) from exc
            # E.g. timed out with the broker gone: a new producer's init_transactions (same transactional id)
            # aborts the open transaction once the coordinator answers, and fences this one.
            logger.error("abort failed (%s): rebuilding the producer", error)
            self.metrics.producer_rebuilds.inc()
            self._rebuild_producer()

    def _rebuild_producer(self) -> None:
        try:
            self.producer.purge()
            self.producer.flush(0)
        except (KafkaException, RuntimeError):
            pass
        self.producer = self._new_producer()

    def _rewind(self) -> None:
        """Seek every assigned partition back to its committed offsets (after the delivery in flight, if any,
        has settled), dropping what was consumed after them."""
        if self._pending is not None:
            self._settle(rewind=False)
        self._rewind_needed = False
        self._carry = []
        self._statistics = None  # its positions are from before the seek
        if not self._assigned:
            return
        tps = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        self.recovering = "rewinding to the committed offsets"
        committed = self._retry_infra("broker", lambda: self.consumer.committed(tps, timeout=self._timeout_s))
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            try:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                logger.warning(
                    "seek topic=%s partition=%d offset=%s: %s",
                    tp.topic,
                    tp.partition,
                    offset,
                    exc,
                    extra=kafka_context(tp.topic, tp.partition, offset),
                )
        self.recovering = None
        logger.info("rewound %d partition(s) to their committed offsets", len(tps))

    def _retry_infra(self, what: str, call: Callable[[], Any], *, beat: bool = True) -> Any:
        """`call()` retried with backoff while it fails retriably, for at most SCORER_GIVE_UP_AFTER_S; a fatal error
        raises FatalClientError. `beat`: the loop's own thread (liveness) — not the committer's."""
        backoff = Backoff(self.settings.retry_initial_ms / 1000.0, self.settings.retry_max_ms / 1000.0)
        previous = self.recovering
        try:
            while True:
                try:
                    return call()
                except KafkaException as exc:
                    error: KafkaError = exc.args[0]
                    if is_fatal(error):
                        raise FatalClientError(what, error) from exc
                    if not (error.retriable() or error.code() in _TRANSIENT):
                        raise
                    if backoff.failing_for() > self.settings.give_up_after_s:
                        raise InfraGiveUpError(what, backoff.failing_for(), str(error)) from exc
                    self.recovering = f"{what} unavailable ({error.name()}), retrying"
                    self.metrics.infra_retries.labels(dependency=what).inc()
                    logger.warning("%s unavailable (%s); retrying", what, error)
                    deadline = time.monotonic() + backoff.next_delay()
                    while (left := deadline - time.monotonic()) > 0:
                        if beat:
                            self._beat()
                        time.sleep(min(left, 1.0))
        finally:
            if self.recovering != previous:
                self.recovering = previous

    # --- hot reload and lag ------------------------------------------------------------------------------

    def _maybe_swap(self) -> None:
        if self.reloader is None:
            return
        serving = self.reloader.take()
        if serving is None:
            return
        before = self.engine.serving.versions()
        self.engine.serving = serving
        for name, version in serving.versions().items():
            if before.get(name) != version:
                self.metrics.model_swaps.labels(variant=name).inc()
        if self.on_swap is not None:
            self.on_swap()
        logger.info("models swapped between batches: %s -> %s", before, serving.versions())


_TRANSIENT = {
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
}
