"""How fast the feature processor drains a backlog: events/s and CPU µs per event of `python -m stream_processors`.

    python -m bench.feature_drain                                  # 100 000 events, 5 000 accounts, 3 rounds
    python -m bench.feature_drain --events 50000 --rounds 1 --profile cprofile   # + where the time goes
    python -m bench.feature_drain --profile py-spy                 # native-aware sampling (needs ptrace)

It starts its own broker and Redis with the project's infra code (`LocalStack`, free loopback ports; stopped by pid
at the end), applies the Feast repository to a project of its own, produces the backlog (generated transactions,
`bench._data.transactions`, event times ending now) to a fresh transactions topic, and only then starts the worker.
A round is timed from the worker's first processed event to the moment its consumer group has committed to the end
of the topic (every event's snapshot pushed: offsets are acknowledged only after the push). The worker's CPU time
(user + system, from /proc) over the same span, divided by the events, is the CPU cost per event. Each round uses a
fresh topic set and app id (a cold table), so rounds are independent. The machine's load average is reported with
the results: this is a shared 2-core machine, read medians.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from bench._data import transactions
from feature_repo.settings import FeastSettings
from feature_repo.store import apply, open_store
from streamscore.kafka import delete_topics, ensure_topics, producer_config
from streamscore.settings import KafkaSettings, RedisSettings
from streamscore.topics import TopicRegistry

ROOT = Path(__file__).resolve().parents[1]
OWN_PREFIXES = ("KAFKA_", "TOPICS_", "REDIS_", "FEAST_", "FEATURES_", "INFRA_")


@dataclass
class Round:
    events: int
    seconds: float
    events_per_s: float
    cpu_us_per_event: float
    pushes: float
    mean_push_ms: float
    load_before: float
    load_after: float


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [int(s.getsockname()[1]) for s in sockets]
    for s in sockets:
        s.close()
    return ports


def produce(kafka: KafkaSettings, topic: str, count: int, accounts: int, seed: int) -> None:
    rate = 1000.0
    start = datetime.now(UTC) - timedelta(seconds=count / rate + 5)
    records = transactions(seed, count, start, rate, accounts=accounts, merchants=max(accounts // 10, 10))
    producer = Producer(producer_config(kafka, "bench-feature-drain", linger_ms=50))
    for key, value, headers, _ in records:
        while True:
            try:
                producer.produce(topic, value, key, headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("the backlog was not fully produced")


def committed_behind(consumer: Consumer, topic: str, partitions: int) -> int:
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    committed = consumer.committed(tps, timeout=10)
    ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
    return sum(end - max(tp.offset, 0) for tp, end in zip(committed, ends, strict=True))


def metrics(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as response:
            body = response.read().decode()
    except OSError:
        return {}
    out = {}
    for line in body.splitlines():
        if line.startswith("streamscore_features_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(
    kafka: KafkaSettings,
    redis: RedisSettings,
    work: Path,
    events: int,
    accounts: int,
    seed: int,
    profile: str | None,
    extra_env: dict[str, str],
) -> tuple[Round, Path | None]:
    tag = uuid.uuid4().hex[:6]
    registry = TopicRegistry.build(prefix=f"bench.drain.{tag}.", partitions=6)
    ensure_topics(kafka, registry.all())
    feast = FeastSettings(
        project=f"drain_{tag}",
        data_dir=work / tag / "features",
        registry_path=work / tag / "registry.db",
        online_store="redis",
        redis=redis,
    )
    apply(open_store(feast), feast.data_dir)
    produce(kafka, registry.transactions.name, events, accounts, seed)
    port = free_ports(1)[0]
    app_id = f"drain-{tag}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "TOPICS_PREFIX": f"bench.drain.{tag}.",
            "TOPICS_PARTITIONS": "6",
            "REDIS_HOST": redis.host,
            "REDIS_PORT": str(redis.port),
            "FEAST_PROJECT": feast.project,
            "FEAST_DATA_DIR": str(feast.data_dir),
            "FEAST_REGISTRY_PATH": str(feast.registry_path),
            "FEAST_ONLINE_STORE": "redis",
            "FEATURES_APP_ID": app_id,
            "FEATURES_STATE_DIR": str(work / tag / "faust"),
            "FEATURES_METRICS_PORT": str(port),
            "FEATURES_METRICS_BIND": "127.0.0.1",
            "FEATURES_AUTO_OFFSET_RESET": "earliest",
            "LOG_LEVEL": "WARNING",
            **extra_env,
        }
    )
    out_profile: Path | None = None
    command = [sys.executable, "-m", "stream_processors"]
    if profile == "cprofile":
        out_profile = work / f"{tag}.prof"
        command = [sys.executable, "-m", "cProfile", "-o", str(out_profile), "-m", "stream_processors"]
    log = work / f"{tag}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    spy: subprocess.Popen[bytes] | None = None
    group = f"bench.drain.{tag}.{app_id}"
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group, "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + 180
        while metrics(port).get("streamscore_features_events_processed_total", 0) <= 0:
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker processed nothing in 180 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.05)
        started, cpu0, load0 = time.monotonic(), cpu_s(process.pid), os.getloadavg()[0]
        if profile == "py-spy":
            out_profile = work / f"{tag}.speedscope.txt"
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(process.pid),
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--threads",
                    "--output",
                    str(out_profile),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        while committed_behind(consumer, registry.transactions.name, 6) > 0:
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() - started > 1800:
                raise RuntimeError("not drained after 30 minutes")
            time.sleep(0.05)
        seconds, cpu = time.monotonic() - started, cpu_s(process.pid) - cpu0
        m = metrics(port)
        batches = m.get("streamscore_features_push_batches_total", 0.0)
        latency = m.get("streamscore_features_push_latency_seconds_sum", 0.0)
        result = Round(
            events=events,
            seconds=round(seconds, 2),
            events_per_s=round(events / seconds),
            cpu_us_per_event=round(cpu / events * 1e6),
            pushes=batches,
            mean_push_ms=round(1000 * latency / batches, 1) if batches else 0.0,
            load_before=round(load0, 2),
            load_after=round(os.getloadavg()[0], 2),
        )
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
        consumer.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        delete_topics(kafka, [spec.name for spec in registry.all()] + [f"{group}-account-state-changelog"])
    return result, out_profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", choices=["cprofile", "py-spy"], default=None)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the worker (repeatable)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)

    from streamscore.infra import LocalStack
    from streamscore.infra.settings import InfraSettings

    with tempfile.TemporaryDirectory(prefix="feature-drain-") as tmp:
        work = Path(tmp)
        kafka_port, controller_port, redis_port = free_ports(3)
        stack = LocalStack(
            InfraSettings(
                data_dir=work / "stack", kafka_port=kafka_port, controller_port=controller_port, redis_port=redis_port
            )
        )
        stack.up()
        try:
            kafka, redis = stack.settings.kafka_settings(), stack.settings.redis_settings()
            rounds = []
            for i in range(args.rounds):
                result, prof = one_round(
                    kafka, redis, work, args.events, args.accounts, args.seed + i, args.profile, extra
                )
                rounds.append(result)
                print(json.dumps(asdict(result)), flush=True)
                if prof is not None and prof.exists():
                    if args.profile == "cprofile":
                        stats = pstats.Stats(str(prof))
                        stats.sort_stats("cumulative").print_stats(45)
                        stats.sort_stats("tottime").print_stats(30)
                    else:
                        keep = Path(tempfile.gettempdir()) / f"feature_drain_pyspy_{i}.txt"
                        keep.write_bytes(prof.read_bytes())
                        print(f"py-spy samples: {keep}")
        finally:
            stack.down()
    summary = {
        "events": args.events,
        "accounts": args.accounts,
        "rounds": len(rounds),
        "median_events_per_s": statistics.median(r.events_per_s for r in rounds),
        "median_cpu_us_per_event": statistics.median(r.cpu_us_per_event for r in rounds),
        "load": [r.load_before for r in rounds],
        "env": extra,
    }
    print(json.dumps(summary))
    if args.json is not None:
        args.json.write_text(json.dumps({"summary": summary, "rounds": [asdict(r) for r in rounds]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
