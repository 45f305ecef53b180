"""Operating the dead-letter topic: read it whole, summarize it, replay chosen letters to their topic.

A dead letter (see `scorer.deadletters` and docs/contracts.md) is the original record — key, value,
headers, timestamp — plus `dlq-*` reason headers. Replaying one re-produces the original record to its
original topic with the reason headers removed and `replay-count` incremented, so an event that fails
again comes back with its count and a loop stops at `max_replays`.

Reading never commits: partitions are assigned from their start to their read_committed end, so
inspecting changes nothing for anyone. Selection, refusal and the replayed record are pure functions
over `DeadLetterEntry` values; Kafka is only touched by `read_dead_letters` and `replay`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import ValidationError

from streamscore.contracts import DeadLetter, Header, Headers, header_value
from streamscore.errors import StreamscoreError
from streamscore.kafka import consumer_config, producer_config
from streamscore.logs import kafka_context
from streamscore.settings import KafkaSettings

log = logging.getLogger(__name__)

DLQ_HEADER_PREFIX = "dlq-"
DEFAULT_MAX_REPLAYS = 3
UNKNOWN_REASON = "unknown"
"""Shown for a record on the DLQ whose `dlq-error-class` header is missing."""


class DeadLetterReadError(StreamscoreError):
    """The dead-letter topic could not be read to its end."""

    retryable = True
    http_status = 503

    def __init__(self, topic: str, problem: str) -> None:
        super().__init__(f"dead-letter topic {topic}: {problem}")
        self.topic = topic


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One record of the dead-letter topic, with its reason headers parsed (`letter`) when they are valid."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    letter: DeadLetter | None
    problem: str | None = None
    """Why `letter` is None: the reason headers are missing or invalid."""

    @classmethod
    def from_record(
        cls, partition: int, offset: int, timestamp_ms: int, key: bytes | None, value: bytes | None, headers: Headers
    ) -> DeadLetterEntry:
        try:
            letter, problem = DeadLetter.from_headers(headers), None
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors(include_url=False)})
            letter, problem = None, f"invalid dlq headers: {', '.join(fields)}"
        return cls(partition, offset, timestamp_ms, key, value, headers, letter, problem)

    def _header(self, name: str) -> str | None:
        raw = header_value(self.headers, name)
        return raw.decode("utf-8", errors="replace") if raw is not None else None

    @property
    def reason(self) -> str:
        if self.letter is not None:
            return str(self.letter.error_class)
        return self._header("dlq-error-class") or UNKNOWN_REASON

    @property
    def stage(self) -> str:
        return self.letter.stage if self.letter is not None else self._header("dlq-stage") or "-"

    @property
    def message(self) -> str:
        if self.letter is not None:
            return self.letter.error_message
        return self._header("dlq-error-message") or self.problem or ""

    @property
    def original_topic(self) -> str | None:
        return self.letter.original_topic if self.letter is not None else self._header("dlq-original-topic")

    @property
    def original_timestamp_ms(self) -> int:
        return self.letter.original_timestamp_ms if self.letter is not None else self.timestamp_ms

    @property
    def truncated(self) -> bool:
        if self.letter is not None:
            return self.letter.truncated
        return (self._header("dlq-truncated") or "").strip().lower() in {"true", "1"}

    @property
    def payload_size(self) -> int:
        return self.letter.payload_size if self.letter is not None else len(self.value or b"")

    @property
    def replay_count(self) -> int | None:
        """How often the event was replayed already; None when the header is not a non-negative integer."""
        raw = self._header(Header.REPLAY_COUNT)
        if raw is None:
            return 0
        return int(raw) if raw.strip().isdigit() else None

    def to_dict(self) -> dict[str, Any]:
        letter = self.letter
        return {
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": _iso(self.timestamp_ms),
            "reason": self.reason,
            "stage": self.stage,
            "message": self.message,
            "original_topic": self.original_topic,
            "original_partition": letter.original_partition if letter else None,
            "original_offset": letter.original_offset if letter else None,
            "consumer_group": letter.consumer_group if letter else None,
            "key": display_key(self.key),
            "payload_size": self.payload_size,
            "truncated": self.truncated,
            "replay_count": self.replay_count,
            "problem": self.problem,
        }


def _iso(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def display_key(key: bytes | None) -> str | None:
    """A key as text: UTF-8 where it is, backslash escapes where it is not."""
    return None if key is None else key.decode("utf-8", errors="backslashreplace")


# --- selection ------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime) -> datetime:
    """`30m`, `2h`, `7d`, `45s` ago, or an ISO-8601 time (UTC when it carries no zone)."""
    match = _DURATION.match(text)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (30m, 2h, 7d) nor an ISO-8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_position(text: str) -> tuple[int, int]:
    """`partition:offset` of a record on the dead-letter topic."""
    partition, sep, offset = text.partition(":")
    if not sep or not partition.strip().isdigit() or not offset.strip().isdigit():
        raise ValueError(f"{text!r} is not partition:offset (e.g. 3:1042)")
    return int(partition), int(offset)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which letters: every filter given must match (reasons and positions each match any of theirs)."""

    reasons: frozenset[str] = frozenset()
    positions: frozenset[tuple[int, int]] = frozenset()
    since_ms: int | None = None
    """Letters whose record timestamp (the original event's, kept by the dead letter) is at or after this."""

    @property
    def empty(self) -> bool:
        return not self.reasons and not self.positions and self.since_ms is None

    def matches(self, entry: DeadLetterEntry) -> bool:
        return (
            (not self.reasons or entry.reason in self.reasons)
            and (not self.positions or (entry.partition, entry.offset) in self.positions)
            and (self.since_ms is None or entry.timestamp_ms >= self.since_ms)
        )


