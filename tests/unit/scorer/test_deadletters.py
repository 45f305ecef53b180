"""A dead letter keeps the original record and explains it."""

from __future__ import annotations

import hashlib

from scorer.deadletters import SourceRecord, dead_letter
from streamscore.contracts import DeadLetter, DeadLetterReason, header_value


def record(value: bytes) -> SourceRecord:
    return SourceRecord(
        topic="transactions",
        partition=4,
        offset=1234,
        timestamp_ms=1_790_000_000_123,
        key=b"acc-1",
        value=value,
        headers=[
            ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("x-custom", b"\x00\x01"),
        ],
    )


def test_original_bytes_headers_and_timestamp_are_kept() -> None:
    source = record(b"\xff not json")
    out = dead_letter(source, DeadLetterReason.NOT_UTF8, "bad byte", stage="decode", consumer_group="scorer")
    assert (out.key, out.value, out.timestamp_ms) == (source.key, source.value, source.timestamp_ms)
    assert header_value(out.headers, "x-custom") == b"\x00\x01"
    assert header_value(out.headers, "traceparent") is not None
    letter = DeadLetter.from_headers(out.headers)
    assert letter.error_class == DeadLetterReason.NOT_UTF8
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == ("transactions", 4, 1234)
    assert letter.original_timestamp_ms == source.timestamp_ms
    assert letter.consumer_group == "scorer" and letter.stage == "decode"
    assert not letter.truncated
    assert letter.payload_sha256 == hashlib.sha256(source.value or b"").hexdigest()


def test_oversize_payload_is_truncated_with_size_and_digest() -> None:
    big = b"{" + b"x" * 200_000 + b"}"
    out = dead_letter(record(big), DeadLetterReason.OVERSIZE, "too big", stage="decode", consumer_group="g")
    letter = DeadLetter.from_headers(out.headers)
    assert out.value == big[: 64 * 1024]
    assert letter.truncated and letter.payload_size == len(big)
    assert letter.payload_sha256 == hashlib.sha256(big).hexdigest()


def test_a_replayed_dead_letter_gets_fresh_reason_headers() -> None:
    first = dead_letter(record(b"{}"), DeadLetterReason.SCHEMA_INVALID, "one", stage="decode", consumer_group="g")
    again = SourceRecord("transactions", 1, 9, 5, b"acc-1", b"{}", first.headers)
    second = dead_letter(again, DeadLetterReason.NOT_JSON, "two", stage="decode", consumer_group="g")
    assert sum(name == "dlq-error-class" for name, _ in second.headers) == 1
    assert DeadLetter.from_headers(second.headers).error_message == "two"
