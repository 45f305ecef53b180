"""The stream scorer end to end, as a subprocess against the real broker and Redis: exactly once, dead letters,
SIGKILL/SIGTERM, traffic split, shadow isolation and hot reload."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamscore.contracts import Score
from streamscore.infra import process
from streamscore.infra import redis as redis_server
from streamscore.infra.settings import InfraSettings
from streamscore.settings import KafkaSettings, RedisSettings
from streamscore.topics import TopicRegistry
from tests.support.models import linear_weights, logistic_onnx, register
from tests.support.scoring import (
    CASE,
    MODEL,
    OutputReader,
    Record,
    ScorerEnv,
    free_port,
    make_scorer_env,
    mixed,
    produce,
)


@pytest.fixture
def scorer_env(tmp_path: Path, kafka: KafkaSettings, redis_settings: RedisSettings, topics: TopicRegistry) -> ScorerEnv:
    return make_scorer_env(tmp_path, kafka, redis_settings, topics)


@pytest.fixture
def reader(scorer_env: ScorerEnv) -> Iterator[OutputReader]:
    t = scorer_env.topics
    r = OutputReader(scorer_env.kafka, [t.scores.name, t.scores_shadow.name, t.dlq.name])
    yield r
    r.close()


def check_exactly_once(records: list[Record], reader: OutputReader, topics: TopicRegistry) -> dict[str, Score]:
    """Every valid record scored exactly once, every defective one dead-lettered once with its reason, none in
    both; returns the live scores by event id."""
    valid_ids = {r.event_id for r in records if r.expected_reason is None}
    scores = [Score.model_validate_json(o.value or b"") for o in reader.on(topics.scores.name)]
    counts = Counter(s.event_id for s in scores)
    duplicates = {e: c for e, c in counts.items() if c > 1}
    assert not duplicates, f"{len(duplicates)} events scored more than once, e.g. {list(duplicates.items())[:3]}"
    assert set(counts) == valid_ids, f"lost {len(valid_ids - set(counts))}, unexpected {len(set(counts) - valid_ids)}"

    letters = reader.on(topics.dlq.name)
    expected = Counter(r.expected_reason for r in records if r.expected_reason is not None)
    assert Counter(o.headers[CASE].decode() for o in letters) == expected  # each defective record once
    for o in letters:
        letter = o.dead_letter()
        assert letter.error_class.value == o.headers[CASE].decode()
        assert letter.original_topic == topics.transactions.name
        assert letter.consumer_group.endswith("streamscore-scorer")
        assert len(letter.error_message.encode()) <= 1024
    # None in both: a defective record's event id (when it has one) never has a score.
    assert not {r.event_id for r in records if r.expected_reason} & set(counts) - valid_ids
    return {s.event_id: s for s in scores}


def test_valid_events_scored_exactly_once_defects_dead_lettered_split_sticky_shadow_isolated(
    scorer_env: ScorerEnv, reader: OutputReader
) -> None:
    records = mixed(10_000)  # 1 % defective, 12 kinds
    assert len({r.expected_reason for r in records if r.expected_reason}) >= 8
    produce(scorer_env.kafka, scorer_env.topics.transactions.name, records)
    scorer = scorer_env.process().start()
    try:
        valid = sum(r.expected_reason is None for r in records)
        reader.wait_until(
            lambda seen: (
                sum(o.topic == scorer_env.topics.scores.name for o in seen) >= valid
                and sum(o.topic == scorer_env.topics.dlq.name for o in seen) >= len(records) - valid
            ),
            180,
            "all scores and dead letters",
        )
        metrics = scorer_env.metrics()
        assert scorer.terminate() == 0, scorer.tail()
        reader.poll_for(2)
    finally:
        scorer.stop()
    by_id = check_exactly_once(records, reader, scorer_env.topics)

    # Defective records keep their original bytes and key in the DLQ.
    originals = {(r.headers[1][1], r.value) for r in records if r.expected_reason and r.expected_reason != "oversize"}
    letters = reader.on(scorer_env.topics.dlq.name)
    assert {(o.headers[CASE], o.value) for o in letters if o.headers[CASE] != b"oversize"} == originals
    oversize = [o for o in letters if o.headers[CASE] == b"oversize"]
    assert oversize and all(o.dead_letter().truncated and o.dead_letter().payload_size > 64 * 1024 for o in oversize)

    # Split: sticky per account, shares near 80/20; every score names its model, version, variant, experiment.
    live = list(by_id.values())
    variants_of: dict[str, set[str]] = {}
    for s in live:
        variants_of.setdefault(s.account_id, set()).add(s.variant)
        assert (s.model_name, s.experiment_id) == (MODEL, "exp-1")
        assert (s.variant, s.model_version) in {("champion", "1"), ("challenger", "2")}
    assert all(len(v) == 1 for v in variants_of.values())
    share = sum(v == {"challenger"} for v in variants_of.values()) / len(variants_of)
    assert 0.2 - 0.072 < share < 0.2 + 0.072  # 500 accounts: ± 4 standard errors

    # Shadow scores only on scores.shadow, never on scores; about 30 % of the accounts.
    shadow = [Score.model_validate_json(o.value or b"") for o in reader.on(scorer_env.topics.scores_shadow.name)]
    assert shadow and {s.variant for s in shadow} == {"shadow"}
    assert "shadow" not in {s.variant for s in live}
    assert len({s.event_id for s in shadow}) == len(shadow)
    assert {s.event_id for s in shadow} <= set(by_id)
    shadow_share = len({s.account_id for s in shadow}) / len(variants_of)
    assert 0.3 - 0.09 < shadow_share < 0.3 + 0.09

    # Headers of a score: content type, schema version, model version.
    one = reader.on(scorer_env.topics.scores.name)[0]
    assert one.headers["content-type"] == b"application/json"
    assert one.headers["schema-version"] == b"1"
    assert one.headers["model-version"] in {b"1", b"2"}
    assert one.key == Score.model_validate_json(one.value or b"").account_id.encode()
    # Metrics count what happened.
    assert 'streamscore_scorer_dead_letters_total{reason="oversize"}' in metrics
    assert "streamscore_scorer_end_to_end_latency_seconds_bucket" in metrics
    # Every committed score counted once by decision (with the version that decided) and once by feature status.
    scored: Counter[tuple[str, str]] = Counter()
    decided: Counter[tuple[str, str]] = Counter()
    statuses: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            key = (sample.labels.get("variant", ""), sample.labels.get("kind", ""))
            if sample.name == "streamscore_scorer_scored_total":
                scored[key] += int(sample.value)
            elif sample.name == "streamscore_scorer_decisions_total":
                decided[key] += int(sample.value)
                assert sample.labels["decision"] in {"approve", "review", "decline"}
                assert (key[0], sample.labels["model_version"]) in {
                    ("champion", "1"),
                    ("challenger", "2"),
                    ("shadow", "2"),
                }
            elif sample.name == "streamscore_scorer_feature_status_total":
                statuses[key] += int(sample.value)
                assert sample.labels["status"] in {"ok", "missing", "default"}
    assert scored[("champion", "live")] + scored[("challenger", "live")] == len(live)
    assert decided == statuses == scored and scored[("shadow", "shadow")] == len(shadow)


def test_sigkill_three_times_loses_and_duplicates_nothing(scorer_env: ScorerEnv, reader: OutputReader) -> None:
    records = mixed(12_000)
    producer = threading.Thread(
        target=produce, args=(scorer_env.kafka, scorer_env.topics.transactions.name, records), kwargs={"rate": 800}
    )
    producer.start()
    scorer = scorer_env.process()
    try:
        for pause in (4.0, 6.5, 3.0):  # different moments: start-up, mid-stream, shortly after a restart
            scorer.start()
            time.sleep(pause)
            scorer.kill()
        scorer.start()
        producer.join()
        valid = sum(r.expected_reason is None for r in records)
        reader.wait_until(
            lambda seen: sum(o.topic == scorer_env.topics.scores.name for o in seen) >= valid,
            240,
            "all scores after three kills",
        )
        assert scorer.terminate() == 0, scorer.tail()  # SIGTERM: clean exit
        reader.poll_for(3)
    finally:
        scorer.stop()
    assert scorer.starts == 4
    check_exactly_once(records, reader, scorer_env.topics)


def test_alias_move_swaps_models_between_batches_and_a_broken_version_keeps_the_old_one(
    scorer_env: ScorerEnv, reader: OutputReader
) -> None:
    first, second = mixed(3_000, every=10_000), mixed(6_000, every=10_000)[3_000:]
    total = sum(r.expected_reason is None for r in first + second)
    scorer = scorer_env.process().start()
    try:
        produce(scorer_env.kafka, scorer_env.topics.transactions.name, first, rate=1500)
        reader.wait_until(
            lambda seen: sum(o.topic == scorer_env.topics.scores.name for o in seen) >= 3_000, 120, "first half"
        )
        # A new champion, and a challenger whose file does not match its recorded checksum.
        register(scorer_env.tracking_uri, MODEL, logistic_onnx(*linear_weights(3)), alias="champion")
        register(scorer_env.tracking_uri, MODEL, logistic_onnx(*linear_weights(4)), alias="challenger", sha256="0" * 64)
        mover = threading.Thread(
            target=produce,
            args=(scorer_env.kafka, scorer_env.topics.transactions.name, second),
            kwargs={"rate": 1000},
        )
        mover.start()
        mover.join()
        reader.wait_until(
            lambda seen: sum(o.topic == scorer_env.topics.scores.name for o in seen) >= total, 120, "second half"
        )
        metrics = scorer_env.metrics()
        assert scorer.terminate() == 0, scorer.tail()
        reader.poll_for(1)
    finally:
        scorer.stop()
    by_id = check_exactly_once(first + second, reader, scorer_env.topics)
    ordered = [by_id[r.event_id or ""] for r in first + second if r.expected_reason is None]
    champion = [s for s in ordered if s.variant == "champion"]
    versions = [s.model_version for s in champion]
    assert versions[0] == "1" and versions[-1] == "3", Counter(versions)
    # Per partition, in offset order, the champion's version switches once and never back.
    for partition in range(6):
        seq = [
            Score.model_validate_json(o.value or b"").model_version
            for o in sorted(reader.on(scorer_env.topics.scores.name), key=lambda o: o.offset)
            if o.partition == partition and o.headers["model-version"] in {b"1", b"3"}
        ]
        assert seq == sorted(seq), f"partition {partition} switched back and forth"
    # The broken challenger version never served; the old one kept serving and the failure is counted.
    challenger_versions = {s.model_version for s in by_id.values() if s.variant == "challenger"}
    assert challenger_versions == {"2"}
    assert 'streamscore_scorer_model_reload_failures_total{variant="challenger"}' in metrics
    failures = [
        line for line in metrics.splitlines() if line.startswith("streamscore_scorer_model_reload_failures_total{")
    ]
    assert any(float(line.split()[-1]) >= 1 for line in failures if 'variant="challenger"' in line), failures


def test_a_bad_model_file_at_start_up_exits_non_zero_before_consuming(scorer_env: ScorerEnv, tmp_path: Path) -> None:
    register(scorer_env.tracking_uri, MODEL, b"this is not an onnx graph", alias="champion")
    scorer = scorer_env.process("bad")
    scorer.start()
    code = scorer.wait(120)
    assert code == 2
    assert "cannot start" in scorer.tail() and "ONNX Runtime refused" in scorer.tail()


def test_redis_hung_then_down_is_retried_in_the_group_and_nothing_is_dead_lettered_or_lost(
    scorer_env: ScorerEnv, reader: OutputReader, tmp_path: Path
) -> None:
    settings = InfraSettings(data_dir=tmp_path / "own-redis", redis_port=free_port())
    own = redis_server.start(settings)
    redis_server.wait_ready(own, 20)
    records = mixed(6_000, every=100_000)  # all valid
    valid = [r for r in records if r.expected_reason is None]
    scorer = scorer_env.process(
        REDIS_PORT=str(settings.redis_port), SCORER_RETRY_MAX_MS="1000", SCORER_SESSION_TIMEOUT_MS="6000"
    ).start()
    topic = scorer_env.topics.transactions.name

    def scored() -> int:
        return len(reader.on(scorer_env.topics.scores.name))

    try:
        produce(scorer_env.kafka, topic, records[:2_000])
        reader.wait_until(lambda _: scored() >= 2_000, 120, "scores before the outage")
        os.kill(own.pid, signal.SIGSTOP)  # hung: connections open, no answers (read timeouts)
        produce(scorer_env.kafka, topic, records[2_000:4_000])
        reader.poll_for(8)  # longer than the 6 s session timeout: leaving the group would revoke partitions
        hung = scored()
        os.kill(own.pid, signal.SIGCONT)
        process.stop(own)  # down: connection refused
        reader.poll_for(1)
        at_stop = scored()  # (between SIGCONT and the stop, the held batch may have been scored)
        produce(scorer_env.kafka, topic, records[4_000:])
        reader.poll_for(4)
        down = scored()
        own = redis_server.start(settings)
        redis_server.wait_ready(own, 20)
        reader.wait_until(lambda _: scored() >= len(valid), 120, "every score after Redis came back")
        metrics = scorer_env.metrics()
        assert scorer.terminate() == 0, scorer.tail()
        reader.poll_for(1)
    finally:
        scorer.stop()
        if process.is_running(own):
            os.kill(own.pid, signal.SIGCONT)
            process.stop(own)
    assert hung == 2_000 and down == at_stop, (hung, at_stop, down)  # nothing scored without features...
    check_exactly_once(records, reader, scorer_env.topics)  # ...nothing lost, nothing duplicated
    assert not reader.on(scorer_env.topics.dlq.name)  # and no dead letter for an infrastructure fault
    log = scorer.log.read_text().split("stopping (SIGTERM)")[0]  # close() revokes, later
    assert "feature store unavailable" in log
    assert "revoked" not in log and log.count("assigned [") == 1, "the scorer left its group during the outage"
    retries = [
        line
        for line in metrics.splitlines()
        if line.startswith('streamscore_scorer_infra_retries_total{dependency="feature_store"}')
    ]
    assert retries and float(retries[0].split()[-1]) >= 3


def test_at_least_once_mode_scores_everything_and_health_answers(scorer_env: ScorerEnv, reader: OutputReader) -> None:
    records = mixed(3_000)
    produce(scorer_env.kafka, scorer_env.topics.transactions.name, records)
    scorer = scorer_env.process(SCORER_DELIVERY="at_least_once", SCORER_LAG_INTERVAL_S="0.5").start()
    try:
        valid = sum(r.expected_reason is None for r in records)
        reader.wait_until(lambda _: len(reader.on(scorer_env.topics.scores.name)) >= valid, 120, "scores")
        with urllib.request.urlopen(f"http://127.0.0.1:{scorer_env.metrics_port}/healthz", timeout=5) as response:
            health = json.loads(response.read())
        # The lag gauges are the group's view, measured every 0.5 s from the committed offsets: they reach 0.
        deadline = time.monotonic() + 60  # generous: a loaded machine delays the watcher thread
        while True:
            metrics = scorer_env.metrics()
            lag = [line for line in metrics.splitlines() if line.startswith("streamscore_scorer_consumer_lag_offsets{")]
            if (len(lag) == 6 and all(float(line.split()[-1]) == 0 for line in lag)) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert scorer.terminate() == 0, scorer.tail()
        reader.poll_for(1)
    finally:
        scorer.stop()
    check_exactly_once(records, reader, scorer_env.topics)  # a clean run duplicates nothing either
    assert health["status"] == "ok" and health["delivery"] == "at_least_once"
    assert health["models"] == {"champion": "1", "challenger": "2", "shadow": "2"}
    assert len(lag) == 6 and all(float(line.split()[-1]) == 0 for line in lag), lag
    assert "streamscore_scorer_model_info{" in metrics and 'model_version="1"' in metrics


def test_a_second_instance_joining_and_the_first_leaving_rebalance_without_loss_or_duplicates(
    scorer_env: ScorerEnv, reader: OutputReader
) -> None:
    records = mixed(9_000)
    producer = threading.Thread(
        target=produce, args=(scorer_env.kafka, scorer_env.topics.transactions.name, records), kwargs={"rate": 600}
    )
    first = scorer_env.process("first", SCORER_SESSION_TIMEOUT_MS="6000").start()
    second = scorer_env.process(
        "second", SCORER_INSTANCE_ID="it-2", SCORER_METRICS_PORT="0", SCORER_SESSION_TIMEOUT_MS="6000"
    )
    producer.start()
    try:
        reader.wait_until(lambda _: len(reader.on(scorer_env.topics.scores.name)) > 500, 60, "the first scores")
        second.start()  # scale out: cooperative-sticky moves some partitions to it mid-stream
        deadline = time.monotonic() + 60
        while "assigned [" not in second.log.read_text() and time.monotonic() < deadline:
            reader.poll_for(0.5)
        reader.poll_for(2)
        assert first.terminate() == 0, first.tail()  # scale in: its partitions go to the second
        producer.join()
        valid = sum(r.expected_reason is None for r in records)
        reader.wait_until(lambda _: len(reader.on(scorer_env.topics.scores.name)) >= valid, 180, "every score")
        assert second.terminate() == 0, second.tail()
        reader.poll_for(1)
    finally:
        first.stop()
        second.stop()
    check_exactly_once(records, reader, scorer_env.topics)
    assert "revoked" in first.log.read_text() and "assigned" in second.log.read_text()
    second_partitions = {o.partition for o in reader.on(scorer_env.topics.scores.name)}
    assert second_partitions == set(range(6))
