"""Helpers of the scorer's integration tests: transactions (valid and defective), a scorer subprocess, and a
read_committed reader of its outputs."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from streamscore.contracts import CONTENT_TYPE_JSON, DeadLetter, Transaction, headers_for
from streamscore.kafka import consumer_config, producer_config
from streamscore.settings import KafkaSettings, RedisSettings
from streamscore.topics import TopicRegistry
from tests.support.models import linear_weights, logistic_onnx, register

START = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
"""A day before the test run, on the hour: every receiver refuses event times outside a window around its clock
(docs/contracts.md: 5 minutes ahead, 7 days behind), so test events are dated relative to now; `valid(i)` adds
`i` seconds (a few hours at most)."""
CASE = "test-case"
"""Header naming the defect a test injected (the DLQ keeps original headers, so it comes back)."""


def valid(i: int, accounts: int = 500) -> Transaction:
    return Transaction(
        event_id=f"ev-{i:07d}",
        account_id=f"acct-{(i * 7919) % accounts:05d}",
        merchant_id=f"m-{i % 37:03d}",
        merchant_category="5411",
        amount=round(5.0 + (i % 400) * 1.37, 2),
        currency="EUR",
        country="DE",
        channel=("pos", "ecommerce", "contactless")[i % 3],
        device_id=f"dev-{i % 11}",
        event_time=START + timedelta(seconds=i),
    )


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]] = field(default_factory=list)
    expected_reason: str | None = None
    """None = valid: must be scored exactly once."""
    event_id: str | None = None


def _body(i: int) -> dict[str, Any]:
    return dict(json.loads(valid(i).to_json()))


def defective(i: int, kind: str) -> Record:
    """A record with one defect of `kind` (its DeadLetterReason value)."""
    base = _body(i)
    key = base["account_id"].encode()
    headers: list[tuple[str, str | bytes | None]] = [
        ("content-type", CONTENT_TYPE_JSON.encode()),
        (CASE, kind.encode()),
    ]
    value: bytes | None
    if kind == "not_json":
        value = b'{"event_id": "broken'
    elif kind == "not_utf8":
        value = b'{"event_id": "\xff\xfe"}'
    elif kind == "schema_invalid":
        del base["merchant_id"]
        value = json.dumps(base).encode()
    elif kind == "unknown_schema_version":
        base["schema_version"] = 99
        value = json.dumps(base).encode()
    elif kind == "non_finite_number":
        base["amount"] = math.nan
        value = json.dumps(base).encode()  # Python writes the non-standard NaN literal
    elif kind == "out_of_range":
        base["amount"] = -12.5
        value = json.dumps(base).encode()
    elif kind == "missing_key":
        value = json.dumps(base).encode()
        key = b""
    elif kind == "oversize":
        base["padding"] = "x" * (70 * 1024)
        value = json.dumps(base).encode()
    elif kind == "invalid_code":
        base["currency"] = "XYZ"
        value = json.dumps(base).encode()
    elif kind == "key_mismatch":
        value = json.dumps(base).encode()
        key = b"someone-else"
    elif kind == "invalid_timestamp":
        base["event_time"] = START.replace(tzinfo=None).isoformat()  # no timezone
        value = json.dumps(base).encode()
    elif kind == "unsupported_content_type":
        value = json.dumps(base).encode()
        headers[0] = ("content-type", b"text/csv")
    elif kind == "event_time_out_of_window":
        base["event_time"] = "2100-01-01T00:00:00Z"  # issue 12: froze an account's features for 74 years
        value = json.dumps(base).encode()
    else:
        raise ValueError(kind)
    return Record(key or None, value, headers, expected_reason=kind, event_id=base.get("event_id"))


DEFECT_KINDS = (
    "not_json",
    "not_utf8",
    "schema_invalid",
    "unknown_schema_version",
    "non_finite_number",
    "out_of_range",
    "missing_key",
    "oversize",
    "invalid_code",
    "key_mismatch",
    "invalid_timestamp",
    "unsupported_content_type",
    "event_time_out_of_window",
)


def mixed(n: int, every: int = 100) -> list[Record]:
    """`n` records; every `every`-th one defective, cycling through DEFECT_KINDS."""
    out: list[Record] = []
    for i in range(n):
        if i % every == every // 2:
            out.append(defective(i, DEFECT_KINDS[(i // every) % len(DEFECT_KINDS)]))
        else:
            tx = valid(i)
            out.append(Record(tx.account_id.encode(), tx.to_json(), headers_for(tx), event_id=tx.event_id))
    return out


def produce(kafka: KafkaSettings, topic: str, records: list[Record], *, rate: float = 0.0) -> None:
    """Produce `records` in order (idempotent, murmur2); `rate` > 0 paces them (records per second)."""
    producer = Producer(producer_config(kafka, "test-producer", linger_ms=5))
    started = time.monotonic()
    for n, r in enumerate(records):
        if rate > 0:
            wait = started + n / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        while True:
            try:
                producer.produce(topic, r.value, r.key, headers=r.headers)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0


@dataclass
class Output:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    def json(self) -> dict[str, Any]:
        assert self.value is not None
        data = json.loads(self.value)
        assert isinstance(data, dict)
        return data

    def dead_letter(self) -> DeadLetter:
        return DeadLetter.from_headers(list(self.headers.items()))


def _header_dict(headers: Any) -> dict[str, bytes]:
    pairs: list[tuple[str, str | bytes | None]] = list(headers or [])
    return {k: v if isinstance(v, bytes) else (v or "").encode() for k, v in pairs}


class OutputReader:
    """read_committed consumer of the given topics from the beginning; accumulates everything it has seen."""

    def __init__(self, kafka: KafkaSettings, topics: list[str]) -> None:
        self.consumer = Consumer(consumer_config(kafka, f"test-reader-{uuid.uuid4().hex[:8]}", "test-reader"))
        self.consumer.subscribe(topics)
        self.seen: list[Output] = []

    def poll_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for m in self.consumer.consume(5000, 0.2):
                if m.error() is None:
                    self.seen.append(
                        Output(
                            m.topic() or "",
                            m.partition() or 0,
                            m.offset() or 0,
                            m.key(),
                            m.value(),
                            _header_dict(m.headers()),
                        )
                    )

    def wait_until(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll_for(0.5)
            if predicate(self.seen):
                return
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def on(self, topic: str) -> list[Output]:
        return [o for o in self.seen if o.topic == topic]

    def close(self) -> None:
        self.consumer.close()


def changelog_image(kafka: KafkaSettings, topic: str, seconds: float = 5.0) -> dict[str, Any]:
    """The latest value of every key of a Faust table's changelog (JSON keys and values; None: deleted)."""
    reader = OutputReader(kafka, [topic])
    reader.poll_for(seconds)
    latest: dict[str, Any] = {}
    for o in reader.seen:
        key = json.loads(o.key or b"null")
        latest[str(key)] = None if o.value is None else json.loads(o.value)
    reader.close()
    return latest


