"""How long the feature processor takes to restart as its history grows (issue 16, point 4).

    python -m bench.restart                    # 300 events/s over 5 000 accounts; restarts at 2, 5, 10, 20, 60 min
    python -m bench.restart --at 1,2           # a quick look

It starts its own broker and Redis (`LocalStack`, free loopback ports, stopped by pid at the end), applies the Feast
repository to a project of its own and starts `python -m stream_processors` on a fresh topic set. A producer thread
sends generated transactions at `--rate` per second, event time = send time (the demo's live world is 300/s), the
whole run. Right after the first start, and again when the traffic has run each of the `--at` minutes, the worker is
stopped (SIGTERM, as a deploy does) and started again, traffic flowing: the restart is timed from the new process's
start to its table being recovered (`/healthz` `recovered` and no rebalance: what replays the changelog) and to
`/readyz` 200. Beside each: the changelog's records as a restart reads them (consumed from the beginning), the
worker's resident memory, the load average. The first restart, with an empty changelog, is the start-up floor
(imports, the group join). Prints one JSON line per restart and writes them all to `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from bench._data import world
from bench._processors import process_memory_kib
from bench.feature_drain import ROOT, free_ports, fresh_setup, worker_env
from producers.generator import GeneratorConfig, TransactionGenerator
from streamscore.contracts import headers_for
from streamscore.kafka import producer_config
from streamscore.settings import KafkaSettings

PARTITIONS = 6


@dataclass
class Restart:
    traffic_min: float
    """Minutes of traffic before this restart (0: the first restart, an empty changelog)."""
    events_sent: int
    changelog_records: int
    """Records of the table's changelog a restart reads (from the log start to its end, after compaction)."""
    changelog_mib: float
    """Their values' size: each is an account's state, its last 24 h of events included."""
    changelog_offsets: int
    """Records ever written to the changelog (its end offsets): what a restart would read without compaction."""
    to_recovered_s: float
    to_ready_s: float
    rss_mib_before: float
    rss_mib_after: float
    load: float


class Traffic:
    """Generated transactions at `rate` per second from a thread, event time = send time."""

    def __init__(self, kafka: KafkaSettings, topic: str, rate: float, accounts: int, seed: int) -> None:
        self.kafka, self.topic, self.rate, self.accounts, self.seed = kafka, topic, rate, accounts, seed
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        try:
            producer = Producer(producer_config(self.kafka, "bench-restart", linger_ms=20))
            generator = TransactionGenerator(
                world(self.seed, self.accounts, max(self.accounts // 10, 10)),
                GeneratorConfig(seed=self.seed, rhythm=False),
            )
            began = time.monotonic()
            # Event times from now on at `rate` per second; each is sent when its time comes.
            for event in generator.stream(datetime.now(UTC), self.rate):
                if self._stop.is_set():
                    break
                tx = event.transaction
                wait = began + self.sent / self.rate - time.monotonic()
                if wait > 0:
                    producer.poll(0)
                    if self._stop.wait(wait):
                        break
                producer.produce(self.topic, tx.to_json(), tx.account_id.encode(), headers=list(headers_for(tx)))
                self.sent += 1
            producer.flush(60)
        except BaseException as exc:
            self.error = exc
            raise


def health(port: int, path: str) -> tuple[int | None, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2.0) as response:
            return int(response.status), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (OSError, ValueError):
        return None, {}


def changelog_records(kafka: KafkaSettings, topic: str) -> tuple[int, int, int]:
    """(records a reader from the beginning gets, their values' bytes, the sum of end offsets)."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"bench-restart-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in todo])
        count, size, deadline = 0, 0, time.monotonic() + 600
        while todo and time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=1.0):
                if message.error() is not None:
                    continue
                count += 1
                size += len(message.value() or b"")
                partition, offset = message.partition(), message.offset()
                if partition is not None and offset is not None and offset + 1 >= ends[partition]:
                    todo.discard(partition)
        return count, size, sum(ends.values())
    finally:
        consumer.close()


class Worker:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stream_processors"],
                cwd=ROOT,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        return time.monotonic()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def rss_mib(self) -> float:
        if self.process is None or self.process.poll() is not None:
            return 0.0
        return round(process_memory_kib(self.process.pid).get("VmRSS", 0) / 1024, 1)

    def wait(self, started: float, timeout_s: float = 900.0) -> tuple[float, float]:
        """Seconds from `started` to recovered (and no rebalance), and to ready."""
        assert self.process is not None
        recovered: float | None = None
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.process.returncode}; see {self.log}")
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"not ready within {timeout_s:.0f} s; see {self.log}")
            status, body = health(self.port, "/healthz")
            if recovered is None and body.get("recovered") and not body.get("rebalancing"):
                recovered = time.monotonic() - started
            if recovered is not None and status == 200:
                return recovered, time.monotonic() - started
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--at", default="2,5,10,20,60", help="minutes of traffic at which to restart (ascending)")
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--accounts", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    marks = [float(m) for m in args.at.split(",")]

    from streamscore.infra import LocalStack
    from streamscore.infra.settings import InfraSettings

    results: list[Restart] = []
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        work = Path(tmp)
        kafka_port, controller_port, redis_port, port = free_ports(4)
        stack = LocalStack(
            InfraSettings(
                data_dir=work / "stack", kafka_port=kafka_port, controller_port=controller_port, redis_port=redis_port
            )
        )
        stack.up()
        worker: Worker | None = None
        traffic: Traffic | None = None
        try:
            kafka, redis = stack.settings.kafka_settings(), stack.settings.redis_settings()
            tag, registry, feast = fresh_setup(kafka, redis, work, "restart")
            env = worker_env(kafka, redis, feast, tag, port, work, {})
            changelog = f"bench.drain.{tag}.drain-{tag}-account-state-changelog"
            worker = Worker(env, port, work / "worker.log")
            worker.wait(worker.start())
            traffic = Traffic(kafka, registry.transactions.name, args.rate, args.accounts, args.seed)
            began = time.monotonic()
            for mark in [0.0, *marks]:
                while time.monotonic() - began < mark * 60:
                    if traffic.error is not None:
                        raise RuntimeError(f"the traffic stopped: {traffic.error!r}")
                    time.sleep(1.0)
                rss_before = worker.rss_mib()
                worker.stop()
                records, size, offsets = changelog_records(kafka, changelog)
                started = worker.start()
                to_recovered, to_ready = worker.wait(started)
                result = Restart(
                    traffic_min=mark,
                    events_sent=traffic.sent,
                    changelog_records=records,
                    changelog_mib=round(size / 2**20, 1),
                    changelog_offsets=offsets,
                    to_recovered_s=round(to_recovered, 2),
                    to_ready_s=round(to_ready, 2),
                    rss_mib_before=rss_before,
                    rss_mib_after=worker.rss_mib(),
                    load=round(os.getloadavg()[0], 2),
                )
                results.append(result)
                print(json.dumps(asdict(result)), flush=True)
                if mark == 0.0:
                    traffic.start()
                    began = time.monotonic()
        finally:
            if traffic is not None:
                traffic.stop()
            if worker is not None:
                worker.stop()
            stack.down()
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"rate": args.rate, "accounts": args.accounts, "restarts": [asdict(r) for r in results]}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
