"""`KafkaPositions` against the real broker: where a group resumes each partition, and whether records lie between
two offsets (a transaction's commit marker takes an offset but holds no record)."""

from __future__ import annotations

from confluent_kafka import Consumer, Producer, TopicPartition

from streamscore.kafka import admin_client, consumer_config, producer_config
from streamscore.settings import KafkaSettings
from streamscore.starts import KafkaPositions
from streamscore.topics import TopicRegistry


def test_where_a_group_resumes_and_whether_records_lie_between(kafka: KafkaSettings, topics: TopicRegistry) -> None:
    topic = topics.transactions.name
    producer = Producer(producer_config(kafka, "test-starts", linger_ms=0))
    for i in range(5):
        producer.produce(topic, f"v{i}".encode(), b"k", partition=0)
    assert producer.flush(30) == 0
    transactional = Producer(producer_config(kafka, "test-starts-tx", transactional_id=f"{topic}.tx", linger_ms=0))
    transactional.init_transactions(30)
    for i in range(2):  # partition 2: record 0, marker 1, record 2, marker 3
        transactional.begin_transaction()
        transactional.produce(topic, f"t{i}".encode(), b"k", partition=2)
        transactional.commit_transaction(30)
    group = f"{topic}.group"
    committer = Consumer(consumer_config(kafka, group, "test-starts"))
    committer.commit(offsets=[TopicPartition(topic, 0, 3), TopicPartition(topic, 2, 1)], asynchronous=False)
    committer.close()

    positions = KafkaPositions(
        admin_client(kafka), consumer_config(kafka, "unused", "test-starts", read_committed=False), group
    )
    # Committed offsets where there are; the start of the log where there are none (partition 1 is empty).
    assert positions.starts([(topic, 0), (topic, 1), (topic, 2)]) == {(topic, 0): 3, (topic, 1): 0, (topic, 2): 1}
    assert positions.record_before((topic, 0), 3, 5)  # offsets 3 and 4 hold records
    assert not positions.record_before((topic, 0), 3, 3)
    assert not positions.record_before((topic, 2), 1, 2)  # offset 1 is a marker: the next record is at 2
    assert positions.record_before((topic, 2), 0, 2)
