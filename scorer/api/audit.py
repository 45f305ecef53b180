"""The API's audit trail: every prediction written to `scores` / `scores.shadow` (source=api), at least once.

It must never fail or slow an answer, never wedge, and never stop silently:

- `send` only hands records to librdkafka's queue (no wait); a full queue or a refused record counts as an audit
  failure (`streamscore_api_audit_failures_total`), and the answer goes out regardless.
- A poller thread serves the delivery reports every `POLL_S` whether requests come or not, so failures are counted
  when they happen, not at the next request. A record not delivered within `API_AUDIT_TIMEOUT_S` fails
  (librdkafka's `message.timeout.ms`) and is counted: a broker that is gone cannot pile records up forever.
- A fatal producer error (librdkafka's idempotence state lost, e.g. after a broker restart) leaves that producer
  unusable: the poller replaces it with a new one (the queued records are counted as failures).
- `health()` says what readiness reports: ok, or why not (replacing a fenced producer, deliveries failing,
  records waiting longer than the timeout).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from scorer.api.metrics import ApiMetrics
from scorer.engine import Request, Scored
from streamscore.contracts import headers_for
from streamscore.kafka import producer_config
from streamscore.settings import KafkaSettings

logger = logging.getLogger(__name__)

POLL_S = 0.2


class AuditProducer:
    def __init__(
        self,
        kafka: KafkaSettings,
        topics: tuple[str, str],
        metrics: ApiMetrics,
        *,
        timeout_s: float,
        factory: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        """(live scores topic, shadow scores topic)."""
        self.metrics = metrics
        self.timeout_s = timeout_s
        self._factory = factory
        self.fatal: str | None = None
        """Set by the client's error callback; the poller replaces the producer."""
        self.last_success: float | None = None
        self.last_failure: float | None = None
        self.last_error = ""
        self.waiting_since: float | None = None
        """When records started to wait in the queue (None when it is empty)."""
        self.producer = self._new()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="api-audit-poll", daemon=True)

    def _new(self) -> Producer:
        config = producer_config(self.kafka, "api-audit", linger_ms=20)
        config["message.timeout.ms"] = int(self.timeout_s * 1000)
        config["error_cb"] = self._on_error
        return self._factory(config)

    def start(self) -> AuditProducer:
        self._thread.start()
        return self

    def send(self, scored: Sequence[Scored], requests: Sequence[Request]) -> None:
        """Queue each score for its topic; never raises, never waits."""
        producer = self.producer
        failed = 0
        for item in scored:
            try:
                producer.produce(
                    self.topics[1] if item.shadow else self.topics[0],
                    item.score.to_json(),
                    item.score.account_id.encode(),
                    headers=headers_for(
                        item.score,
                        requests[item.index].traceparent,
                        model_version=item.score.model_version,
                        source="api",
                    ),
                    on_delivery=self._on_delivery,
                )
            except KafkaException as exc:
                failed += 1
                self._failed(exc.args[0])
            except Exception as exc:  # noqa: BLE001 - BufferError (queue full) and the like: counted, never raised
                failed += 1
                self._failed(exc)
        if failed:
            self.metrics.audit_failures.inc(failed)
        if self.waiting_since is None and len(scored) > failed:
            self.waiting_since = time.monotonic()

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self.last_success = time.monotonic()
        else:
            self.metrics.audit_failures.inc()
            self._failed(err)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = f"{err.name()}: {err.str()}"
        else:
            logger.warning("audit producer: %s", err)

    def _failed(self, error: KafkaError | BaseException) -> None:
        self.last_failure = time.monotonic()
        self.last_error = str(error)[:200]
        if isinstance(error, KafkaError) and error.fatal():
            self.fatal = f"{error.name()}: {error.str()}"

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll_once(POLL_S)
            except Exception:
                logger.exception("audit poller")
                self._stop.wait(POLL_S)

    def _poll_once(self, timeout_s: float = 0.0) -> None:
        """Serve the delivery reports; replace the producer after a fatal error."""
        self.producer.poll(timeout_s)
        if len(self.producer) == 0:
            self.waiting_since = None
        if self.fatal is not None:
            self._replace()

    def _replace(self) -> None:
        old, reason = self.producer, self.fatal
        logger.error("audit producer unusable (%s): replacing it", reason)
        lost = len(old)
        try:
            old.purge()
            old.poll(0)  # purged records report failure through their delivery callbacks
        except (KafkaException, RuntimeError) as exc:
            logger.warning("purging the audit producer: %s", exc)
            self.metrics.audit_failures.inc(lost)
        self.producer = self._new()
        self.fatal = None
        self.waiting_since = None

    def health(self, now: float | None = None) -> str:
        """ "ok", or why the audit trail is not being written."""
        now = time.monotonic() if now is None else now
        if self.fatal is not None:
            return f"audit producer unusable ({self.fatal}); replacing it"
        failure = self.last_failure
        if failure is not None and (self.last_success or 0.0) < failure and now - failure < self.timeout_s:
            return f"audit deliveries failing: {self.last_error}"
        waiting = self.waiting_since
        if waiting is not None and now - max(waiting, self.last_success or waiting) > self.timeout_s:
            return f"audit records undelivered for {now - max(waiting, self.last_success or waiting):.0f} s"
        return "ok"

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the poller, then deliver what is queued, at most `timeout_s`."""
        self._stop.set()
        self._thread.join(timeout_s)
        remaining = self.producer.flush(timeout_s)
        if remaining:
            logger.warning("%d audit records undelivered at shutdown", remaining)
            self.metrics.audit_failures.inc(remaining)
