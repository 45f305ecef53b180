"""`streamscore dlq` against the real broker: dead letters written as the scorer writes them (by
`scorer.deadletters.dead_letter`, in a transaction) are counted by reason, replayed byte for byte with
`replay-count` incremented, and refused when replayed too often or truncated."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from typer.testing import CliRunner

from scorer.deadletters import DeadLetterRecord, SourceRecord, dead_letter
from scorer.dlq import read_dead_letters
from streamscore.contracts import DeadLetterReason, DeadLetterStage, Header, Headers, header_value
from streamscore.kafka import consumer_config, partition_for, producer_config
from streamscore.settings import KafkaSettings
from streamscore.topics import TopicRegistry
from streamscore_cli.main import app

TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
BASE_TS = int(time.time() * 1000) - 3_600_000
"""Recent: the DLQ keeps the original timestamps, and its retention counts from them."""
runner = CliRunner()


def source(topics: TopicRegistry, i: int, value: bytes | None, extra: Headers | None = None) -> SourceRecord:
    return SourceRecord(
        topic=topics.transactions.name,
        partition=i % 6,
        offset=500 + i,
        timestamp_ms=BASE_TS + i * 1000,
        key=f"acc-{i}".encode(),
        value=value,
        headers=[(Header.TRACEPARENT, TRACEPARENT), ("x-bin", b"\x00\xff\x01"), *(extra or [])],
    )


def write_letters(kafka: KafkaSettings, topic: str, letters: list[DeadLetterRecord]) -> None:
    """In one transaction, as the scorer writes its dead letters with its scores and offsets; returns once
    read_committed readers see them (the commit markers are written just after `commit_transaction`)."""
    before = len(read_dead_letters(kafka, topic, timeout_s=30))
    producer = Producer(producer_config(kafka, "dlq-test", transactional_id=f"dlq-test-{uuid.uuid4().hex[:6]}"))
    producer.init_transactions(30)
    producer.begin_transaction()
    for out in letters:
        producer.produce(topic, key=out.key, value=out.value, headers=out.headers, timestamp=out.timestamp_ms)
    producer.commit_transaction(30)
    deadline = time.monotonic() + 30
    while len(read_dead_letters(kafka, topic, timeout_s=30)) < before + len(letters):
        assert time.monotonic() < deadline, "the committed letters never became visible"
        time.sleep(0.1)


def read_topic(kafka: KafkaSettings, topic: str) -> list[Message]:
    """Everything on `topic` (read_committed) up to each partition's end. Replays are flushed with acks=all
    before the command returns, so they are all there."""
    consumer = Consumer(
        {**consumer_config(kafka, f"test-{uuid.uuid4().hex[:8]}", "test"), "enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(6)])
    messages: list[Message] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + 30
    try:
        while len(at_end) < 6:
            assert time.monotonic() < deadline, f"only partitions {sorted(at_end)} reached their end"
            for msg in consumer.consume(100, 0.5):
                error = msg.error()
                if error is None:
                    messages.append(msg)
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(int(msg.partition() or 0))
    finally:
        consumer.close()
    return messages


def key_of(msg: Message) -> bytes:
    key = msg.key()
    assert isinstance(key, bytes)
    return key


def headers_of(msg: Message) -> Headers:
    raw = msg.headers() or []
    return list(raw.items()) if isinstance(raw, dict) else list(raw)


def cli(topics: TopicRegistry, kafka: KafkaSettings, *args: str) -> Any:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "TOPICS_PREFIX": topics.transactions.name.removesuffix("transactions"),
    }
    return runner.invoke(app, ["dlq", *args], env=env)


def letter(
    topics: TopicRegistry,
    i: int,
    reason: DeadLetterReason,
    value: bytes,
    *,
    stage: DeadLetterStage = "decode",
    extra: Headers | None = None,
) -> tuple[SourceRecord, DeadLetterRecord]:
    record = source(topics, i, value, extra)
    return record, dead_letter(record, reason, f"{reason.value} in event {i}", stage=stage, consumer_group="scorers")


def test_inspect_counts_and_replay_reproduces_the_originals(kafka: KafkaSettings, topics: TopicRegistry) -> None:
    big = b'{"pad": "' + b"x" * (70 * 1024) + b'"}'
    cases = [
        letter(topics, 0, DeadLetterReason.NOT_JSON, b'{"amount": 1'),
        letter(topics, 1, DeadLetterReason.NOT_JSON, b"\x00binary\xff but valid bytes"),
        letter(topics, 2, DeadLetterReason.OUT_OF_RANGE, b'{"amount": -1}', stage="validate"),
        letter(
            topics,
            3,
            DeadLetterReason.OUT_OF_RANGE,
            b'{"amount": 2e6}',
            stage="validate",
            extra=[(Header.REPLAY_COUNT, b"3")],
        ),
        letter(topics, 4, DeadLetterReason.OVERSIZE, big),
        letter(topics, 5, DeadLetterReason.NOT_UTF8, b"\xff\xfe"),
    ]
    write_letters(kafka, topics.dlq.name, [out for _, out in cases])
    originals = {src.key: src for src, _ in cases}

    entries = read_dead_letters(kafka, topics.dlq.name, timeout_s=30)
    assert len(entries) == len(cases)
    assert all(e.letter is not None for e in entries)

    inspected = cli(topics, kafka, "inspect", "--json", "--limit", "2")
    assert inspected.exit_code == 0, inspected.output
    report = json.loads(inspected.stdout)
    assert report["topic"] == topics.dlq.name and report["letters"] == 6 and report["matching"] == 6
    assert report["by_reason"] == {"not_json": 2, "out_of_range": 2, "not_utf8": 1, "oversize": 1}
    assert report["by_stage"] == {"decode": 4, "validate": 2}
    assert [(x["key"], x["reason"], x["replay_count"]) for x in report["latest"]] == [
        ("acc-5", "not_utf8", 0),
        ("acc-4", "oversize", 0),
    ]
    assert report["latest"][1]["truncated"] is True and report["latest"][1]["payload_size"] == len(big)
    assert report["latest"][0]["original_topic"] == topics.transactions.name
    assert report["latest"][0]["original_offset"] == 505

    only = json.loads(cli(topics, kafka, "inspect", "--json", "--reason", "out_of_range").stdout)
    assert only["matching"] == 2 and only["by_reason"] == {"out_of_range": 2}
    table = cli(topics, kafka, "inspect", "--reason", "not_json")
    assert table.exit_code == 0 and "2 matching" in table.output and "acc-0" in table.output

    dry = cli(topics, kafka, "replay", "--reason", "not_json", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "2 would be replayed" in dry.output

    replay_started_ms = int(time.time() * 1000)
    first = cli(topics, kafka, "replay", "--reason", "not_json")
    assert first.exit_code == 0, first.output
    assert f"replayed 2 (2 to {topics.transactions.name}), refused 0" in " ".join(first.output.split())

    second = cli(topics, kafka, "replay", "--reason", "out_of_range", "--reason", "oversize", "--max-replays", "3")
    assert second.exit_code == 0, second.output
    said = " ".join(second.output.split())
    assert "replayed 1 " in said and "refused 2" in said
    assert "already replayed 3 time(s), the limit is 3" in said
    assert "truncated payload" in said

    replayed = read_topic(kafka, topics.transactions.name)
    assert sorted(key_of(m) for m in replayed) == [b"acc-0", b"acc-1", b"acc-2"], "dry run and refusals sent nothing"
    for msg in replayed:
        original = originals[key_of(msg)]
        assert msg.value() == original.value, "value byte for byte"
        # The transactions topic stamps its own append time (the receiving clock): the replay's, not the original's.
        kind, stamp = msg.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME and stamp >= replay_started_ms > original.timestamp_ms
        assert msg.partition() == partition_for(key_of(msg), 6), "keyed like the producers (murmur2)"
        headers = headers_of(msg)
        assert header_value(headers, Header.REPLAY_COUNT) == b"1"
        assert header_value(headers, Header.TRACEPARENT) == TRACEPARENT
        assert header_value(headers, "x-bin") == b"\x00\xff\x01"
        assert not [name for name, _ in headers if name.startswith("dlq-")]


def test_a_replayed_event_that_fails_again_stops_at_max_replays(kafka: KafkaSettings, topics: TopicRegistry) -> None:
    _, out = letter(topics, 7, DeadLetterReason.KEY_MISMATCH, b'{"account_id": "other"}', stage="validate")
    write_letters(kafka, topics.dlq.name, [out])
    assert cli(topics, kafka, "replay", "--all").exit_code == 0
    (msg,) = read_topic(kafka, topics.transactions.name)

    # The scorer dead-letters the replayed record again: its replay-count travels into the new letter.
    again = SourceRecord(
        topic=str(msg.topic()),
        partition=int(msg.partition() or 0),
        offset=int(msg.offset() or 0),
        timestamp_ms=msg.timestamp()[1],
        key=msg.key(),
        value=msg.value(),
        headers=headers_of(msg),
    )
    write_letters(
        kafka,
        topics.dlq.name,
        [dead_letter(again, DeadLetterReason.KEY_MISMATCH, "still wrong", stage="validate", consumer_group="s")],
    )
    entries = read_dead_letters(kafka, topics.dlq.name, timeout_s=30)
    newest = next(e for e in entries if e.message == "still wrong")
    assert newest.replay_count == 1 and newest.original_topic == topics.transactions.name

    refused = cli(topics, kafka, "replay", "--offset", f"{newest.partition}:{newest.offset}", "--max-replays", "1")
    assert refused.exit_code == 0, refused.output
    said = " ".join(refused.output.split())
    assert "already replayed 1 time(s), the limit is 1" in said and "replayed 0" in said

    # Everything again: the first letter was replayed already (its event came back), only the newest goes.
    allowed = cli(topics, kafka, "replay", "--all")
    said = " ".join(allowed.output.split())
    assert "replayed 1 " in said and "refused 1" in said
    assert f"already replayed: the letter at {newest.partition}:{newest.offset} is the same event" in said
    counts = sorted(
        header_value(headers_of(m), Header.REPLAY_COUNT) or b"" for m in read_topic(kafka, str(msg.topic()))
    )
    assert counts == [b"1", b"2"]


def test_replay_needs_a_choice_and_an_empty_dlq_is_fine(kafka: KafkaSettings, topics: TopicRegistry) -> None:
    assert read_dead_letters(kafka, topics.dlq.name, timeout_s=10) == []
    no_choice = cli(topics, kafka, "replay")
    assert no_choice.exit_code == 2 and "--all" in no_choice.output
    empty = cli(topics, kafka, "inspect")
    assert empty.exit_code == 0 and "is empty" in empty.output
    missing = cli(topics, kafka, "replay", "--offset", "0:99")
    assert missing.exit_code == 0 and "no dead letter at 0:99" in missing.output
