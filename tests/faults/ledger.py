"""What the campaign sent and what came out, counted by code that is not the scorer's.

`Traffic` produces transactions at a steady rate (and poison records on demand) and keeps a ledger of every record
the broker acknowledged. `OutcomeReader` reads `scores` and `transactions.dlq` as a read_committed consumer with
aiokafka — a different Kafka client library from the scorer's confluent-kafka, and none of the scorer's decoding —
and counts, per event id, the live scores and dead letters. `Verdict` compares the two: lost, duplicated and
wrongly dead-lettered records.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from confluent_kafka import KafkaError, Message, Producer

from streamscore.contracts import CONTENT_TYPE_JSON, Headers
from streamscore.kafka import producer_config
from streamscore.settings import KafkaSettings
from streamscore.topics import TopicRegistry
from tests.support.scoring import CASE, DEFECT_KINDS, defective

CHANNELS = ("pos", "ecommerce", "contactless")
DeliveryCallback = Callable[[KafkaError | None, Message], None]
ERROR_CLASS_HEADER = "dlq-error-class"


@dataclass
class Sent:
    valid: dict[str, float] = field(default_factory=dict)
    """event id → time.monotonic() of the broker's acknowledgement."""
    poison: dict[str, str] = field(default_factory=dict)
    """poison id (the CASE header's value: `<kind>#<n>`) → the reason it must be dead-lettered with."""
    failed: int = 0
    """Records the producer gave up on (never acknowledged: not in the ledger)."""


class Traffic:
    """Valid transactions at `rate` per second on a thread of its own, plus poison records on demand."""

    def __init__(self, kafka: KafkaSettings, topics: TopicRegistry, rate: float, *, accounts: int = 2000) -> None:
        config = producer_config(kafka, "fault-traffic", linger_ms=5)
        # Long enough to ride out a broker restart: a record is either acknowledged or reported failed.
        config["message.timeout.ms"] = 300_000
        self.producer = Producer(config)
        self.topic = topics.transactions.name
        self.rate = rate
        self.accounts = accounts
        self.sent = Sent()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._seq = 0
        self._poison_seq = 0
        self._run = f"{random.getrandbits(32):08x}"
        self._thread = threading.Thread(target=self._loop, name="fault-traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def _transaction(self) -> tuple[str, bytes, bytes]:
        i = self._seq
        self._seq += 1
        event_id = f"f{self._run}-{i:08d}"
        account = f"acct-{(i * 7919) % self.accounts:05d}"
        body = {
            "schema_version": 1,
            "event_id": event_id,
            "account_id": account,
            "merchant_id": f"m-{i % 53:03d}",
            "merchant_category": "5411",
            "amount": round(3.0 + (i % 500) * 1.91, 2),
            "currency": "EUR",
            "country": "DE",
            "channel": CHANNELS[i % 3],
            "device_id": f"dev-{i % 17}",
            "event_time": datetime.now(UTC).isoformat(),
        }
        return event_id, account.encode(), json.dumps(body).encode()

    def _on_valid(self, event_id: str) -> DeliveryCallback:
        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            with self._lock:
                if err is None:
                    self.sent.valid[event_id] = time.monotonic()
                else:
                    self.sent.failed += 1

        return on_delivery

    def _loop(self) -> None:
        started = time.monotonic()
        sent = 0
        while not self._stop.is_set():
            due = started + sent / self.rate
            wait = due - time.monotonic()
            if wait > 0:
                self._stop.wait(min(wait, 0.05))
                self.producer.poll(0)
                continue
            event_id, key, value = self._transaction()
            self._produce(key, value, [("content-type", CONTENT_TYPE_JSON.encode())], self._on_valid(event_id))
            sent += 1
        self.producer.flush(300)

    def _produce(self, key: bytes | None, value: bytes | None, headers: Headers, cb: DeliveryCallback) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key, headers=headers, on_delivery=cb)
                self.producer.poll(0)
                return
            except BufferError:
                self.producer.poll(0.05)

    def poison(self, copies: int = 1) -> int:
        """Send every defect kind of the scorer's corpus `copies` times; returns how many records."""
        count = 0
        for _ in range(copies):
            for kind in DEFECT_KINDS:
                self._poison_seq += 1
                record = defective(self._poison_seq, kind)
                case = f"{kind}#{self._poison_seq}"
                headers: Headers = [(k, v) for k, v in record.headers if k != CASE]
                headers.append((CASE, case.encode()))

                def on_delivery(err: KafkaError | None, _msg: Message, case: str = case, kind: str = kind) -> None:
                    with self._lock:
                        if err is None:
                            self.sent.poison[case] = kind
                        else:
                            self.sent.failed += 1

                self._produce(record.key, record.value, headers, on_delivery)
                count += 1
        self.producer.flush(300)
        return count

    def valid_count(self) -> int:
        with self._lock:
            return len(self.sent.valid)

    def acknowledged_before(self, moment: float) -> set[str]:
        with self._lock:
            return {e for e, at in self.sent.valid.items() if at <= moment}

    def acknowledged_after(self, moment: float) -> set[str]:
        with self._lock:
            return {e for e, at in self.sent.valid.items() if at > moment}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(320)