def select(entries: Iterable[DeadLetterEntry], selection: Selection) -> list[DeadLetterEntry]:
    return [e for e in entries if selection.matches(e)]


@dataclass(frozen=True, slots=True)
class Summary:
    total: int
    by_reason: dict[str, int]
    by_stage: dict[str, int]
    latest: list[DeadLetterEntry]
    """The newest letters first (by record timestamp, then position)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "matching": self.total,
            "by_reason": self.by_reason,
            "by_stage": self.by_stage,
            "latest": [e.to_dict() for e in self.latest],
        }


def summarize(entries: Sequence[DeadLetterEntry], limit: int) -> Summary:
    def by(values: Iterable[str]) -> dict[str, int]:
        return dict(sorted(Counter(values).items(), key=lambda kv: (-kv[1], kv[0])))

    newest = sorted(entries, key=lambda e: (e.timestamp_ms, e.partition, e.offset), reverse=True)
    return Summary(
        total=len(entries),
        by_reason=by(e.reason for e in entries),
        by_stage=by(e.stage for e in entries),
        latest=newest[: max(limit, 0)],
    )


# --- replay ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    """The original record as it will be produced again."""

    source: tuple[int, int]
    """Partition and offset of the dead letter it comes from."""
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int
    replay_count: int


@dataclass(frozen=True, slots=True)
class Refusal:
    source: tuple[int, int]
    reason: str
    why: str


@dataclass
class ReplayPlan:
    records: list[ReplayRecord] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    missing: list[tuple[int, int]] = field(default_factory=list)
    """Positions asked for with `--offset` that are not on the dead-letter topic."""


def refusal(entry: DeadLetterEntry, max_replays: int) -> str | None:
    """Why this letter must not be replayed, or None when it can be replayed faithfully."""
    count = entry.replay_count
    if count is None:
        return f"its {Header.REPLAY_COUNT} header is not a non-negative integer"
    if count >= max_replays:
        return f"already replayed {count} time(s), the limit is {max_replays} (--max-replays)"
    if entry.truncated:
        return (
            f"the dead letter holds a truncated payload ({len(entry.value or b'')} of {entry.payload_size} bytes); "
            "the original cannot be reproduced"
        )
    letter = entry.letter
    if letter is not None and hashlib.sha256(entry.value or b"").hexdigest() != letter.payload_sha256:
        return "the payload does not match its dlq-payload-sha256; the original cannot be reproduced"
    return None


def replay_record(entry: DeadLetterEntry, default_topic: str) -> ReplayRecord:
    """The original record: same key, value, non-dlq headers and timestamp; `replay-count` incremented."""
    count = (entry.replay_count or 0) + 1
    headers: Headers = [
        (name, value)
        for name, value in entry.headers
        if not name.startswith(DLQ_HEADER_PREFIX) and name != Header.REPLAY_COUNT
    ]
    headers.append((Header.REPLAY_COUNT, str(count).encode()))
    return ReplayRecord(
        source=(entry.partition, entry.offset),
        topic=entry.original_topic or default_topic,
        key=entry.key,
        value=entry.value,
        headers=headers,
        timestamp_ms=entry.original_timestamp_ms,
        replay_count=count,
    )


def event_identity(entry: DeadLetterEntry) -> tuple[bytes | None, str] | None:
    """What stays the same when an event is replayed and dead-lettered again: its key and payload digest (the payload
    carries the event id). Not the record timestamp: on `transactions` the broker stamps each append, a replay
    included (LogAppendTime, the receiving clock of the event-time window)."""
    letter = entry.letter
    return None if letter is None else (entry.key, letter.payload_sha256)


def plan_replay(
    entries: Sequence[DeadLetterEntry],
    selection: Selection,
    *,
    default_topic: str,
    max_replays: int = DEFAULT_MAX_REPLAYS,
) -> ReplayPlan:
    """What to replay and what to refuse (with why), in dead-letter order.

    A letter stays on the topic after its replay. When the replayed event failed again, a newer letter of
    the same event carries a higher `replay-count`; the older one is refused as superseded, so replaying by
    reason twice does not send that event twice. (A replay that succeeded leaves no trace here: choose
    letters by --offset or --since to avoid replaying it again.)
    """
    newest: dict[tuple[bytes | None, str], DeadLetterEntry] = {}
    for entry in entries:
        identity = event_identity(entry)
        if identity is not None:
            best = newest.get(identity)
            if best is None or (entry.replay_count or 0) > (best.replay_count or 0):
                newest[identity] = entry
    plan = ReplayPlan()
    chosen = select(entries, selection)
    for entry in sorted(chosen, key=lambda e: (e.partition, e.offset)):
        why = refusal(entry, max_replays)
        identity = event_identity(entry)
        later = newest.get(identity) if identity is not None else None
        if why is None and later is not None and (later.replay_count or 0) > (entry.replay_count or 0):
            why = (
                f"already replayed: the letter at {later.partition}:{later.offset} is the same event "
                f"dead-lettered again with {Header.REPLAY_COUNT} {later.replay_count}"
            )
        if why is None:
            plan.records.append(replay_record(entry, default_topic))
        else:
            plan.refused.append(Refusal((entry.partition, entry.offset), entry.reason, why))
    present = {(e.partition, e.offset) for e in entries}
    plan.missing = sorted(selection.positions - present)
    return plan


# --- Kafka edges ----------------------------------------------------------------------------------


def read_dead_letters(kafka: KafkaSettings, topic: str, *, timeout_s: float = 60.0) -> list[DeadLetterEntry]:
    """Every dead letter on `topic`, read_committed, from each partition's start to its end at call time."""
    config = consumer_config(kafka, f"{kafka.client_id_prefix}-dlq-{uuid.uuid4().hex[:8]}", "dlq-inspect")
    config["enable.partition.eof"] = True
    consumer = Consumer(config)
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            detail = metadata.error.str() if metadata is not None and metadata.error is not None else "no partitions"
            raise DeadLetterReadError(topic, f"{detail}. Create the topics with `streamscore infra up`.")
        ends: dict[int, int] = {}
        for partition in sorted(metadata.partitions):
            low, high = _watermarks(consumer, TopicPartition(topic, partition), timeout_s)
            if high > low:
                ends[partition] = high
        if not ends:
            return []
        entries: list[DeadLetterEntry] = []
        pending = set(ends)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout_s
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadLetterReadError(topic, f"partitions {sorted(pending)} not read to their end in {timeout_s} s")
            messages: list[Message] = consumer.consume(num_messages=1000, timeout=min(remaining, 0.1))
            for msg in messages:
                partition = int(msg.partition() or 0)
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(partition)
                    else:
                        log.warning(
                            "topic=%s partition=%d read error: %s",
                            topic,
                            partition,
                            error.str(),
                            extra=kafka_context(topic, partition),
                        )
                    continue
                offset = int(msg.offset() or 0)
                if partition not in pending or offset >= ends[partition]:
                    continue  # written after the read started
                raw = msg.headers() or []
                headers: Headers = list(raw.items()) if isinstance(raw, dict) else list(raw)
                key, value = msg.key(), msg.value()
                entries.append(
                    DeadLetterEntry.from_record(
                        partition,
                        offset,
                        msg.timestamp()[1],
                        key.encode() if isinstance(key, str) else key,
                        value.encode() if isinstance(value, str) else value,
                        headers,
                    )
                )
                if offset >= ends[partition] - 1:
                    pending.discard(partition)
        return entries
    finally:
        consumer.close()


