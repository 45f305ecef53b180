"""One lag rule against the real broker: after a transactional batch is fully scored and committed, the scorer's lag
gauges (from its consumer's statistics) and `streamscore lag` both say 0 although every committed offset sits on a
commit marker; and `streamscore top --once` shows the lag, the rates and the model versions of a running scorer."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from streamscore.kafka import producer_config
from streamscore.lag import DEFAULT_SCORER_GROUP, LagReader
from streamscore.settings import KafkaSettings, RedisSettings
from streamscore.topics import TopicRegistry
from streamscore_cli.main import app
from tests.support.scoring import OutputReader, Record, ScorerEnv, make_scorer_env, mixed, produce


@pytest.fixture
def scorer_env(tmp_path: Path, kafka: KafkaSettings, redis_settings: RedisSettings, topics: TopicRegistry) -> ScorerEnv:
    return make_scorer_env(tmp_path, kafka, redis_settings, topics)


@pytest.fixture
def reader(scorer_env: ScorerEnv) -> Iterator[OutputReader]:
    r = OutputReader(scorer_env.kafka, [scorer_env.topics.scores.name])
    yield r
    r.close()


def produce_in_transactions(kafka: KafkaSettings, topic: str, records: list[Record], per_transaction: int) -> None:
    producer = Producer(producer_config(kafka, "lag-tx", transactional_id=f"lag-tx-{uuid.uuid4().hex[:6]}"))
    producer.init_transactions(30)
    for start in range(0, len(records), per_transaction):
        producer.begin_transaction()
        for r in records[start : start + per_transaction]:
            producer.produce(topic, r.value, r.key, headers=r.headers)
        producer.commit_transaction(30)


def lag_gauges(text: str) -> dict[str, dict[str, float]]:
    """Metric → partition → value of the scorer's two lag gauges."""
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("streamscore_scorer_consumer_lag_offsets", "streamscore_scorer_consumer_lag_seconds"):
                found.setdefault(s.name, {})[s.labels["partition"]] = s.value
    return found


def test_scorer_gauges_and_streamscore_lag_agree_on_zero_past_commit_markers_and_top_shows_it(
    scorer_env: ScorerEnv, reader: OutputReader
) -> None:
    topics, kafka = scorer_env.topics, scorer_env.kafka
    records = mixed(1_200)
    produce_in_transactions(kafka, topics.transactions.name, records, per_transaction=200)
    scorer = scorer_env.process(SCORER_LAG_INTERVAL_S="0.5").start()
    group = topics.transactions.name.removesuffix("transactions") + DEFAULT_SCORER_GROUP
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "TOPICS_PREFIX": group.removesuffix(DEFAULT_SCORER_GROUP),
    }
    try:
        valid = sum(r.expected_reason is None for r in records)
        reader.wait_until(lambda _: len(reader.on(topics.scores.name)) >= valid, 120, "every score")
        # Every partition got records in several transactions: its committed offset sits on the last commit marker,
        # one below the read_committed log end. Kafka's own tool says LAG 1 there; both of ours say 0.
        deadline = time.monotonic() + 30
        while True:
            gauges = lag_gauges(scorer_env.metrics())
            offsets = gauges.get("streamscore_scorer_consumer_lag_offsets", {})
            if (len(offsets) == 6 and not any(offsets.values())) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert offsets == {str(p): 0.0 for p in range(6)}, scorer.tail()
        assert gauges["streamscore_scorer_consumer_lag_seconds"] == {str(p): 0.0 for p in range(6)}
        with LagReader(kafka) as lag_reader:
            report = lag_reader.read(group, [topics.transactions.name])
        assert len(report.partitions) == 6
        for row in report.partitions:
            assert row.log_end_offset is not None and row.current_offset == row.log_end_offset - 1, row
            assert (row.lag, row.lag_seconds) == (0, 0.0), row
        cli = CliRunner().invoke(app, ["lag", "--json"], env=env)
        assert cli.exit_code == 0, cli.output
        assert json.loads(cli.output)["total_lag"] == 0

        # `top --once` while traffic flows: two scrapes 1 s apart give real rates.
        traffic = threading.Thread(
            target=produce, args=(kafka, topics.transactions.name, mixed(3_000, every=1_000)), kwargs={"rate": 400}
        )
        traffic.start()
        try:
            time.sleep(2.0)
            down = "http://127.0.0.1:1/metrics"
            url = f"http://127.0.0.1:{scorer_env.metrics_port}/metrics"
            top = CliRunner().invoke(
                app,
                ["top", "--once", "--scorer", url, "--features", down, "--monitor", down],
                env={**env, "COLUMNS": "200"},
            )
        finally:
            traffic.join(60)
        assert scorer.terminate() == 0, scorer.tail()
    finally:
        scorer.stop()
    out = top.output
    assert top.exit_code == 0, out
    assert "scorer ready" in out and "features down" in out and "monitor down" in out, out
    scored_line = next(line for line in out.splitlines() if line.strip().startswith("scored"))
    total, per_second = scored_line.split()[1:3]
    assert int(total.replace(",", "")) >= valid and float(per_second.removesuffix("/s").replace(",", "")) > 0, out
    assert f"lag of group {group}" in out, out
    lag_rows = [line.split() for line in out.splitlines() if line.startswith(topics.transactions.name)]
    assert sorted(int(cells[1]) for cells in lag_rows) == list(range(6)), out
    versions = {cells[0]: cells[2] for cells in (line.split() for line in out.splitlines()) if len(cells) >= 5}
    assert versions.get("champion") == "1" and versions.get("challenger") == "2", out
    assert "p99 end-to-end latency:" in out and " ms last " in out, out
