"""The Kafka transport of the scoring engine: consume a micro-batch → decode (defects → dead letters) → engine →
produce scores, shadow scores and dead letters → commit, exactly once.

Exactly-once (the default): every batch is one Kafka transaction holding its scores, shadow scores, dead
letters *and* the consumed offsets (`send_offsets_to_transaction` with the consumer's group metadata, so a
zombie of an older generation is fenced). Downstream reads `read_committed`. On an abortable error the
transaction is aborted and the consumer rewound to the committed offsets; on a fatal one (fenced, invalid
epoch) the producer is rebuilt with the same transactional id and the consumer rewound. No transaction is
ever open while the consumer polls: a batch is collected first, then scored, then committed, so a rebalance
(cooperative-sticky, served inside `poll`) can only drop not-yet-scored records of revoked partitions —
nothing is produced for them, and their new owner starts from the committed offsets.

At-least-once (`SCORER_DELIVERY=at_least_once`): outputs go through an idempotent, non-transactional
producer, are flushed, then the offsets are committed. A crash between flush and commit re-scores the batch
(duplicates downstream); in exchange no transaction markers and no transactional coordinator round trips.

Infrastructure failures (Redis, the broker) are retried with exponential backoff while the partitions are
paused and the consumer keeps polling, so it stays in its group; they are never dead-lettered. After
`give_up_after_s` without success the process exits non-zero so its supervisor restarts it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
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
from scorer.metrics import ScorerMetrics
from scorer.serving import Reloader
from scorer.settings import ScorerSettings
from streamscore.contracts import (
    DeadLetterReason,
    Header,
    decode_transaction,
    header_value,
    headers_for,
    is_traceparent,
)
from streamscore.errors import EventError, StreamscoreError
from streamscore.kafka import consumer_config, producer_config

logger = logging.getLogger(__name__)


class InfraGiveUpError(StreamscoreError):
    """Infrastructure stayed unavailable longer than `SCORER_GIVE_UP_AFTER_S`."""

    retryable = True

    def __init__(self, what: str, seconds: float, last: str) -> None:
        super().__init__(f"{what} unavailable for {seconds:.0f} s (last error: {last}); exiting for a restart")


@dataclass(slots=True)
class Output:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]
    timestamp_ms: int | None = None


@dataclass(slots=True)
class BatchOutcome:
    records: int
    scored: int
    shadow: int
    dead_letters: int


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
    """The scoring loop over Kafka. `run()` blocks until `stop()` (SIGTERM/SIGINT) and returns an exit code."""

    def __init__(
        self,
        settings: ScorerSettings,
        engine: ScoringEngine,
        metrics: ScorerMetrics,
        *,
        reloader: Reloader | None = None,
        on_swap: Callable[[], None] | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.reloader = reloader
        self.on_swap = on_swap
        registry = settings.topics.registry()
        self.input_topic = registry.transactions.name
        self.scores_topic = registry.scores.name
        self.shadow_topic = registry.scores_shadow.name
        self.dlq_topic = registry.dlq.name
        self.group = settings.group
        self.exactly_once = settings.delivery == "exactly_once"
        self._stopping = stopping or threading.Event()
        self._assigned: set[tuple[str, int]] = set()
        self._revoked: set[tuple[str, int]] = set()
        self._carry: list[Message] = []
        self._last_ts: dict[tuple[str, int], float] = {}
        self._lag_labels: set[tuple[str, int]] = set()
        self.last_iteration = time.monotonic()
        self.totals = {"records": 0, "scored": 0, "shadow": 0, "dead_letters": 0, "batches": 0}
        self.consumer = Consumer(
            {
                **consumer_config(settings.kafka, self.group, f"scorer-{settings.instance_id}"),
                "enable.auto.offset.store": False,
                "fetch.wait.max.ms": max(1, min(100, int(settings.max_queue_delay_ms))),
                "queued.max.messages.kbytes": 65536,
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": max(settings.session_timeout_ms // 5, 500),
                **({"group.instance.id": settings.transactional_id} if settings.static_membership else {}),
            }
        )
        self.producer = self._new_producer()

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
            self._retry_infra("broker", lambda: producer.init_transactions(30.0))
        return producer

    @property
    def _running(self) -> bool:
        return not self._stopping.is_set()

    def stop(self, *_: Any) -> None:
        if self._running:
            logger.info("stopping: finishing the current batch")
        self._stopping.set()

    def run(self) -> int:
        self.consumer.subscribe(
            [self.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        self.metrics.up.set(1)
        next_lag = next_progress = time.monotonic()
        progress_from = dict(self.totals)
        progress_at = time.monotonic()
        try:
            while self._running:
                self._maybe_swap()
                batch, opened = self._collect()
                if batch:
                    self._process(batch, opened)
                now = time.monotonic()
                self.last_iteration = now
                if now >= next_lag:
                    self._measure_lag()
                    next_lag = now + self.settings.lag_interval_s
                if now >= next_progress:
                    elapsed = max(now - progress_at, 1e-9)
                    rate = (self.totals["records"] - progress_from["records"]) / elapsed
                    logger.info(
                        "progress records=%d scored=%d shadow=%d dead_letters=%d batches=%d rate=%.0f/s",
                        self.totals["records"],
                        self.totals["scored"],
                        self.totals["shadow"],
                        self.totals["dead_letters"],
                        self.totals["batches"],
                        rate,
                    )
                    progress_from, progress_at = dict(self.totals), now
                    next_progress = now + self.settings.progress_interval_s
        finally:
            self.metrics.up.set(0)
            self.close()
        return 0

    def close(self) -> None:
        try:
            self.consumer.close()  # leaves the group; offsets are already committed with each batch
        except (KafkaException, RuntimeError) as exc:
            logger.warning("closing the consumer: %s", exc)
        try:
            self.producer.flush(10.0)
        except (KafkaException, RuntimeError) as exc:
            logger.warning("flushing the producer: %s", exc)

    # --- rebalancing -------------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._assigned.add((tp.topic, tp.partition))
            self._revoked.discard((tp.topic, tp.partition))
        logger.info("assigned %s", sorted(p for _, p in ((tp.topic, tp.partition) for tp in partitions)))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # No transaction is open while we poll; records of these partitions not yet scored are dropped, and
        # the partitions' new owner resumes from their committed offsets.
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._assigned.discard(key)
            self._revoked.add(key)
            self._last_ts.pop(key, None)
            if key in self._lag_labels:
                self._lag_labels.discard(key)
                self.metrics.lag_offsets.remove(tp.topic, str(tp.partition))
                self.metrics.lag_seconds.remove(tp.topic, str(tp.partition))
        self._carry = [m for m in self._carry if (m.topic(), m.partition()) not in self._revoked]
        logger.info("revoked %s", sorted(tp.partition for tp in partitions))

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
                if error.code() != KafkaError._PARTITION_EOF:
                    logger.warning("consumer error: %s", error)
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
                    if error.code() != KafkaError._PARTITION_EOF:
                        logger.warning("consumer error: %s", error)
                    continue
                batch.append(message)
            if not messages:
                break  # the delay passed with nothing new: close the batch
        return batch, opened

    # --- one batch ---------------------------------------------------------------------------------------

    def _process(self, batch: list[Message], opened: float) -> None:
        closed = time.monotonic()
        self.metrics.batch_size.observe(len(batch))
        self.metrics.queue_latency.observe(closed - opened)
        self.metrics.events_in.inc(len(batch))
        records = [_record(m) for m in batch]
        requests: list[Request] = []
        request_records: list[SourceRecord] = []
        letters: list[DeadLetterRecord] = []
        for record in records:
            try:
                tx = decode_transaction(
                    record.key, record.value, record.headers, max_bytes=self.settings.max_message_bytes
                )
            except EventError as exc:
                letters.append(self._letter(record, exc.reason, exc.detail, "decode"))
                continue
            traceparent = header_value(record.headers, Header.TRACEPARENT)
            text = traceparent.decode("ascii", "replace") if traceparent else None
            requests.append(Request(tx, record.timestamp_ms / 1000.0, text if text and is_traceparent(text) else None))
            request_records.append(record)

        result = self._score(requests, batch)
        if result is None:
            return  # the batch was rewound (revoked while retrying): nothing produced, nothing committed
        self.metrics.feature_latency.observe(result.feature_seconds)
        self.metrics.inference_latency.observe(result.inference_seconds)

        outputs: list[Output] = []
        scored = shadow = 0
        for item in result.scored:
            request = requests[item.index]
            value = item.score.to_json()
            outputs.append(
                Output(
                    self.shadow_topic if item.shadow else self.scores_topic,
                    item.score.account_id.encode(),
                    value,
                    headers_for(item.score, request.traceparent, model_version=item.score.model_version),
                )
            )
            if item.shadow:
                shadow += 1
            else:
                scored += 1
        for index, why in result.failed:
            letters.append(self._letter(request_records[index], DeadLetterReason.INFERENCE_FAILED, why, "inference"))
        for letter in letters:
            outputs.append(Output(self.dlq_topic, letter.key, letter.value, letter.headers, letter.timestamp_ms))

        offsets = self._next_offsets(batch)
        started = time.monotonic()
        if not self._commit(outputs, offsets, batch):
            return
        committed = time.monotonic()
        self.metrics.commit_latency.observe(committed - started)
        self.metrics.batches.inc()
        now_s = time.time()
        for record in records:
            self.metrics.end_to_end_latency.observe(max(now_s - record.timestamp_ms / 1000.0, 0.0))
            self._last_ts[(record.topic, record.partition)] = record.timestamp_ms / 1000.0
        # One counter update per (label set, batch), not per record: labels() costs a lock and a dict lookup.
        for (variant, kind), count in Counter(
            (item.score.variant, "shadow" if item.shadow else "live") for item in result.scored
        ).items():
            self.metrics.scored.labels(variant=variant, kind=kind).inc(count)
        for reason, count in Counter(letter.reason.value for letter in letters).items():
            self.metrics.dead_letters.labels(reason=reason).inc(count)
        self.metrics.shadow_failures.inc(result.shadow_failures)
        self.totals["records"] += len(batch)
        self.totals["scored"] += scored
        self.totals["shadow"] += shadow
        self.totals["dead_letters"] += len(letters)
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
                        self._rewind(batch)
                        return None
                    if self._revoked & {(m.topic(), m.partition()) for m in batch}:
                        # Simplest correct answer: give up this batch; owned partitions are rewound and
                        # re-consumed, revoked ones belong to someone else now.
                        self._rewind(batch)
                        return None
        finally:
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
            message = self.consumer.poll(min(remaining, 0.2))
            if message is not None and message.error() is None:
                # Fetched before the pause took effect: keep it, in order, for the next batch.
                self._carry.append(message)

    @staticmethod
    def _next_offsets(batch: Sequence[Message]) -> list[TopicPartition]:
        highest: dict[tuple[str, int], int] = {}
        for m in batch:
            key = (m.topic() or "", m.partition() or 0)
            highest[key] = max(highest.get(key, -1), m.offset() or 0)
        return [TopicPartition(t, p, o + 1) for (t, p), o in highest.items()]

    def _produce(self, outputs: Sequence[Output]) -> None:
        for out in outputs:
            while True:
                try:
                    # timestamp 0 = now (scores); dead letters keep the original record's timestamp.
                    self.producer.produce(
                        out.topic, out.value, out.key, headers=out.headers, timestamp=out.timestamp_ms or 0
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)  # local queue full: let deliveries drain
        self.producer.poll(0)

    def _commit(self, outputs: Sequence[Output], offsets: list[TopicPartition], batch: list[Message]) -> bool:
        """Produce the outputs and commit them with the offsets. False when the batch was rewound instead."""
        if not self.exactly_once:
            return self._commit_at_least_once(outputs, offsets, batch)
        try:
            self.producer.begin_transaction()
            self._produce(outputs)
            self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30.0)
            self._commit_transaction()
            return True
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal():
                logger.error("fatal producer error (%s): rebuilding the producer and rewinding", error)
                self.metrics.aborts.labels(cause="fatal").inc()
                self.metrics.producer_rebuilds.inc()
                self._rebuild_producer()
            else:
                logger.warning("transaction failed (%s): aborting and rewinding", error)
                self.metrics.aborts.labels(cause="abortable" if error.txn_requires_abort() else "error").inc()
                self._abort()
            self._rewind(batch)
            return False

    def _commit_transaction(self) -> None:
        backoff = Backoff(0.1, 2.0)
        while True:
            try:
                self.producer.commit_transaction(30.0)
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
            self.producer.abort_transaction(30.0)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
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

    def _commit_at_least_once(
        self, outputs: Sequence[Output], offsets: list[TopicPartition], batch: list[Message]
    ) -> bool:
        failures: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(str(err))

        for out in outputs:
            while True:
                try:
                    self.producer.produce(
                        out.topic,
                        out.value,
                        out.key,
                        headers=out.headers,
                        on_delivery=on_delivery,
                        timestamp=out.timestamp_ms or 0,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)
        remaining = self.producer.flush(60.0)
        if failures or remaining:
            logger.warning("delivery failed (%s, %d undelivered): rewinding", failures[:1], remaining)
            self.metrics.aborts.labels(cause="delivery").inc()
            self._rewind(batch)
            return False
        self._retry_infra("broker", lambda: self.consumer.commit(offsets=offsets, asynchronous=False))
        return True

    def _rewind(self, batch: Sequence[Message]) -> None:
        """Seek the batch's (still assigned) partitions back to their committed offsets."""
        partitions = {(m.topic() or "", m.partition() or 0) for m in batch} | {
            (m.topic() or "", m.partition() or 0) for m in self._carry
        }
        partitions &= self._assigned
        self._carry = []
        if not partitions:
            return
        tps = [TopicPartition(t, p) for t, p in sorted(partitions)]
        committed = self._retry_infra("broker", lambda: self.consumer.committed(tps, timeout=10.0))
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            try:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                logger.warning("seek %s[%d] to %s: %s", tp.topic, tp.partition, offset, exc)
        logger.info("rewound %d partition(s) to their committed offsets", len(tps))

    def _retry_infra(self, what: str, call: Callable[[], Any]) -> Any:
        backoff = Backoff(self.settings.retry_initial_ms / 1000.0, self.settings.retry_max_ms / 1000.0)
        while True:
            try:
                return call()
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal() or not (error.retriable() or error.code() in _TRANSIENT):
                    raise
                if backoff.failing_for() > self.settings.give_up_after_s:
                    raise InfraGiveUpError(what, backoff.failing_for(), str(error)) from exc
                self.metrics.infra_retries.labels(dependency=what).inc()
                time.sleep(backoff.next_delay())

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

    def _measure_lag(self) -> None:
        if not self._assigned:
            return
        tps = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        try:
            positions = self.consumer.position(tps)
        except KafkaException:
            return
        now = time.time()
        for tp in positions:
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=1.0)
            except KafkaException:
                continue
            if tp.offset == OFFSET_INVALID or tp.offset < 0:
                continue
            # With transactional producers upstream the high watermark counts commit markers too: a
            # caught-up consumer can sit one offset below it.
            lag = max(high - tp.offset, 0)
            last = self._last_ts.get((tp.topic, tp.partition))
            seconds = 0.0 if lag <= 1 or last is None else max(now - last, 0.0)
            self._lag_labels.add((tp.topic, tp.partition))
            self.metrics.lag_offsets.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
            self.metrics.lag_seconds.labels(topic=tp.topic, partition=str(tp.partition)).set(
                seconds if math.isfinite(seconds) else 0.0
            )


_TRANSIENT = {
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
}