_TRANSIENT = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)


def _watermarks(consumer: Consumer, tp: TopicPartition, timeout_s: float) -> tuple[int, int]:
    """Low and high watermark; for a read_committed consumer the high one is the last stable offset.

    Letters of a transaction that was just committed appear once its markers are written (the coordinator
    writes them after `commit_transaction` returns), so a read right after a commit may not see them yet.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
            return int(low), int(high)
        except KafkaException as exc:
            # NOT_LEADER and friends right after a topic was created or a leader moved: short-lived.
            error = exc.args[0]
            if not (error.retriable() or error.code() in _TRANSIENT) or time.monotonic() > deadline:
                raise DeadLetterReadError(tp.topic, f"partition {tp.partition}: {error.str()}") from exc
            time.sleep(0.2)


@dataclass
class ReplayReport:
    delivered: int = 0
    failed: list[str] = field(default_factory=list)
    """One line per record not delivered (or not sent because its topic does not exist)."""
    topics: Counter[str] = field(default_factory=Counter)


def replay(kafka: KafkaSettings, records: Sequence[ReplayRecord], *, timeout_s: float = 30.0) -> ReplayReport:
    """Produce `records` with an idempotent producer (no duplicates from retries, order kept) and flush.

    A record whose topic does not exist is not sent (the broker does not create topics; the producer would
    retry for minutes): it is reported as failed at once.
    """
    report = ReplayReport()
    if not records:
        return report
    producer = Producer(producer_config(kafka, "dlq-replay"))
    existing = producer.list_topics(timeout=timeout_s).topics

    def on_delivery(error: KafkaError | None, msg: Message) -> None:
        if error is not None:
            report.failed.append(f"{msg.topic()}: {error.str()}")
        else:
            report.delivered += 1
            report.topics[str(msg.topic())] += 1

    for record in records:
        if record.topic not in existing:
            report.failed.append(
                f"{record.topic}: topic does not exist (dead letter {record.source[0]}:{record.source[1]})"
            )
            continue
        producer.produce(
            record.topic,
            key=record.key,
            value=record.value,
            headers=record.headers,
            timestamp=record.timestamp_ms,
            on_delivery=on_delivery,
        )
        producer.poll(0)
    left = producer.flush(timeout_s)
    if left:
        report.failed.append(f"{left} record(s) still undelivered after {timeout_s:.0f} s")
    return report
