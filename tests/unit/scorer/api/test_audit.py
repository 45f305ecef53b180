"""The API's audit producer with a fake librdkafka producer: never raises into a request, counts every failure,
replaces a producer that reported a fatal error, and tells readiness the truth."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from scorer.api.audit import AuditProducer
from scorer.api.metrics import ApiMetrics
from scorer.engine import Request, Scored
from streamscore.contracts import Score, Transaction
from streamscore.settings import KafkaSettings


class FakeProducer:
    """The part of confluent_kafka.Producer the audit uses; deliveries are reported on poll() like librdkafka."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.queued: list[tuple[str, Callable[[KafkaError | None, Any], None]]] = []
        self.sent: list[str] = []
        self.refuse: BaseException | None = None
        self.outcome: KafkaError | None = None
        self.hold = False
        self.purged = False

    def produce(self, topic: str, value: bytes, key: bytes, *, headers: Any, on_delivery: Any) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.queued.append((topic, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        if self.hold:
            return 0
        served, self.queued = self.queued, []
        for topic, callback in served:
            if self.outcome is None:
                self.sent.append(topic)
            callback(self.outcome, None)
        return len(served)

    def purge(self) -> None:
        self.purged = True
        self.outcome = KafkaError(KafkaError._PURGE_QUEUE, "purged")
        self.hold = False

    def flush(self, timeout: float = 0) -> int:
        self.poll(0)
        return len(self.queued)

    def __len__(self) -> int:
        return len(self.queued)


def scored(n: int, shadow: bool = False) -> tuple[list[Scored], list[Request]]:
    tx = Transaction(
        event_id="ev-1",
        account_id="acct-1",
        merchant_id="m-1",
        merchant_category="5411",
        amount=12.5,
        currency="EUR",
        country="DE",
        channel="pos",
        event_time=datetime.now(UTC),
    )
    score = Score(
        event_id="ev-1",
        account_id="acct-1",
        score=0.1,
        decision="approve",
        model_name="m",
        model_version="1",
        variant="champion",
        experiment_id="exp-1",
        feature_status="ok",
        amount=tx.amount,
        currency=tx.currency,
        event_time=tx.event_time,
        scored_time=datetime.now(UTC),
        latency_ms=1.0,
        source="api",
    )
    return [Scored(i, score, shadow) for i in range(n)], [Request(tx, time.time(), None) for _ in range(n)]


def audit(timeout_s: float = 30.0) -> tuple[AuditProducer, list[FakeProducer], ApiMetrics]:
    made: list[FakeProducer] = []

    def factory(config: dict[str, Any]) -> Any:
        made.append(FakeProducer(config))
        return made[-1]

    metrics = ApiMetrics(CollectorRegistry())
    return (
        AuditProducer(KafkaSettings(), ("scores", "shadow"), metrics, timeout_s=timeout_s, factory=factory),
        made,
        metrics,
    )


def failures(metrics: ApiMetrics) -> float:
    return metrics.registry.get_sample_value("streamscore_api_audit_failures_total") or 0.0


def test_scores_go_to_their_topic_and_a_bounded_delivery_timeout_is_configured() -> None:
    sink, made, metrics = audit(timeout_s=12)
    sink.send(*scored(2))
    sink.send(*scored(1, shadow=True))
    sink._poll_once()
    assert made[0].sent == ["scores", "scores", "shadow"]
    assert made[0].config["message.timeout.ms"] == 12_000
    assert failures(metrics) == 0 and sink.health() == "ok"


def test_a_full_queue_or_a_refused_record_is_counted_never_raised() -> None:
    sink, made, metrics = audit()
    made[0].refuse = BufferError("Local: Queue full")
    sink.send(*scored(3))
    made[0].refuse = KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, "timed out"))
    sink.send(*scored(1))
    assert failures(metrics) == 4
    assert sink.health().startswith("audit deliveries failing")


def test_failed_deliveries_are_counted_and_readiness_recovers_with_the_next_success() -> None:
    sink, made, metrics = audit()
    made[0].outcome = KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out")
    sink.send(*scored(2))
    sink._poll_once()
    assert failures(metrics) == 2
    assert "Message timed out" in sink.health()
    made[0].outcome = None
    sink.send(*scored(1))
    sink._poll_once()
    assert sink.health() == "ok" and failures(metrics) == 2


def test_records_waiting_longer_than_the_timeout_make_it_not_ready() -> None:
    sink, made, _ = audit(timeout_s=5)
    made[0].hold = True  # the broker does not answer: nothing delivered, nothing failed yet
    sink.send(*scored(1))
    assert sink.health() == "ok"
    assert sink.health(now=time.monotonic() + 6).startswith("audit records undelivered for")
    made[0].hold = False
    sink._poll_once()
    assert sink.health(now=time.monotonic() + 6) == "ok"


def test_a_fatal_error_replaces_the_producer_and_counts_what_it_held() -> None:
    sink, made, metrics = audit()
    made[0].hold = True
    sink.send(*scored(2))
    sink._on_error(KafkaError(KafkaError._FATAL, "idempotence state lost", fatal=True))
    assert "unusable" in sink.health()
    sink._poll_once()
    assert len(made) == 2 and made[0].purged and sink.producer is made[1]  # type: ignore[comparison-overlap]
    assert failures(metrics) == 2  # the purged records, through their delivery reports
    sink.send(*scored(1))
    sink._poll_once()
    assert made[1].sent == ["scores"]
    assert sink.health() == "ok"  # a delivery succeeded after the purged ones failed


def test_the_poller_thread_serves_deliveries_without_requests_and_close_flushes() -> None:
    sink, made, metrics = audit()
    sink.start()
    sink.send(*scored(3))
    deadline = time.monotonic() + 5
    while len(made[0].sent) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert made[0].sent == ["scores"] * 3
    sink.close(1)
    assert failures(metrics) == 0
