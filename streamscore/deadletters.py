"""Dead letters: the original record byte for byte plus reason headers (see docs/contracts.md).

Shared by every consumer that dead-letters: the scorer (`transactions.dlq`), the feature processor
(`features.dlq`) and the monitor (`monitor.dlq`), so a letter means the same thing wherever it was written and
`streamscore dlq` reads them all. Only defects of the record itself are dead-lettered; infrastructure faults
(Redis, the broker, the registry) are retried by the consumer and never end up here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streamscore import __version__
from streamscore.contracts import DeadLetter, DeadLetterReason, DeadLetterStage, Headers, HeadersIn, header_value
from streamscore.errors import StreamscoreError
from streamscore.logs import kafka_context

log = logging.getLogger(__name__)

MAX_DEAD_LETTER_VALUE = 64 * 1024
"""Values larger than this are truncated in the dead letter; size and SHA-256 identify the original."""


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """What a consumer knows of a consumed record (decoupled from confluent_kafka.Message and Faust's message)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: HeadersIn | None

    @classmethod
    def of_faust(cls, message: Any) -> SourceRecord:
        """The dead-letter view of a Faust message (its timestamp is in seconds)."""
        timestamp = message.timestamp
        return cls(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            timestamp_ms=round(timestamp * 1000) if timestamp else 0,
            key=message.key,
            value=message.value,
            headers=message.headers,
        )


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int
    reason: DeadLetterReason


def dead_letter(
    record: SourceRecord,
    reason: DeadLetterReason,
    message: str,
    *,
    stage: DeadLetterStage,
    consumer_group: str,
    max_value_bytes: int = MAX_DEAD_LETTER_VALUE,
) -> DeadLetterRecord:
    """The DLQ record for `record`: same key, value (truncated only when oversize), headers and timestamp."""
    value = record.value
    truncated = value is not None and len(value) > max_value_bytes
    letter = DeadLetter.build(
        value,
        original_topic=record.topic,
        original_partition=record.partition,
        original_offset=record.offset,
        original_timestamp_ms=record.timestamp_ms,
        consumer_group=consumer_group,
        stage=stage,
        error_class=reason,
        error_message=message,
        scorer_version=__version__,
        truncated=truncated,
    )
    original = list(record.headers.items()) if isinstance(record.headers, Mapping) else list(record.headers or [])
    headers: Headers = [(name, raw) for name, raw in original if not name.startswith("dlq-")]
    headers.extend(letter.to_headers())
    return DeadLetterRecord(
        key=record.key,
        value=value[:max_value_bytes] if truncated and value is not None else value,
        headers=headers,
        timestamp_ms=record.timestamp_ms,
        reason=reason,
    )


# --- writing dead letters from a stream processor -----------------------------------------------------------------


class DeadLetterGiveUpError(StreamscoreError):
    """Dead letters could not be delivered for longer than the processor's patience (the broker is down)."""

    retryable = True

    def __init__(self, topic: str, seconds: float, last: str) -> None:
        super().__init__(f"dead letters to {topic} undeliverable for {seconds:.0f} s (last error: {last})")


SendLetters = Callable[[Sequence[DeadLetterRecord]], Awaitable[None]]
"""Delivers dead letters and returns once the broker acknowledged every one (raises otherwise)."""


def kafka_headers(headers: Headers) -> list[tuple[str, bytes | None]]:
    """Header values as bytes (aiokafka takes no str), None kept (a null header value is valid Kafka)."""
    return [(name, value.encode() if isinstance(value, str) else value) for name, value in headers]


def faust_sender(app: Any, topic: str, timeout_s: float) -> SendLetters:
    """A `SendLetters` over a Faust app's producer: the letters are buffered, then their deliveries awaited.
    The key decides the partition (the producer's murmur2, as for the scorer's letters)."""

    async def send(letters: Sequence[DeadLetterRecord]) -> None:
        futures = []
        for letter in letters:
            futures.append(
                await app.producer.send(
                    topic,
                    letter.key,
                    letter.value,
                    None,
                    letter.timestamp_ms / 1000.0 if letter.timestamp_ms > 0 else None,
                    kafka_headers(letter.headers),
                )
            )
        await asyncio.wait_for(asyncio.gather(*futures), timeout_s)

    return send


@dataclass
class DeadLetterWriter:
    """Writes a stream processor's dead letters and waits for their delivery, so the caller may acknowledge the
    records afterwards (at-least-once: a crash before the acknowledgement writes the letter again on replay).

    An undeliverable letter is infrastructure (the broker): retried with exponential backoff, and after
    `give_up_after_s` of failures `DeadLetterGiveUpError` is raised for the processor to exit non-zero."""

    send: SendLetters
    topic: str
    consumer_group: str
    give_up_after_s: float = 120.0
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0
    on_written: Callable[[DeadLetterReason, int], None] | None = None
    """Called after delivery with each reason and its count (the service's metric)."""
    clock: Callable[[], float] = time.monotonic

    def letter(
        self, record: SourceRecord, reason: DeadLetterReason, message: str, stage: DeadLetterStage
    ) -> DeadLetterRecord:
        return dead_letter(record, reason, message, stage=stage, consumer_group=self.consumer_group)

    async def write(self, letters: Sequence[DeadLetterRecord]) -> None:
        if not letters:
            return
        failures, first_failure = 0, None
        while True:
            try:
                await self.send(letters)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any delivery failure is the broker's: retried, bounded
                now = self.clock()
                first_failure = now if first_failure is None else first_failure
                if now - first_failure >= self.give_up_after_s:
                    raise DeadLetterGiveUpError(
                        self.topic, now - first_failure, f"{type(exc).__name__}: {exc}"
                    ) from exc
                delay = min(self.retry_initial_s * 2.0**failures, self.retry_max_s)
                failures += 1
                log.warning(
                    "%d dead letter(s) to %s not delivered (%s: %s); retrying in %.2f s",
                    len(letters),
                    self.topic,
                    type(exc).__name__,
                    exc,
                    delay,
                    extra=kafka_context(self.topic),
                )
                await asyncio.sleep(delay)
        for letter in letters:
            topic, partition, offset = _origin(letter)
            log.warning(
                "dead-lettered topic=%s partition=%s offset=%s to %s: %s",
                topic,
                partition,
                offset,
                self.topic,
                (header_value(letter.headers, "dlq-error-message") or b"").decode(errors="replace")[:300],
                extra={**kafka_context(topic, partition, offset), "dead_letter_topic": self.topic},
            )
        if self.on_written is not None:
            for reason, count in Counter(letter.reason for letter in letters).items():
                self.on_written(reason, count)


def _origin(letter: DeadLetterRecord) -> tuple[str | None, int | None, int | None]:
    """Where a dead letter's record was read: its `dlq-original-*` headers (None where one is missing)."""
    topic = header_value(letter.headers, "dlq-original-topic")
    partition = _number(header_value(letter.headers, "dlq-original-partition"))
    offset = _number(header_value(letter.headers, "dlq-original-offset"))
    return (None if topic is None else topic.decode(errors="replace")), partition, offset


def _number(value: bytes | None) -> int | None:
    return int(value) if value is not None and value.lstrip(b"-").isdigit() else None
