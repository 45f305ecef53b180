"""`python -m bench.pipeline` (`make bench`): what the stream scorer costs next to Kafka itself, in one run on a
local stack of its own.

1. Starts a real broker and redis-server on free loopback ports (`streamscore.infra.LocalStack`, like the
   integration tests), creates topics under a unique prefix, registers two versions of a model with the
   production MLP's shape in a temporary MLflow, applies the Feast repository to its own project and fills
   the online store for every account and merchant of the generated world, and pre-produces a backlog of
   generated transactions.
2. Measures, each as its own process reading the same backlog:
   (a) a Kafka passthrough (consume → produce, no work), plain and with one transaction per batch;
   (b) a naive per-event scorer (poll, decode, one Feast SDK read, one inference, one produce per event);
   (c) the stream scorer, `python -m scorer` with exactly-once and its default settings.
   Events/s run from the first to the last output record's timestamp; CPU µs per event is the process's
   utime + stime (/proc/<pid>/stat, sampled every 50 ms, interpolated to those instants) over the events.
3. Event-to-visible latency at half of (c)'s maximum rate: a load process produces at that steady rate,
   stamping each record with its produce time, and a read_committed consumer notes when each score
   becomes visible to it.
4. A sweep of `SCORER_MAX_BATCH_SIZE` / `SCORER_MAX_QUEUE_DELAY_MS`: throughput and p99 for each.
5. The stream processors beside the scorer (bench._processors, issue 16): the feature processor's and the
   monitor's drain rates on the same backlog (and the scores the scorer wrote), feature freshness and each
   service's consumer lag at steady fractions of (c)'s rate, their steps one by one (bench._processor_stages),
   every service's resident memory and the online store's bytes per account.

Results: a rich table on the terminal, a JSON file in `bench/results/`; docs/benchmarks.md reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Producer
from confluent_kafka import libversion as librdkafka_version
from confluent_kafka import version as confluent_kafka_version
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench._data import MODEL_NAME, Record, feature_sample, populate_features, register_models, transactions
from bench._probe import STEAL, CpuSampler, GroupProgress, VisibilityProbe, read_topic
from bench._processors import (
    FEATURES,
    GOAL_DRAIN_AIM,
    GOAL_DRAIN_RATIO,
    GOAL_FRESHNESS_P99_MS,
    MONITOR,
    ProcessorResults,
    Processors,
    record_memory,
    steady_rates,
)
from streamscore.infra import LocalStack
from streamscore.infra.kafka import pinned_version
from streamscore.infra.settings import InfraSettings
from streamscore.kafka import delete_topics, ensure_topics, producer_config
from streamscore.settings import KafkaSettings
from streamscore.topics import TopicRegistry, TopicSpec

ROOT = Path(__file__).resolve().parents[1]
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROC_INHERITED = MULTIPROC_VARIABLE in os.environ
"""Importing Feast (to fill the online store) sets PROMETHEUS_MULTIPROC_DIR in this process; a scorer inheriting
it would run prometheus_client in multiprocess mode (mmap files per metric), which it never does in
production (see streamscore/__init__.py). Children get it only if it was set before this module ran."""
RESULTS = ROOT / "bench" / "results"
TARGETS = {"c_over_b": 15.0, "c_over_a": 0.5, "p99_ms": 50.0, "events_per_s": 30_000.0}
DEFAULT_BATCH = 1024
DEFAULT_DELAY_MS = 10.0
SWEEP: tuple[tuple[int, float], ...] = (
    (64, 10.0),
    (256, 10.0),
    (1024, 10.0),
    (4096, 10.0),
    (1024, 1.0),
    (1024, 5.0),
    (1024, 25.0),
    (1024, 50.0),
)
"""(max_batch_size, max_queue_delay_ms) of the sweep; the default (1024, 10) is measured again among them, under
the same conditions as the others."""


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [int(s.getsockname()[1]) for s in sockets]
    for s in sockets:
        s.close()
    return ports


# --- results --------------------------------------------------------------------------------------------------


@dataclass
class Throughput:
    name: str
    events: int
    seconds: float
    events_per_s: float
    cpu_us_per_event: float | None
    """utime + stime of the process under test per event."""
    broker_cpu_us_per_event: float | None
    redis_cpu_us_per_event: float | None
    bench_cpu_us_per_event: float | None
    """This benchmark's own process (the CPU sampler; nothing else runs in it during a throughput phase)."""
    machine_busy: float | None
    """Share of both cores busy during the phase, whoever used them."""
    other_cpu_share: float | None
    """Share of both cores used by processes outside the benchmark (other work on the machine): noise."""
    steal_share: float | None = None
    """Share of both vCPUs' time the hypervisor gave to someone else while they wanted to run."""
    note: str = ""


@dataclass
class Latency:
    rate_per_s: float
    """The steady rate the load process was asked for."""
    achieved_per_s: float
    events: int
    seen: int
    duplicates: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    scorer_cpu_us_per_event: float | None
    broker_cpu_us_per_event: float | None
    machine_busy: float | None
    other_cpu_share: float | None
    steal_share: float | None = None


@dataclass
class SweepRow:
    max_batch_size: int
    max_queue_delay_ms: float
    repeat: int
    throughput: Throughput
    latency: Latency | None


@dataclass
class Results:
    started: str
    command: str
    code: dict[str, Any]
    machine: dict[str, Any]
    parameters: dict[str, Any]
    model: str
    features: dict[str, Any]
    passthrough_plain: Throughput | None = None
    passthrough_eos: Throughput | None = None
    naive: Throughput | None = None
    scorer: Throughput | None = None
    latency: Latency | None = None
    sweep: list[SweepRow] = field(default_factory=list)
    sweep_medians: list[dict[str, float]] = field(default_factory=list)
    """Per configuration of the sweep, the median of its rounds."""
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    """CPU µs per event of each step of the scorer's Python path (bench._stages), per batch size."""
    ratios: dict[str, float] = field(default_factory=dict)
    targets: dict[str, float] = field(default_factory=lambda: dict(TARGETS))
    processors: ProcessorResults | None = None
    """The feature processor and the monitor beside the scorer (bench._processors)."""
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    """Service → peak_rss_mib (VmHWM) and end_rss_mib (VmRSS when it was stopped)."""
    seconds: float = 0.0


