"""Deliberately defective `transactions` records for `streamscore demo`, so the dead-letter topic has something
to show. Each record has exactly one defect of a known kind, named after the `DeadLetterReason` the scorer must
give it; a `demo-defect` header carries that kind, and since the dead-letter topic keeps the original headers,
the summary can check every injected defect against the reason it was dead-lettered with."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Producer

from streamscore.contracts import CONTENT_TYPE_JSON, DeadLetterReason, Header, Headers, Transaction
from streamscore.kafka import producer_config
from streamscore.settings import KafkaSettings

DEFECT_HEADER = "demo-defect"
"""Header naming the defect the demo injected (its expected DeadLetterReason value)."""

DEFECT_KINDS: tuple[DeadLetterReason, ...] = (
    DeadLetterReason.NOT_JSON,
    DeadLetterReason.SCHEMA_INVALID,
    DeadLetterReason.NON_FINITE_NUMBER,
    DeadLetterReason.MISSING_KEY,
    DeadLetterReason.INVALID_CODE,
    DeadLetterReason.OUT_OF_RANGE,
    DeadLetterReason.UNKNOWN_SCHEMA_VERSION,
    DeadLetterReason.EVENT_TIME_OUT_OF_WINDOW,
)
"""What the demo injects, in turn: truncated JSON, a missing field, a NaN amount, no key, an unknown currency,
a negative amount, schema version 99, an event dated 2100."""


@dataclass(frozen=True)
class DefectiveRecord:
    kind: DeadLetterReason
    key: bytes | None
    value: bytes
    headers: Headers = field(default_factory=list)


def defective_record(n: int, kind: DeadLetterReason, now: datetime | None = None) -> DefectiveRecord:
    """The `n`-th defective record, with the one defect `kind`; everything else is a valid transaction."""
    base: dict[str, Any] = json.loads(
        Transaction(
            event_id=f"demo-defect-{n:06d}",
            account_id=f"acc-defect-{n % 97:02d}",
            merchant_id="mer-00001",
            merchant_category="5411",
            amount=12.5,
            currency="EUR",
            country="DE",
            channel="ecommerce",
            event_time=now or datetime.now(UTC),
        ).to_json()
    )
    key: bytes | None = base["account_id"].encode()
    if kind is DeadLetterReason.NOT_JSON:
        value = json.dumps(base).encode()[:40]  # cut mid-document
    elif kind is DeadLetterReason.SCHEMA_INVALID:
        del base["merchant_id"]
        value = json.dumps(base).encode()
    elif kind is DeadLetterReason.NON_FINITE_NUMBER:
        base["amount"] = math.nan
        value = json.dumps(base).encode()  # Python writes the non-standard NaN literal
    elif kind is DeadLetterReason.MISSING_KEY:
        key = None
        value = json.dumps(base).encode()
    elif kind is DeadLetterReason.INVALID_CODE:
        base["currency"] = "XYZ"
        value = json.dumps(base).encode()
    elif kind is DeadLetterReason.OUT_OF_RANGE:
        base["amount"] = -12.5
        value = json.dumps(base).encode()
    elif kind is DeadLetterReason.UNKNOWN_SCHEMA_VERSION:
        base["schema_version"] = 99
        value = json.dumps(base).encode()
    elif kind is DeadLetterReason.EVENT_TIME_OUT_OF_WINDOW:
        base["event_time"] = "2100-01-01T00:00:00Z"
        value = json.dumps(base).encode()
    else:
        raise ValueError(f"the demo does not inject {kind.value}")
    headers: Headers = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON.encode()), (DEFECT_HEADER, kind.value.encode())]
    return DefectiveRecord(kind, key, value, headers)


def defects_due(events: int, share: float) -> int:
    """How many defective records belong beside `events` valid ones so that they make `share` of the total."""
    if share <= 0 or events <= 0:
        return 0
    return int(events * share / (1.0 - share))


class DefectInjector:
    """Tops up defective records as valid traffic grows: call `top_up(valid_sent)` from the producer's loop."""

    def __init__(
        self, kafka: KafkaSettings, topic: str, share: float, kinds: Sequence[DeadLetterReason] = DEFECT_KINDS
    ) -> None:
        if not 0.0 <= share < 0.5:
            raise ValueError(f"the defect share must be in [0, 0.5), got {share}")
        self.topic = topic
        self.share = share
        self.kinds = tuple(kinds)
        self.sent: dict[str, int] = {}
        self._count = 0
        self._producer = Producer(producer_config(kafka, "demo-defects", linger_ms=5))

    @property
    def total(self) -> int:
        return self._count

    def top_up(self, valid_sent: int) -> None:
        for _ in range(defects_due(valid_sent, self.share) - self._count):
            record = defective_record(self._count, self.kinds[self._count % len(self.kinds)])
            self._producer.produce(self.topic, record.value, record.key, headers=record.headers)
            self.sent[record.kind.value] = self.sent.get(record.kind.value, 0) + 1
            self._count += 1
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for the broker's acknowledgements; returns how many records are still not delivered."""
        return int(self._producer.flush(timeout_s))
