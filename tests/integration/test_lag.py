"""`streamscore lag` against the real broker: exact offsets, seconds from the record timestamps, and a
caught-up exactly-once consumer at LAG 0 although its committed offset sits on a transaction marker."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from typer.testing import CliRunner

from streamscore.kafka import consumer_config, producer_config
from streamscore.lag import DEFAULT_SCORER_GROUP, LagReader, PartitionLag
from streamscore.settings import KafkaSettings
from streamscore.topics import TopicRegistry
from streamscore_cli.main import app

CLIENT = "lag-test"


def prefix_of(topics: TopicRegistry) -> str:
    return topics.transactions.name.removesuffix("transactions")


def now_ms() -> int:
    return int(time.time() * 1000)


def produce(producer: Producer, topic: str, partition: int, timestamps: list[int]) -> None:
    for i, ts in enumerate(timestamps):
        producer.produce(topic, key=b"k%d" % i, value=b"v%d" % i, partition=partition, timestamp=ts)
    producer.flush(10)


def consume(consumer: Consumer, want: dict[int, int], timeout_s: float = 30.0) -> dict[int, int]:
    """Read exactly `want[p]` records from each partition p; returns the last offset read per partition."""
    counts = dict.fromkeys(want, 0)
    last: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    while any(counts[p] < n for p, n in want.items()):
        assert time.monotonic() < deadline, f"read {counts}, wanted {want}"
        msg = consumer.poll(0.5)
        if msg is None or msg.error() is not None:
            continue
        p = int(msg.partition() or 0)
        assert p in want and counts[p] < want[p], f"an unexpected record on partition {p}"
        counts[p] += 1
        last[p] = int(msg.offset() or 0)
        if counts[p] == want[p]:
            consumer.pause([TopicPartition(str(msg.topic()), p)])
    return last


def commit(consumer: Consumer, topic: str, positions: dict[int, int]) -> None:
    """Commit the position after the last record read, as a consumer (or send_offsets_to_transaction) does."""
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in positions.items()], asynchronous=False)


def assert_seconds(row: PartitionLag, timestamp_ms: int, before_ms: int, after_ms: int) -> None:
    """LAG-SECONDS is now − the head record's timestamp, `now` taken during the read."""
    assert row.lag_seconds is not None
    assert (before_ms - timestamp_ms) / 1000 <= row.lag_seconds <= (after_ms - timestamp_ms) / 1000


def wait_for_log_end(reader: LagReader, group: str, end: int) -> None:
    """The coordinator writes the markers just after commit/abort_transaction returns; until then the last
    stable offset stays at the transaction's first record."""
    deadline = time.monotonic() + 30
    while reader.read(group).partitions[0].log_end_offset != end:
        assert time.monotonic() < deadline, f"the log end never reached {end}"
        time.sleep(0.1)


@pytest.fixture
def reader(kafka: KafkaSettings) -> Iterator[LagReader]:
    with LagReader(kafka) as lag_reader:
        yield lag_reader


def test_partly_consumed_group_with_an_active_member(
    kafka: KafkaSettings, topics: TopicRegistry, reader: LagReader
) -> None:
    # Records stamped by the producer: not the transactions topic, whose broker stamps its own append time.
    topic = topics.labels.name
    base = now_ms() - 600_000
    stamps = {0: [base + i * 1000 for i in range(10)], 1: [base + 100_000 + i * 1000 for i in range(4)]}
    producer = Producer(producer_config(kafka, "lag-test"))
    for partition, timestamps in stamps.items():
        produce(producer, topic, partition, timestamps)

    group = f"{prefix_of(topics)}plain-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(consumer_config(kafka, group, CLIENT))
    consumer.subscribe([topic])
    try:
        last = consume(consumer, {0: 6, 1: 4})
        commit(consumer, topic, {p: o + 1 for p, o in last.items()})
        before = now_ms()
        report = reader.read(group)
        after = now_ms()
    finally:
        consumer.close()

    assert report.state == "Stable" and report.members == 1
    rows = {row.partition: row for row in report.partitions}
    assert sorted(rows) == list(range(6)), "every assigned partition is listed, committed or not"
    p0, p1 = rows[0], rows[1]
    assert (p0.current_offset, p0.log_end_offset, p0.lag) == (6, 10, 4)
    assert_seconds(p0, stamps[0][6], before, after)
    assert (p1.current_offset, p1.log_end_offset, p1.lag, p1.lag_seconds) == (4, 4, 0, 0.0)
    for partition in range(2, 6):
        row = rows[partition]
        assert (row.current_offset, row.log_end_offset, row.lag, row.lag_seconds) == (None, 0, None, None)
    assert p0.consumer_id and p0.consumer_id == rows[5].consumer_id
    assert p0.client_id == f"{kafka.client_id_prefix}-{CLIENT}"
    assert p0.host and "127.0.0.1" in p0.host
    assert report.total_lag == 4

    assert reader.read(group, topics=["another-topic"]).partitions == []
    # The member left: the offsets stay, the member columns empty.
    gone = reader.read(group)
    assert gone.state == "Empty" and gone.members == 0
    assert [(r.partition, r.lag, r.consumer_id) for r in gone.partitions] == [(0, 4, None), (1, 0, None)]