class OutcomeReader:
    """read_committed counts of live scores and dead letters, from the beginning of both topics, on a thread."""

    def __init__(self, kafka: KafkaSettings, topics: TopicRegistry) -> None:
        self.bootstrap = kafka.bootstrap_servers
        self.scores_topic = topics.scores.name
        self.dlq_topic = topics.dlq.name
        self.partitions = {topics.scores.name: topics.scores.partitions, topics.dlq.name: topics.dlq.partitions}
        self.scores: Counter[str] = Counter()
        self.letters: Counter[str] = Counter()
        """event id (valid records wrongly dead-lettered) or poison id → dead letters seen."""
        self.letter_reasons: dict[str, str] = {}
        self.unattributed_letters = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._consume()), name="fault-reader", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> OutcomeReader:
        self._thread.start()
        return self

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=10_000,
            retry_backoff_ms=200,
        )
        try:
            await consumer.start()
            # The registry states the partition counts (the campaign created the topics from it).
            partitions = [TopicPartition(topic, p) for topic, count in self.partitions.items() for p in range(count)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=2000)
                for tp, messages in batches.items():
                    for message in messages:
                        self._count(tp.topic, message.value, dict(message.headers or ()))
        except BaseException as exc:  # noqa: BLE001 - reported by the campaign, which fails on it
            self.error = exc
        finally:
            await consumer.stop()

    def _count(self, topic: str, value: bytes | None, headers: dict[str, bytes]) -> None:
        with self._lock:
            if topic == self.scores_topic:
                event_id = json.loads(value or b"{}").get("event_id")
                self.scores[str(event_id)] += 1
                return
            case = headers.get(CASE)
            reason = headers.get(ERROR_CLASS_HEADER, b"").decode()
            if case is not None:
                key = case.decode()
            else:
                try:
                    key = str(json.loads(value or b"{}").get("event_id"))
                except ValueError:
                    self.unattributed_letters += 1
                    return
            self.letters[key] += 1
            self.letter_reasons[key] = reason

    def scored(self, event_ids: set[str]) -> int:
        with self._lock:
            return sum(1 for e in event_ids if self.scores.get(e, 0) > 0)

    def total_scores(self) -> int:
        with self._lock:
            return sum(self.scores.values())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@dataclass
class Verdict:
    sent_valid: int
    sent_poison: int
    producer_failures: int
    lost: int
    duplicated: int
    wrongly_dead_lettered: int
    poison_missed: int
    """Poison records with no dead letter, or one with another reason than their defect's."""
    poison_duplicated: int
    examples: dict[str, list[str]]

    @property
    def clean(self) -> bool:
        return not (
            self.lost or self.duplicated or self.wrongly_dead_lettered or self.poison_missed or self.poison_duplicated
        )


def verdict(sent: Sent, reader: OutcomeReader) -> Verdict:
    with reader._lock:
        scores = Counter(reader.scores)
        letters = Counter(reader.letters)
        reasons = dict(reader.letter_reasons)
    lost = [e for e in sent.valid if scores.get(e, 0) == 0]
    duplicated = [e for e in sent.valid if scores.get(e, 0) > 1]
    wrong = [e for e in sent.valid if letters.get(e, 0) > 0]
    missed = [c for c, kind in sent.poison.items() if letters.get(c, 0) == 0 or reasons.get(c) != kind]
    poison_dup = [c for c in sent.poison if letters.get(c, 0) > 1]
    return Verdict(
        sent_valid=len(sent.valid),
        sent_poison=len(sent.poison),
        producer_failures=sent.failed,
        lost=len(lost),
        duplicated=len(duplicated),
        wrongly_dead_lettered=len(wrong),
        poison_missed=len(missed),
        poison_duplicated=len(poison_dup),
        examples={"lost": lost[:5], "duplicated": duplicated[:5], "wrong": wrong[:5], "missed": missed[:5]},
    )
