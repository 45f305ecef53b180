"""Dead letters: the original record byte for byte plus reason headers (see docs/contracts.md).

Only defects of the event itself are dead-lettered. Infrastructure faults (Redis, the broker) are
retried by the scorer and never end up here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from streamscore import __version__
from streamscore.contracts import DeadLetter, DeadLetterReason, DeadLetterStage, Headers, HeadersIn

MAX_DEAD_LETTER_VALUE = 64 * 1024
"""Values larger than this are truncated in the dead letter; size and SHA-256 identify the original."""


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """What the scorer knows of a consumed record (decoupled from confluent_kafka.Message for tests)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: HeadersIn | None


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