class ScorerProcess:
    """`python -m scorer` as a child process with the given environment; logs go to a file."""

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        self.env = {**os.environ, **env}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> ScorerProcess:
        self.starts += 1
        handle = self.log.open("ab")
        handle.write(f"\n===== start {self.starts} =====\n".encode())
        handle.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scorer"], env=self.env, stdout=handle, stderr=subprocess.STDOUT, cwd=Path.cwd()
        )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(30)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def batched(items: list[Record], size: int) -> Iterator[list[Record]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


MODEL = "fraud-detector"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ScorerEnv:
    env: dict[str, str]
    tracking_uri: str
    topics: TopicRegistry
    kafka: KafkaSettings
    metrics_port: int
    tmp: Path

    def process(self, name: str = "scorer", **extra: str) -> ScorerProcess:
        return ScorerProcess({**self.env, **extra}, self.tmp / f"{name}.log")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())


def make_scorer_env(
    tmp_path: Path,
    kafka: KafkaSettings,
    redis_settings: RedisSettings,
    topics: TopicRegistry,
    *,
    champion_tags: dict[str, str] | None = None,
) -> ScorerEnv:
    """Two registered versions (champion 1, challenger 2) in a private MLflow, and the environment of a scorer
    reading this test's topics and Redis with a 80/20 split plus a 30 % shadow of the challenger. `champion_tags`:
    more tags of version 1 (e.g. its operating point; without, both versions decide with the defaults)."""
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts = tmp_path / "artifacts"
    register(
        tracking_uri,
        MODEL,
        logistic_onnx(*linear_weights(1)),
        alias="champion",
        artifact_dir=artifacts,
        tags=champion_tags,
    )
    register(tracking_uri, MODEL, logistic_onnx(*linear_weights(2)), alias="challenger", artifact_dir=artifacts)
    port = free_port()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "TOPICS_PREFIX": topics.transactions.name.removesuffix("transactions"),
        "REDIS_HOST": redis_settings.host,
        "REDIS_PORT": str(redis_settings.port),
        "FEAST_PROJECT": f"p{uuid.uuid4().hex[:10]}",
        "FEAST_REGISTRY_PATH": str(tmp_path / "feast" / "registry.db"),
        "FEAST_DATA_DIR": str(tmp_path / "features"),
        "REGISTRY_TRACKING_URI": tracking_uri,
        "REGISTRY_CACHE_DIR": str(tmp_path / "cache"),
        "SCORER_INSTANCE_ID": "it-1",
        "SCORER_METRICS_PORT": str(port),
        "SCORER_VARIANTS": json.dumps(
            [
                {"name": "champion", "alias": "champion", "weight": 0.8},
                {"name": "challenger", "alias": "challenger", "weight": 0.2},
            ]
        ),
        "SCORER_SHADOWS": json.dumps([{"name": "shadow", "alias": "challenger", "share": 0.3}]),
        "SCORER_RELOAD_INTERVAL_S": "1",
        "SCORER_PROGRESS_INTERVAL_S": "2",
        "LOG_LEVEL": "INFO",
    }
    return ScorerEnv(env, tracking_uri, topics, kafka, port, tmp_path)