def test_transactional_topic_exact_lag_and_caught_up_on_the_commit_marker(
    kafka: KafkaSettings, topics: TopicRegistry, reader: LagReader
) -> None:
    topic = topics.scores.name
    base = now_ms() - 300_000
    producer = Producer(producer_config(kafka, "lag-tx", transactional_id=f"lag-tx-{uuid.uuid4().hex[:6]}"))
    producer.init_transactions(30)
    stamps = [base + i * 1000 for i in range(20)]
    for chunk in (stamps[:10], stamps[10:]):  # offsets 0-9, marker 10, offsets 11-20, marker 21
        producer.begin_transaction()
        produce(producer, topic, 0, chunk)
        producer.commit_transaction(30)

    group = f"{prefix_of(topics)}tx-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(consumer_config(kafka, group, CLIENT))
    consumer.assign([TopicPartition(topic, 0, 0)])
    try:
        last = consume(consumer, {0: 15})
        assert last == {0: 15}, "the 15th record sits after the first commit marker"
        commit(consumer, topic, {0: 16})
        before = now_ms()
        (row,) = reader.read(group).partitions
        after = now_ms()
        # Kafka's LAG is an offset distance: 5 records and the second transaction's marker.
        assert (row.current_offset, row.log_end_offset, row.lag) == (16, 22, 6)
        assert_seconds(row, stamps[15], before, after)

        consumer.resume([TopicPartition(topic, 0)])
        assert consume(consumer, {0: 5}) == {0: 20}
        commit(consumer, topic, {0: 21})
        (row,) = reader.read(group).partitions
        assert row.log_end_offset is not None and row.current_offset == row.log_end_offset - 1 == 21
        assert (row.lag, row.lag_seconds) == (0, 0.0), "only the commit marker is left: caught up"

        # An open transaction is not lag for read_committed consumers: the log end is the last stable offset.
        producer.begin_transaction()
        produce(producer, topic, 0, [now_ms()] * 3)
        (row,) = reader.read(group).partitions
        assert (row.log_end_offset, row.lag) == (22, 0)
        producer.abort_transaction(30)
        wait_for_log_end(reader, group, 26)
        (row,) = reader.read(group).partitions
        assert (row.current_offset, row.log_end_offset, row.lag) == (21, 26, 0), "aborted records are not lag"

        # New committed data after markers and aborted records: the head is the first readable record.
        late = now_ms() - 42_000
        producer.begin_transaction()
        produce(producer, topic, 0, [late, late + 1000])  # offsets 26, 27, marker 28
        producer.commit_transaction(30)
        wait_for_log_end(reader, group, 29)
        before = now_ms()
        (row,) = reader.read(group).partitions
        after = now_ms()
        assert (row.current_offset, row.log_end_offset, row.lag) == (21, 29, 8)
        assert_seconds(row, late, before, after)
    finally:
        consumer.close()


def test_cli_defaults_to_the_scorer_group_and_shows_dashes_without_commits(
    kafka: KafkaSettings, topics: TopicRegistry
) -> None:
    prefix = prefix_of(topics)
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "TOPICS_PREFIX": prefix}
    runner = CliRunner()

    missing = runner.invoke(app, ["lag"], env=env)
    assert missing.exit_code == 0, missing.output
    assert f"'{prefix}{DEFAULT_SCORER_GROUP}' does not exist" in " ".join(missing.output.split())

    consumer = Consumer(consumer_config(kafka, prefix + DEFAULT_SCORER_GROUP, CLIENT))
    consumer.subscribe([topics.labels.name])
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            assert time.monotonic() < deadline, "no assignment"
            consumer.poll(0.2)
        as_json = runner.invoke(app, ["lag", "--json"], env=env)
        table = runner.invoke(app, ["lag", "--topic", topics.labels.name], env=env)
    finally:
        consumer.close()

    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["group"] == prefix + DEFAULT_SCORER_GROUP and report["members"] == 1
    assert [p["partition"] for p in report["partitions"]] == list(range(6))
    assert all(p["current_offset"] is None and p["lag"] is None for p in report["partitions"])

    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:7] == [
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "LAG-SECONDS",
    ]
    first = lines[1].split()
    assert first[:7] == [prefix + DEFAULT_SCORER_GROUP, topics.labels.name, "0", "-", "0", "-", "-"]
    assert first[9] == f"{kafka.client_id_prefix}-{CLIENT}"
