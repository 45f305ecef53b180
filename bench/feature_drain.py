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
WORKER_ROOT = ROOT
"""Where `python -m stream_processors` runs (--root): this checkout, or a baseline's files."""
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


def fresh_setup(
    kafka: KafkaSettings, redis: RedisSettings, work: Path, project: str = "drain"
) -> tuple[str, TopicRegistry, FeastSettings]:
    """A tag of its own, the topics under `bench.drain.<tag>.` and a Feast project applied in `work/<tag>`."""
    tag = uuid.uuid4().hex[:6]
    registry = TopicRegistry.build(prefix=f"bench.drain.{tag}.", partitions=6)
    ensure_topics(kafka, registry.all())
    feast = FeastSettings(
        project=f"{project}_{tag}",
        data_dir=work / tag / "features",
        registry_path=work / tag / "registry.db",
        online_store="redis",
        redis=redis,
    )
    apply(open_store(feast), feast.data_dir)
    return tag, registry, feast


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
    tag, registry, feast = fresh_setup(kafka, redis, work)
    produce(kafka, registry.transactions.name, events, accounts, seed)
    port = free_ports(1)[0]
    app_id = f"drain-{tag}"
    env = worker_env(kafka, redis, feast, tag, port, work, extra_env)
    out_profile: Path | None = None
    command = [sys.executable, "-m", "stream_processors"]
    if profile == "cprofile":
        out_profile = work / f"{tag}.prof"
        command = [sys.executable, "-m", "cProfile", "-o", str(out_profile), "-m", "stream_processors"]
    log = work / f"{tag}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=WORKER_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
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


@dataclass
class Live:
    rate: float
    seconds: float
    produced: int
    sampled: int
    readable: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    worker_cpu_share: float
    load: float


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2.0) as response:
            return int(response.status) == 200
    except OSError:
        return False


def live_round(
    kafka: KafkaSettings,
    redis: RedisSettings,
    work: Path,
    rate: float,
    seconds: float,
    accounts: int,
    seed: int,
    extra_env: dict[str, str],
) -> Live:
    """Freshness at a steady rate: events produced when their event time comes (event time = produce time), every
    10th followed until its account's snapshot in Redis holds it (one pipelined read of every followed account every
    5 ms, with the scorer's reader): readable time - event time."""
    from scorer.features.redis_client import RedisFeatureClient

    tag, registry, feast = fresh_setup(kafka, redis, work)
    count = int(rate * seconds)
    start = datetime.now(UTC) + timedelta(seconds=60)  # generated before the worker starts; paced from `start` on
    records = transactions(seed, count, start, rate, accounts=accounts, merchants=max(accounts // 10, 10))
    port = free_ports(1)[0]
    env = worker_env(kafka, redis, feast, tag, port, work, extra_env)
    log = work / f"{tag}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "stream_processors"], cwd=WORKER_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    reader = RedisFeatureClient(redis, feast.project)
    producer = Producer(producer_config(kafka, "bench-feature-live", linger_ms=1))
    try:
        deadline = time.monotonic() + 180
        while not ready(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not get ready:\n{log.read_text()[-4000:]}")
            time.sleep(0.1)
        shift = time.time() - start.timestamp()  # event times are replayed from now on, `shift` later
        import json as _json

        pending: dict[str, list[tuple[float, float]]] = {}
        latencies: list[float] = []
        next_read = 0.0
        cpu0, t0, load0 = cpu_s(process.pid), time.monotonic(), os.getloadavg()[0]
        sampled = 0
        for i, (key, value, headers, _) in enumerate(records):
            data = _json.loads(value)
            event_ts = datetime.fromisoformat(data["event_time"]).timestamp()
            due = event_ts + shift
            # Rewrite the event time to the wall clock it is produced at (the contract's window, and freshness
            # measured against it).
            stamp = datetime.fromtimestamp(due, UTC).isoformat().replace("+00:00", "Z")
            data["event_time"] = stamp
            payload = _json.dumps(data, separators=(",", ":")).encode()
            while (now := time.time()) < due:
                if pending and now >= next_read:
                    next_read = now + 0.005
                    check(reader, pending, latencies)
                time.sleep(min(due - now, 0.001))
            producer.produce(registry.transactions.name, payload, key, headers=headers)
            producer.poll(0)
            if i % 10 == 0:
                sampled += 1
                pending.setdefault(key.decode(), []).append((datetime.fromisoformat(stamp).timestamp(), due))
        producer.flush(30)
        end = time.monotonic() + 30
        while pending and time.monotonic() < end:
            check(reader, pending, latencies)
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        cpu = cpu_s(process.pid) - cpu0
        latencies.sort()

        def q(p: float) -> float:
            return round(1000 * latencies[min(int(p * len(latencies)), len(latencies) - 1)], 1) if latencies else -1.0

        return Live(
            rate,
            seconds,
            count,
            sampled,
            len(latencies),
            q(0.5),
            q(0.9),
            q(0.99),
            round(1000 * latencies[-1], 1) if latencies else -1.0,
            round(cpu / elapsed, 2),
            round(load0, 2),
        )
    finally:
        reader.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        delete_topics(kafka, [spec.name for spec in registry.all()])


def check(reader: object, pending: dict[str, list[tuple[float, float]]], latencies: list[float]) -> None:
    accounts = list(pending)
    rows = reader.read([(a, "-") for a in accounts])  # type: ignore[attr-defined]
    now = time.time()
    for account, (realtime, _, _) in zip(accounts, rows, strict=True):
        if realtime is None or realtime.last_event_ts is None:
            continue
        waiting = pending[account]
        keep = []
        for event_ts, produced in waiting:
            if realtime.last_event_ts >= event_ts - 1e-6:
                latencies.append(now - produced)
            else:
                keep.append((event_ts, produced))
        if keep:
            pending[account] = keep
        else:
            del pending[account]


def worker_env(
    kafka: KafkaSettings,
    redis: RedisSettings,
    feast: FeastSettings,
    tag: str,
    port: int,
    work: Path,
    extra_env: dict[str, str],
) -> dict[str, str]:
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
            "FEATURES_APP_ID": f"drain-{tag}",
            "FEATURES_STATE_DIR": str(work / tag / "faust"),
            "FEATURES_METRICS_PORT": str(port),
            "FEATURES_METRICS_BIND": "127.0.0.1",
            "FEATURES_AUTO_OFFSET_RESET": "earliest",
            "LOG_LEVEL": "WARNING",
            **extra_env,
        }
    )
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", choices=["cprofile", "py-spy"], default=None)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the worker (repeatable)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="run the worker from this checkout (e.g. `git archive` of a baseline)"
    )
    parser.add_argument("--live-rate", type=float, default=None, help="measure freshness at this steady rate instead")
    parser.add_argument("--live-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    global WORKER_ROOT
    WORKER_ROOT = args.root.resolve()
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
            if args.live_rate is not None:
                lives = []
                for i in range(args.rounds):
                    live = live_round(
                        kafka, redis, work, args.live_rate, args.live_seconds, args.accounts, args.seed + i, extra
                    )
                    lives.append(live)
                    print(json.dumps(asdict(live)), flush=True)
                print(json.dumps({"median_p99_ms": statistics.median(x.p99_ms for x in lives), "env": extra}))
                return 0
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