def code_version() -> dict[str, Any]:
    """The commit measured and which measured files differ from it (an uncommitted change is not that commit)."""

    def git(*argv: str) -> str:
        result = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    dirty = git("status", "--porcelain", "--", "scorer", "streamscore", "feature_repo", "bench", "producers")
    return {"commit": git("rev-parse", "HEAD") or "unknown", "uncommitted": dirty.splitlines()}


def _text(version: object) -> str:
    """confluent-kafka's version functions return a string or a (string, int) pair depending on the build."""
    return str(version[0]) if isinstance(version, tuple) else str(version)


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            memory_kb = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "confluent_kafka": _text(confluent_kafka_version()),
        "librdkafka": _text(librdkafka_version()),
        "kafka_broker": pinned_version(InfraSettings().jars_list),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


# --- the run ----------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.tmp = Path(tempfile.mkdtemp(prefix="streamscore-bench-"))
        self.run_id = uuid.uuid4().hex[:6]
        kafka_port, controller_port, redis_port = free_ports(3)
        self.stack = LocalStack(
            InfraSettings(
                data_dir=self.tmp / "stack",
                kafka_port=kafka_port,
                controller_port=controller_port,
                redis_port=redis_port,
            )
        )
        self.kafka: KafkaSettings = self.stack.settings.kafka_settings()
        self.sampler = CpuSampler()
        self.children: list[subprocess.Popen[bytes]] = []
        self.backlog: list[Record] = []
        self.labels: list[Record] = []
        """A label for every backlog transaction (the monitor's drain)."""
        self.memory: dict[str, dict[str, float]] = {}
        self.env: dict[str, str] = {}
        self.champion_onnx = Path()
        self.scorer_assigned_before = 0

    def log(self, message: str) -> None:
        self.console.log(message)

    def new_progress(self) -> Progress:
        return Progress(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
        )

    # --- set-up ---------------------------------------------------------------------------------------------

    def registry(self, name: str) -> TopicRegistry:
        return TopicRegistry.build(prefix=f"bench.{self.run_id}.{name}.", partitions=self.args.partitions)

    def topics(self, registry: TopicRegistry) -> list[TopicSpec]:
        """The topics one scorer (or worker) uses; the monitor's and labels topics are not needed here."""
        specs = [registry.transactions, registry.scores, registry.scores_shadow, registry.dlq]
        ensure_topics(self.kafka, specs)
        return specs

    def set_up(self, results: Results) -> TopicRegistry:
        args = self.args
        self.log(f"working folder {self.tmp}")
        self.stack.up(on_step=self.log)
        records = self.stack.state.load()
        self.sampler.start()
        self.sampler.watch("broker", records["kafka"].pid)
        self.sampler.watch("redis", records["redis"].pid)
        self.sampler.watch("bench", os.getpid())

        main = self.registry("main")
        self.topics(main)
        self.log(f"topics under the prefix {main.transactions.name.removesuffix('transactions')}")

        now = datetime.now(UTC)
        self.log(f"generating {args.events} transactions ({args.accounts} accounts, {args.merchants} merchants)")
        # Event times end about now: within the feature views' TTLs, like live traffic.
        span = timedelta(seconds=args.events / args.event_rate)
        self.backlog = transactions(
            args.seed,
            args.events,
            now - span,
            args.event_rate,
            accounts=args.accounts,
            merchants=args.merchants,
            labels=None if args.skip_processors else self.labels,
        )

        project = f"bench_{self.run_id}"
        redis = self.stack.settings.redis_settings()
        feast_env = {
            "FEAST_PROJECT": project,
            "FEAST_REGISTRY_PATH": str(self.tmp / "feast" / "registry.db"),
            "FEAST_DATA_DIR": str(self.tmp / "features"),
            "REDIS_HOST": redis.host,
            "REDIS_PORT": str(redis.port),
        }
        started = time.monotonic()
        data = populate_features(feast_env, args.seed, args.accounts, args.merchants, now, self.log)
        results.features = {
            **asdict(data),
            "feast_project": project,
            "seconds_to_fill": round(time.monotonic() - started, 1),
        }

        self.log("registering champion and challenger in a temporary MLflow")
        tracking_uri = f"sqlite:///{self.tmp / 'mlflow.db'}"
        model = register_models(tracking_uri, self.tmp, args.seed, feature_sample(self.backlog))
        self.champion_onnx = model.onnx_path
        results.model = model.description
        self.env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            **feast_env,
            "REGISTRY_TRACKING_URI": tracking_uri,
            "REGISTRY_MODEL_NAME": MODEL_NAME,
            "REGISTRY_CACHE_DIR": str(self.tmp / "model-cache"),
            "LOG_LEVEL": "INFO",
        }
        self.produce_backlog(main.transactions.name, self.backlog)
        return main

    def produce_backlog(self, topic: str, records: list[Record]) -> None:
        producer = Producer(producer_config(self.kafka, "bench-backlog"))
        with self.new_progress() as progress:
            task = progress.add_task(f"backlog → {topic}", total=len(records), info="")
            for i, (key, value, headers, _) in enumerate(records):
                while True:
                    try:
                        producer.produce(topic, value, key, headers=headers)
                        break
                    except BufferError:
                        producer.poll(0.05)
                if i % 5000 == 0:
                    producer.poll(0)
                    progress.update(task, completed=i)
            left = producer.flush(120.0)
            progress.update(task, completed=len(records))
        if left:
            raise RuntimeError(f"{left} backlog records were not delivered")

    # --- processes ------------------------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("ab")
        child_env = {**os.environ, **(env or {})}
        if not MULTIPROC_INHERITED:
            child_env.pop(MULTIPROC_VARIABLE, None)
        process = subprocess.Popen(
            [sys.executable, *argv], env=child_env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        self.children.append(process)
        self.sampler.watch(name, process.pid)
        return process

    def log_count(self, name: str, text: str) -> int:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace").count(text) if path.exists() else 0

    def wait_assigned(self, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
        """Until the scorer started last logged its partitions' assignment (it consumes from then on)."""
        deadline = time.monotonic() + timeout_s
        with self.console.status("waiting for the scorer's partitions"):
            while self.log_count("scorer", "assigned [") <= self.scorer_assigned_before:
                if process.poll() is not None:
                    raise RuntimeError(f"the scorer exited with {process.returncode}:\n{self.tail('scorer')}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the scorer was not assigned partitions in {timeout_s:.0f}s")
                time.sleep(0.2)

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.tmp / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, name: str, process: subprocess.Popen[bytes]) -> int:
        record_memory(self.memory, name, process.pid)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
        self.sampler.forget(name)
        return process.returncode

    def wait_consumed(
        self, name: str, process: subprocess.Popen[bytes], group: str, topic: str, total: int, timeout_s: float
    ) -> None:
        """Until `group` committed `total` records of `topic` (or the process exited), with a progress bar."""
        committed = GroupProgress(self.kafka, group, topic)
        deadline = time.monotonic() + timeout_s
        try:
            with self.new_progress() as progress:
                task = progress.add_task(name, total=total, info="")
                last, last_at = 0, time.monotonic()
                while True:
                    done = committed.committed()
                    now = time.monotonic()
                    rate = (done - last) / max(now - last_at, 1e-9)
                    last, last_at = done, now
                    progress.update(task, completed=min(done, total), info=f"{rate:,.0f}/s")
                    if done >= total:
                        return
                    if process.poll() is not None:
                        if process.returncode == 0 and name != "scorer":
                            return  # workers exit once done; auto-committed offsets may trail
                        raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.tail(name)}")
                    if now > deadline:
                        raise RuntimeError(f"{name}: {done}/{total} after {timeout_s:.0f}s:\n{self.tail(name)}")
                    time.sleep(0.5)
        finally:
            committed.close()

    def throughput(self, name: str, output_topic: str, expected: int, note: str = "") -> Throughput:
        """Rate and CPU per event from the output's record timestamps (first → last)."""
        with self.new_progress() as progress:
            task = progress.add_task(f"reading {name}'s output", total=expected, info="")
            read = read_topic(
                self.kafka, output_topic, expected, on_progress=lambda n: progress.update(task, completed=n)
            )
        if read.count < expected:
            raise RuntimeError(f"{name}: {read.count} of {expected} outputs arrived:\n{self.tail(name)}")
        stamps = np.sort(np.asarray(read.timestamps_ms, dtype=np.int64))
        first, last = float(stamps[0]) / 1000.0, float(stamps[-1]) / 1000.0
        seconds = max(last - first, 1e-3)
        events = read.count
        # The first output's events were processed before its timestamp: rate over events - 1 intervals.
        rate = (events - 1) / seconds

        def per_event(who: str | None) -> float | None:
            cpu = self.sampler.cpu_between(who, first, last)
            return None if cpu is None else cpu / (events - 1) * 1e6

        busy = self.sampler.cpu_between(None, first, last)
        tracked = sum(self.sampler.cpu_between(w, first, last) or 0.0 for w in ("broker", "redis", "bench", name))
        cores = os.cpu_count() or 1
        return Throughput(
            name=name,
            events=events,
            seconds=round(seconds, 3),
            events_per_s=round(rate, 1),
            cpu_us_per_event=_round(per_event(name)),
            broker_cpu_us_per_event=_round(per_event("broker")),
            redis_cpu_us_per_event=_round(per_event("redis")),
            bench_cpu_us_per_event=_round(per_event("bench")),
            machine_busy=None if busy is None else round(busy / (seconds * cores), 3),
            other_cpu_share=None if busy is None else round(max(busy - tracked, 0.0) / (seconds * cores), 3),
            steal_share=_share(self.sampler.cpu_between(STEAL, first, last), seconds * cores),
            note=note,
        )

    # --- (a) and (b) ------------------------------------------------------------------------------------------

    def passthrough(self, source: str, mode: str) -> Throughput:
        out = self.registry(f"pass-{mode}")
        self.topics(out)
        name = f"passthrough-{mode}"
        group = f"bench-{name}-{self.run_id}"
        process = self.spawn(
            name,
            [
                "-m",
                "bench._workers",
                "passthrough",
                f"--mode={mode}",
                f"--bootstrap={self.kafka.bootstrap_servers}",
                f"--source={source}",
                f"--target={out.scores.name}",
                f"--group={group}",
                f"--count={len(self.backlog)}",
                f"--batch={DEFAULT_BATCH}",
                f"--delay-ms={DEFAULT_DELAY_MS}",
            ],
        )
        self.wait_consumed(name, process, group, source, len(self.backlog), timeout_s=600)
        process.wait(120)
        result = self.throughput(name, out.scores.name, len(self.backlog))
        self.sampler.forget(name)
        return result

    def naive(self, source: str) -> Throughput:
        out = self.registry("naive")
        self.topics(out)
        count = self.args.naive_events
        group = f"bench-naive-{self.run_id}"
        process = self.spawn(
            "naive",
            [
                "-m",
                "bench._workers",
                "naive",
                f"--bootstrap={self.kafka.bootstrap_servers}",
                f"--source={source}",
                f"--target={out.scores.name}",
                f"--group={group}",
                f"--count={count}",
                f"--model={self.champion_onnx}",
                f"--model-name={MODEL_NAME}",
            ],
            self.env,
        )
        self.wait_consumed("naive", process, group, source, count, timeout_s=600)
        if process.wait(300) != 0:
            raise RuntimeError(f"naive exited with {process.returncode}:\n{self.tail('naive')}")
        result = self.throughput("naive", out.scores.name, count)
        self.sampler.forget("naive")
        return result

    # --- (c) and latency -----------------------------------------------------------------------------------------

    @contextmanager
    def scorer(
        self, registry: TopicRegistry, label: str, batch: int | None = None, delay_ms: float | None = None
    ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
        group_id = f"bench-scorer-{label}"
        env = {
            **self.env,
            "TOPICS_PREFIX": registry.transactions.name.removesuffix("transactions"),
            "SCORER_GROUP_ID": group_id,
            "SCORER_INSTANCE_ID": f"bench-{label}",
            "SCORER_METRICS_PORT": "0",
            "SCORER_DELIVERY": "exactly_once",
            "SCORER_PROGRESS_INTERVAL_S": "5",
        }
        if batch is not None:
            env["SCORER_MAX_BATCH_SIZE"] = str(batch)
        if delay_ms is not None:
            env["SCORER_MAX_QUEUE_DELAY_MS"] = str(delay_ms)
        assigned_before = self.log_count("scorer", "assigned [")
        process = self.spawn("scorer", ["-m", "scorer"], env)
        self.scorer_assigned_before = assigned_before
        profiler = None
        if self.args.py_spy and label == "main":
            # Sampling the scorer costs CPU beside it: a profiled run's figures are not the benchmark's.
            out = Path(tempfile.gettempdir()) / f"streamscore-scorer-profile-{self.run_id}.txt"
            record = ["record", "--pid", str(process.pid), "--format", "raw", "--rate", "200", "--nonblocking"]
            profiler = subprocess.Popen(
                [self.args.py_spy, *record, "--output", str(out)],
                stdout=(self.tmp / "py-spy.log").open("ab"),
                stderr=subprocess.STDOUT,
            )
            self.log(f"py-spy records the scorer into {out}")
        try:
            yield process, env["TOPICS_PREFIX"] + group_id
        finally:
            code = self.stop("scorer", process)
            if profiler is not None:
                profiler.wait(60)
            if code not in (0, -signal.SIGTERM):
                self.log(f"[yellow]scorer exited with {code}[/]")

    def measure_scorer(
        self, registry: TopicRegistry, count: int, process: subprocess.Popen[bytes], group: str
    ) -> Throughput:
        self.wait_consumed("scorer", process, group, registry.transactions.name, count, timeout_s=count / 200 + 180)
        result = self.throughput("scorer", registry.scores.name, count)
        dead = read_topic(self.kafka, registry.dlq.name, 1, timeout_s=6.0).count
        if dead:
            result.note = f"{dead} dead letters"
        return result

    def latency(
        self, registry: TopicRegistry, rate: float, seconds: float, process: subprocess.Popen[bytes], seed: int
    ) -> Latency:
        probe = VisibilityProbe(self.kafka, registry.scores.name)
        stamps_path = self.tmp / f"stamps-{uuid.uuid4().hex[:6]}.tsv"
        load = self.spawn(
            "load",
            [
                "-m",
                "bench._workers",
                "load",
                f"--bootstrap={self.kafka.bootstrap_servers}",
                f"--topic={registry.transactions.name}",
                f"--rate={rate}",
                f"--seconds={seconds}",
                f"--seed={seed}",
                f"--accounts={self.args.accounts}",
                f"--merchants={self.args.merchants}",
                f"--stamps={stamps_path}",
                f"--warmup-seconds={self.args.warmup_seconds}",
            ],
        )
        total = int(rate * (seconds + self.args.warmup_seconds))
        try:
            with self.new_progress() as progress:
                task = progress.add_task(f"latency at {rate:,.0f}/s", total=total, info="")
                grace_until: float | None = None
                while True:
                    probe.poll(0.5)
                    progress.update(task, completed=min(len(probe.seen), total))
                    if process.poll() is not None:
                        raise RuntimeError(f"the scorer exited with {process.returncode}:\n{self.tail('scorer')}")
                    if load.poll() is not None:
                        if load.returncode != 0:
                            raise RuntimeError(f"the load process failed:\n{self.tail('load')}")
                        grace_until = grace_until or time.monotonic() + 15.0
                        if len(probe.seen) >= total or time.monotonic() > grace_until:
                            break
        finally:
            probe.close()
            self.sampler.forget("load")
        produced: dict[bytes, int] = {}
        for line in stamps_path.read_text().splitlines():
            name, produced_ms = line.split("\t")[:2]
            produced[name.encode()] = int(produced_ms)
        latencies: list[float] = []
        timeline: list[tuple[int, float]] = []
        visible_ids: set[bytes] = set()
        duplicates = 0
        for event_id, visible in probe.seen:
            if event_id in visible_ids:
                duplicates += 1
                continue
            visible_ids.add(event_id)
            stamp = produced.get(event_id)
            if stamp is not None:
                latencies.append(visible * 1000.0 - stamp)
                timeline.append((stamp, visible * 1000.0 - stamp))
        values = np.asarray(latencies, dtype=np.float64)
        if self.args.keep:
            with (self.tmp / f"{stamps_path.stem}-latency.tsv").open("w") as out:
                out.write("produced_ms\tlatency_ms\n")
                for at_ms, latency_ms in sorted(timeline):
                    out.write(f"{at_ms}\t{latency_ms:.2f}\n")
        first, last = min(produced.values()) / 1000.0, max(produced.values()) / 1000.0
        window = max(last - first, 1e-3)
        busy = self.sampler.cpu_between(None, first, last)
        tracked = sum(
            self.sampler.cpu_between(w, first, last) or 0.0 for w in ("broker", "redis", "bench", "scorer", "load")
        )
        scorer_cpu = self.sampler.cpu_between("scorer", first, last)
        broker_cpu = self.sampler.cpu_between("broker", first, last)
        cores = os.cpu_count() or 1

        def pct(q: float) -> float:
            return round(float(np.percentile(values, q)), 2) if len(values) else float("nan")

        return Latency(
            rate_per_s=round(rate, 1),
            achieved_per_s=round((len(produced) - 1) / window, 1),
            events=len(produced),
            seen=len(latencies),
            duplicates=duplicates,
            p50_ms=pct(50),
            p90_ms=pct(90),
            p99_ms=pct(99),
            p999_ms=pct(99.9),
            max_ms=round(float(values.max()), 2) if len(values) else float("nan"),
            scorer_cpu_us_per_event=None if scorer_cpu is None else round(scorer_cpu / len(produced) * 1e6, 1),
            broker_cpu_us_per_event=None if broker_cpu is None else round(broker_cpu / len(produced) * 1e6, 1),
            machine_busy=None if busy is None else round(busy / (window * cores), 3),
            other_cpu_share=None if busy is None else round(max(busy - tracked, 0.0) / (window * cores), 3),
            steal_share=_share(self.sampler.cpu_between(STEAL, first, last), window * cores),
        )

    # --- the whole run ---------------------------------------------------------------------------------------------

    def run(self, results: Results) -> None:
        args = self.args
        main = self.set_up(results)
        source = main.transactions.name
        if args.only == "processors":
            self.log("[bold](c) the stream scorer: python -m scorer, exactly-once, default batching")
            with self.scorer(main, "main") as (process, group):
                results.scorer = self.measure_scorer(main, len(self.backlog), process, group)
                self.log(f"    {results.scorer.events_per_s:,.0f} events/s")
            self.processors(results, main)
            return
        if not args.skip_passthrough:
            self.log("[bold](a) Kafka passthrough, plain: idempotent producer, offsets committed asynchronously")
            results.passthrough_plain = self.passthrough(source, "plain")
            self.log(f"    {results.passthrough_plain.events_per_s:,.0f} events/s")
            self.log("[bold](a) Kafka passthrough, exactly-once: one transaction per batch, like the scorer")
            results.passthrough_eos = self.passthrough(source, "eos")
            self.log(f"    {results.passthrough_eos.events_per_s:,.0f} events/s")
        if not args.skip_naive:
            self.log(f"[bold](b) naive per-event scorer on {args.naive_events} events")
            results.naive = self.naive(source)
            self.log(f"    {results.naive.events_per_s:,.0f} events/s")
        self.log("[bold](c) the stream scorer: python -m scorer, exactly-once, default batching")
        with self.scorer(main, "main") as (process, group):
            results.scorer = self.measure_scorer(main, len(self.backlog), process, group)
            self.log(f"    {results.scorer.events_per_s:,.0f} events/s")
            rate = results.scorer.events_per_s / 2 if args.latency_rate <= 0 else args.latency_rate
            self.log(f"[bold]event-to-visible latency at {rate:,.0f} events/s for {args.latency_seconds:.0f}s")
            results.latency = self.latency(main, rate, args.latency_seconds, process, args.seed + 1000)
            self.log(f"    p50 {results.latency.p50_ms:.1f} ms, p99 {results.latency.p99_ms:.1f} ms")
        if not args.skip_stages:
            self.log("[bold]where the scorer's CPU goes: its steps timed one by one, per batch size")
            results.stages = self.stages()
        if not args.no_sweep:
            self.sweep(results, rate)
        self.ratios(results)
        if not args.skip_processors:
            self.processors(results, main)

    def processors(self, results: Results, main: TopicRegistry) -> None:
        """The feature processor and the monitor beside the scorer of (c): drains, steady rates, steps, memory."""
        args = self.args
        if results.scorer is None:
            raise RuntimeError("the processors' phases need the scorer's rate of (c)")
        ensure_topics(self.kafka, main.all())
        phases = Processors(self, main)
        results.processors = phases.results
        scorer_rate = results.scorer.events_per_s
        try:
            phases.drain_features()
            phases.drain_monitor(self.labels)
            if not args.skip_processor_stages:
                self.log("[bold]where the processors' CPU goes: their steps timed one by one")
                phases.stages()
            rates = steady_rates(scorer_rate, args.steady_fractions)
            if rates:
                with self.scorer(main, "main") as (process, group):
                    self.wait_assigned(process)
                    for i, (fraction, rate) in enumerate(zip(args.steady_fractions, rates, strict=True)):
                        self.log(
                            f"[bold]steady {fraction:.0%} of the scorer's maximum: {rate:,.0f} events/s for "
                            f"{args.steady_seconds:.0f}s, scorer + feature processor + monitor"
                        )
                        steady = phases.steady(fraction, rate, i, group)
                        phases.results.steady.append(steady)
                        f = steady.freshness_ms
                        self.log(
                            f"    freshness p50 {_fmt(f['p50'], '.0f')} ms, p99 {_fmt(f['p99'], '.0f')} ms"
                            f" ({steady.sampled_events} events); max lag: features"
                            f" {steady.lag[FEATURES]['max_offsets']:,}, monitor {steady.lag[MONITOR]['max_offsets']:,}"
                        )
            phases.online_store(sorted({key.decode() for key, _, _, _ in self.backlog}))
        finally:
            for name, service in ((FEATURES, phases.features_process), (MONITOR, phases.monitor_process)):
                if service is not None:
                    code = self.stop(name, service)
                    if code not in (0, -signal.SIGTERM):
                        self.log(f"[yellow]{name} exited with {code}[/]")
            phases.goals(scorer_rate)

    def sweep(self, results: Results, rate: float) -> None:
        """Every configuration `--sweep-repeats` times, the order rotated each round so that a busy spell of
        the machine does not always land on the same configuration."""
        args = self.args
        rate = args.sweep_rate or rate
        runs = [(r, SWEEP[(i + r) % len(SWEEP)]) for r in range(args.sweep_repeats) for i in range(len(SWEEP))]
        for n, (repeat, (batch, delay)) in enumerate(runs):
            self.log(
                f"[bold]sweep {n + 1}/{len(runs)}: max_batch_size={batch} max_queue_delay_ms={delay:g}"
                f" (round {repeat + 1})"
            )
            label = f"sweep{n}"
            registry = self.registry(label)
            specs = self.topics(registry)
            backlog = self.backlog[: args.sweep_events]
            self.produce_backlog(registry.transactions.name, backlog)
            with self.scorer(registry, label, batch, delay) as (process, group):
                throughput = self.measure_scorer(registry, len(backlog), process, group)
                self.log(f"    {throughput.events_per_s:,.0f} events/s, {throughput.cpu_us_per_event} µs/event")
                latency = self.latency(registry, rate, args.sweep_latency_seconds, process, args.seed + 2000 + n)
                self.log(f"    p50 {latency.p50_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms at {rate:,.0f}/s")
            results.sweep.append(SweepRow(batch, delay, repeat, throughput, latency))
            delete_topics(self.kafka, [s.name for s in specs])

    def stages(self) -> dict[str, dict[str, float]]:
        out = self.tmp / "stages.json"
        args = self.args
        process = self.spawn(
            "stages",
            [
                "-m",
                "bench._stages",
                f"--out={out}",
                f"--seed={args.seed}",
                f"--accounts={args.accounts}",
                f"--merchants={args.merchants}",
            ],
            self.env,
        )
        with self.console.status("timing the scorer's steps in a process of their own"):
            code = process.wait(900)
        self.sampler.forget("stages")
        if code != 0:
            raise RuntimeError(f"bench._stages exited with {code}:\n{self.tail('stages')}")
        stages: dict[str, dict[str, float]] = json.loads(out.read_text())
        return stages

    @staticmethod
    def ratios(results: Results) -> None:
        c = results.scorer.events_per_s if results.scorer else None
        if c is None:
            return
        if results.naive:
            results.ratios["c_over_b"] = round(c / results.naive.events_per_s, 2)
        if results.passthrough_eos:
            results.ratios["c_over_a_eos"] = round(c / results.passthrough_eos.events_per_s, 3)
        if results.passthrough_plain:
            results.ratios["c_over_a_plain"] = round(c / results.passthrough_plain.events_per_s, 3)

    def close(self) -> None:
        for process in self.children:
            if process.poll() is None:
                process.kill()
                process.wait(30)
        self.sampler.stop()
        try:
            self.stack.down(on_step=self.log)
        finally:
            if not self.args.keep:
                shutil.rmtree(self.tmp, ignore_errors=True)
            else:
                self.log(f"kept {self.tmp}")


def _share(seconds: float | None, capacity: float) -> float | None:
    return None if seconds is None else round(seconds / capacity, 3)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# --- report -----------------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "–" if value is None or value != value else format(value, spec)


def report(console: Console, results: Results) -> None:
    table = Table(title="Throughput (backlog drained as fast as possible)")
    columns = ("system", "events", "events/s", "CPU µs/event", "broker µs/event", "machine busy", "other load", "steal")
    for column in columns:
        if column == "system":
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right")
    rows: list[tuple[str, Throughput | None]] = [
        ("a  passthrough, plain", results.passthrough_plain),
        ("a  passthrough, EOS", results.passthrough_eos),
        ("b  naive per event", results.naive),
        ("c  scorer, EOS", results.scorer),
    ]
    for label, t in rows:
        if t is None:
            continue
        table.add_row(
            label,
            f"{t.events:,}",
            _fmt(t.events_per_s),
            _fmt(t.cpu_us_per_event, ",.1f"),
            _fmt(t.broker_cpu_us_per_event, ",.1f"),
            _fmt(None if t.machine_busy is None else t.machine_busy * 100, ".0f") + " %",
            _fmt(None if t.other_cpu_share is None else t.other_cpu_share * 100, ".0f") + " %",
            _fmt(None if t.steal_share is None else t.steal_share * 100, ".0f") + " %",
        )
    console.print(table)

    checks = Table(title="Targets")
    for column in ("measure", "value", "target", "met"):
        checks.add_column(column)
    latency = results.latency

    def check(label: str, value: float | None, target: str, met: bool | None) -> None:
        verdict = "–" if met is None else ("[green]yes[/]" if met else "[red]no[/]")
        checks.add_row(label, _fmt(value, ",.2f"), target, verdict)

    c_b, c_a = results.ratios.get("c_over_b"), results.ratios.get("c_over_a_eos")
    check("c / b", c_b, "≥ 15", None if c_b is None else c_b >= TARGETS["c_over_b"])
    check("c / a (exactly-once passthrough)", c_a, "≥ 0.5", None if c_a is None else c_a >= TARGETS["c_over_a"])
    c_ap = results.ratios.get("c_over_a_plain")
    check("c / a (plain passthrough)", c_ap, "≥ 0.5", None if c_ap is None else c_ap >= TARGETS["c_over_a"])
    p99 = latency.p99_ms if latency else None
    check("p99 at half load (ms)", p99, "≤ 50", None if p99 is None else p99 <= TARGETS["p99_ms"])
    c = results.scorer.events_per_s if results.scorer else None
    check("c events/s", c, "≥ 30 000 (reference)", None if c is None else c >= TARGETS["events_per_s"])
    console.print(checks)

    if latency:
        lat = Table(title=f"Event-to-visible latency at {latency.rate_per_s:,.0f} events/s")
        for column in ("events", "seen", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "scorer µs/event"):
            lat.add_column(column, justify="right")
        lat.add_row(
            f"{latency.events:,}",
            f"{latency.seen:,}",
            _fmt(latency.p50_ms, ".1f"),
            _fmt(latency.p90_ms, ".1f"),
            _fmt(latency.p99_ms, ".1f"),
            _fmt(latency.p999_ms, ".1f"),
            _fmt(latency.max_ms, ".1f"),
            _fmt(latency.scorer_cpu_us_per_event, ".1f"),
        )
        console.print(lat)

    if results.stages:
        stages = Table(title="The scorer's Python path: CPU µs per event (thread CPU time)")
        stages.add_column("step", no_wrap=True)
        labels = list(results.stages)
        for label in labels:
            stages.add_column(label.removeprefix("batch "), justify="right")
        steps = list(next(iter(results.stages.values())))
        for step in steps:
            stages.add_row(step, *(f"{results.stages[label].get(step, float('nan')):.1f}" for label in labels))
        console.print(stages)

    if results.sweep:
        rounds = 1 + max(row.repeat for row in results.sweep)
        rate = results.sweep[0].latency.rate_per_s if results.sweep[0].latency else float("nan")
        sweep = Table(
            title=f"Batching sweep, exactly-once: median of {rounds} round(s); latency at {rate:,.0f} events/s"
        )
        for column in ("max_batch_size", "max_queue_delay_ms", "events/s", "CPU µs/event", "p50 ms", "p99 ms"):
            sweep.add_column(column, justify="right")
        for (batch, delay), summary in sweep_summary(results.sweep).items():
            sweep.add_row(
                str(batch),
                f"{delay:g}",
                _fmt(summary["events_per_s"]),
                _fmt(summary["cpu_us_per_event"], ".1f"),
                _fmt(summary["p50_ms"], ".1f"),
                _fmt(summary["p99_ms"], ".1f"),
            )
        console.print(sweep)
    report_processors(console, results)


def report_processors(console: Console, results: Results) -> None:
    """The feature processor and the monitor beside the scorer: drains, goals, steady rates, steps, memory."""
    r = results.processors
    scorer = results.scorer.events_per_s if results.scorer else None
    if r is not None:
        drains = Table(title="Stream processors: backlog drained from offset 0 to the committed end")
        columns = (
            "service",
            "records",
            "records/s",
            "transactions/s",
            "÷ scorer",
            "CPU µs/record",
            "broker µs/record",
            "start-up s",
        )
        for column in columns:
            drains.add_column(column, justify="left" if column == "service" else "right")
        if results.scorer:
            t = results.scorer
            drains.add_row(
                "scorer (c)",
                f"{t.events:,}",
                _fmt(t.events_per_s),
                _fmt(t.events_per_s),
                "1",
                _fmt(t.cpu_us_per_event, ",.1f"),
                _fmt(t.broker_cpu_us_per_event, ",.1f"),
                "–",
            )
        for label, d in (("feature processor", r.features_drain), ("monitor (scores + labels)", r.monitor_drain)):
            if d is None:
                continue
            drains.add_row(
                label,
                f"{d.events:,}",
                _fmt(d.events_per_s),
                _fmt(d.transactions_per_s),
                _fmt(d.ratio_to_scorer, ".2f"),
                _fmt(d.cpu_us_per_event, ",.1f"),
                _fmt(d.broker_cpu_us_per_event, ",.1f"),
                _fmt(d.startup_s, ".1f"),
            )
        console.print(drains)

        if r.steady:
            steady = Table(
                title="Steady rates: scorer + feature processor + monitor together; lags: committed offsets (seconds of"
                " traffic) / not yet processed (seconds), kept up: by commits / by processing"
            )
            for column in (
                "share of c",
                "events/s",
                "fresh p50 ms",
                "fresh p99 ms",
                "sampled",
                "features max lag",
                "kept up",
                "monitor max lag",
                "kept up",
                "scorer max lag",
                "machine busy",
            ):
                steady.add_column(column, justify="right")
            for s in r.steady:
                f, lag = s.freshness_ms, s.lag

                def lag_cell(name: str, lag: dict[str, dict[str, Any]] = lag) -> str:
                    entry = lag.get(name, {})
                    cell = f"{entry.get('max_offsets', 0):,} ({_fmt(entry.get('max_seconds_of_traffic'), '.1f')} s)"
                    if "unprocessed_max_records" in entry:
                        cell += f" / {_fmt(entry.get('unprocessed_max_seconds_of_traffic'), '.1f')} s"
                    return cell

                def kept(name: str, lag: dict[str, dict[str, Any]] = lag) -> str:
                    entry = lag.get(name, {})
                    cell = "yes" if entry.get("kept_up") else "[red]no[/]"
                    if "processing_kept_up" in entry:
                        cell += " / " + ("yes" if entry["processing_kept_up"] else "[red]no[/]")
                    return cell

                steady.add_row(
                    f"{s.fraction:.0%}",
                    _fmt(s.achieved_per_s),
                    _fmt(f["p50"], ".0f") if f["p50"] is not None else f"> {s.probed_for_s * 1000:,.0f}",
                    _fmt(f["p99"], ".0f") if f["p99"] is not None else f"> {s.probed_for_s * 1000:,.0f}",
                    f"{s.sampled_events:,}" + (f" ({s.fresh_unseen} unseen)" if s.fresh_unseen else ""),
                    lag_cell(FEATURES),
                    kept(FEATURES),
                    lag_cell(MONITOR),
                    kept(MONITOR),
                    lag_cell("scorer"),
                    _fmt(None if s.machine_busy is None else s.machine_busy * 100, ".0f") + " %",
                )
            console.print(steady)

        goals = Table(title="Issue 16 goals (figures from this run)")
        for column in ("measure", "value", "goal"):
            goals.add_column(column)
        for name, drain in (("feature processor", r.features_drain), ("monitor", r.monitor_drain)):
            if drain is not None:
                goals.add_row(
                    f"{name} drain ÷ scorer drain (transactions/s)",
                    _fmt(drain.ratio_to_scorer, ".2f"),
                    f"≥ {GOAL_DRAIN_RATIO:g} (aim {GOAL_DRAIN_AIM:g})",
                )
        p99 = r.goals.get("freshness_p99_ms_at_25pct")
        if "freshness_p99_ms_at_25pct" in r.goals:
            goals.add_row(
                "feature freshness p99 at 25 % of c (ms)",
                _fmt(p99, ".0f") if p99 is not None else "> window",
                f"≤ {GOAL_FRESHNESS_P99_MS:g}",
            )
        for key, value in r.goals.items():
            if "_kept_up_at_" in key:
                goals.add_row(key.replace("_", " "), "yes" if value else "no", "yes")
        console.print(goals)

        if r.stages:
            for label, steps in r.stages.items():
                table = Table(title=f"The {label}'s Python path: CPU µs per event (thread CPU time)")
                table.add_column("step", no_wrap=True)
                table.add_column("µs/event", justify="right")
                for step, value in steps.items():
                    table.add_row(step, f"{value:.1f}")
                console.print(table)
        for name, shares in r.profiles.items():
            table = Table(title=f"py-spy: where the {name} drain's samples fall (share of its samples)")
            table.add_column("step", no_wrap=True)
            table.add_column("share", justify="right")
            for step, share in shares.items():
                table.add_row(step, f"{share * 100:.1f} %")
            console.print(table)
        if r.online_store:
            o = r.online_store
            console.print(
                f"online store: {_fmt(o.get('bytes_per_account_key_mean'), ',.0f')} bytes per account key (mean of "
                f"{o.get('account_keys_found')} sampled, MEMORY USAGE; real-time snapshot + daily profile), "
                f"used_memory {o.get('used_memory_bytes', 0) / 2**20:,.1f} MiB over {o.get('keys', 0):,} keys"
            )
    if results.memory:
        memory = Table(title="Resident memory (MiB) of each process measured")
        for column in ("process", "peak (VmHWM)", "at its stop (VmRSS)"):
            memory.add_column(column, justify="left" if column == "process" else "right")
        for name, entry in results.memory.items():
            memory.add_row(name, _fmt(entry.get("peak_rss_mib"), ",.1f"), _fmt(entry.get("end_rss_mib"), ",.1f"))
        console.print(memory)
    del scorer


def sweep_summary(rows: list[SweepRow]) -> dict[tuple[int, float], dict[str, float]]:
    """Per configuration, the median of each figure over its rounds (NaN where a figure is missing)."""
    grouped: dict[tuple[int, float], list[SweepRow]] = {}
    for row in rows:
        grouped.setdefault((row.max_batch_size, row.max_queue_delay_ms), []).append(row)

    def median(values: list[float | None]) -> float:
        present = [v for v in values if v is not None and v == v]
        return float(np.median(present)) if present else float("nan")

    return {
        key: {
            "events_per_s": median([r.throughput.events_per_s for r in group]),
            "cpu_us_per_event": median([r.throughput.cpu_us_per_event for r in group]),
            "p50_ms": median([r.latency.p50_ms if r.latency else None for r in group]),
            "p99_ms": median([r.latency.p99_ms if r.latency else None for r in group]),
            "rounds": float(len(group)),
        }
        for key, group in sorted(grouped.items(), key=lambda item: (item[0][1], item[0][0]))
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="backlog size for (a) and (c)")
    parser.add_argument("--naive-events", type=int, default=2_000, help="events the naive scorer handles")
    parser.add_argument("--latency-seconds", type=float, default=25.0, help="length of the steady-rate phase")
    parser.add_argument("--latency-rate", type=float, default=0.0, help="fixed rate instead of half of (c)")
    parser.add_argument("--warmup-seconds", type=float, default=3.0, help="unmeasured traffic before each window")
    parser.add_argument("--sweep-events", type=int, default=60_000, help="backlog per sweep configuration")
    parser.add_argument("--sweep-latency-seconds", type=float, default=15.0)
    parser.add_argument("--sweep-repeats", type=int, default=1, help="rounds of the sweep (medians reported)")
    parser.add_argument("--sweep-rate", type=float, default=0.0, help="latency rate of the sweep (default: half c)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the batching sweep")
    parser.add_argument("--skip-passthrough", action="store_true")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-stages", action="store_true", help="skip timing the scorer's steps one by one")
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--merchants", type=int, default=2_000)
    parser.add_argument("--event-rate", type=float, default=200.0, help="event-time rate of the backlog (per s)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--out", type=Path, default=None, help="result file (default bench/results/pipeline-<time>.json)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs of every process)")
    parser.add_argument(
        "--only",
        choices=("all", "processors"),
        default="all",
        help="processors: the scorer's drain (c) (its rate and scores are the processors' reference) and the"
        " processors' phases only",
    )
    parser.add_argument("--skip-processors", action="store_true", help="skip the feature processor and monitor")
    parser.add_argument("--skip-processor-stages", action="store_true", help="skip timing the processors' steps")
    parser.add_argument(
        "--steady-fractions",
        type=float,
        nargs="*",
        default=[0.10, 0.25, 0.50],
        help="steady rates of the processors' phase, as fractions of (c)'s events/s (none: skip)",
    )
    parser.add_argument("--steady-seconds", type=float, default=20.0, help="measured length of each steady rate")
    parser.add_argument("--steady-grace-s", type=float, default=30.0, help="wait for the lags to settle after it")
    parser.add_argument("--steady-settle-s", type=float, default=180.0, help="catch-up allowed before each rate")
    parser.add_argument("--fresh-accounts", type=int, default=400, help="accounts the freshness probe reads")
    parser.add_argument("--fresh-interval-ms", type=float, default=10.0, help="pause between two probe rounds")
    parser.add_argument(
        "--kept-up-seconds", type=float, default=5.0, help="kept up: max lag ≤ this many seconds of traffic"
    )
    parser.add_argument("--features-push-delay-ms", type=int, default=50, help="FEATURES_PUSH_MAX_DELAY_MS (demo's)")
    parser.add_argument("--drain-timeout-s", type=float, default=1800.0)
    parser.add_argument(
        "--commit-wait-s", type=float, default=60.0, help="after a drain, how long to wait for its commits to catch up"
    )
    parser.add_argument("--processor-stage-events", type=int, default=20_000)
    parser.add_argument(
        "--py-spy",
        default="",
        help="path of py-spy: profile the scorer of (c) and the processors' drains (skews their figures)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # A log file or a pipe gets the tables at a readable width; a terminal keeps its own.
    console = Console(width=None if sys.stdout.isatty() else 132)
    started = datetime.now(UTC)
    command = "python -m bench.pipeline" + ("" if not (argv or sys.argv[1:]) else " " + " ".join(argv or sys.argv[1:]))
    results = Results(
        started=started.isoformat(timespec="seconds"),
        command=command,
        code=code_version(),
        machine=machine(),
        parameters={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        model="",
        features={},
    )
    console.rule(f"streamscore pipeline benchmark — {results.machine['cpus']} CPUs, {results.machine['cpu_model']}")
    bench = Bench(args, console)
    clock = time.monotonic()
    try:
        bench.run(results)
    except KeyboardInterrupt:
        console.log("[red]interrupted")
        return 130
    finally:
        bench.close()
    results.seconds = round(time.monotonic() - clock, 1)
    results.memory = bench.memory
    results.sweep_medians = [
        {"max_batch_size": batch, "max_queue_delay_ms": delay, **summary}
        for (batch, delay), summary in sweep_summary(results.sweep).items()
    ]
    report(console, results)
    out = args.out or RESULTS / f"pipeline-{started.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(asdict(results)), indent=2) + "\n")
    console.log(f"results written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
