"""The stream processors beside the scorer, in the pipeline benchmark's run (issue 16): the feature processor
(`python -m stream_processors`) and the monitor (`python -m monitor`), each the real service as a child process.

- **Drain.** Each reads a backlog from offset 0 until its consumer group has committed to the end: the feature
  processor the transactions the scorer drained, the monitor the scores the scorer wrote and a label for each of
  their events. Rate and CPU per event are taken between the group's first commit and the commit that reached the
  end (so start-up, Feast's import and table recovery are left out), from the committed offsets sampled every
  `POLL_S`; CPU is the process's utime + stime over that window (`bench._probe.CpuSampler`), as for the scorer.
- **Steady rates.** At fractions of the scorer's measured maximum, a load process produces transactions at that
  rate while the scorer, the feature processor and the monitor run together (the pipeline as deployed, on the
  same cores). Feature freshness per event = the moment its account's snapshot in Redis holds it − its produce
  time, for the events of sampled accounts (`FreshnessProbe`); consumer-group lag of each service sampled.
- **Memory.** Resident memory of each service (`/proc/<pid>/status`: VmHWM the peak, VmRSS at its stop) and the
  online store's bytes per account (Redis `MEMORY USAGE` on a sample of account keys).

The pure helpers (percentiles, drain windows, freshness joins, /proc parsing, lag summaries) are unit-tested in
tests/unit/bench/test_processors.py."""

from __future__ import annotations

import math
import os
import random
import signal
import struct
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

from bench._data import Record, transactions
from bench._probe import STEAL, high_watermarks, partitions, read_topic
from streamscore.kafka import consumer_config, ensure_topics, producer_config
from streamscore.settings import KafkaSettings
from streamscore.topics import TopicRegistry

if TYPE_CHECKING:
    from bench.pipeline import Bench

POLL_S = 0.25
"""How often committed offsets are read during a drain (the rate's resolution at both ends of its window)."""
GOAL_DRAIN_RATIO = 0.5
GOAL_DRAIN_AIM = 1.0
GOAL_FRESHNESS_P99_MS = 250.0
GOAL_FRESHNESS_AT = 0.25
"""Issue 16's goals: each processor drains at ≥ 0.5 x the scorer's rate (aim 1 x); feature freshness p99 ≤ 250 ms
at 25 % of the scorer's maximum rate."""
FEATURES = "features"
MONITOR = "monitor"
_DOUBLE_TAG = 0x29
"""A serialized Feast `Value` holding a double: this byte (field 5, wire type 1) and 8 little-endian bytes."""


# --- pure helpers -------------------------------------------------------------------------------------------------


def percentiles(values: Sequence[float], unresolved: int = 0) -> dict[str, float | None]:
    """p50/p90/p99/p99.9/max of `values` with `unresolved` more values counted as +inf (events never seen within
    the window): a percentile that falls among them is None ("more than the window"), never a made-up number."""
    n = len(values) + unresolved
    if n == 0:
        return {"p50": None, "p90": None, "p99": None, "p999": None, "max": None}
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    data = np.concatenate([ordered, np.full(unresolved, np.inf)])

    def at(q: float) -> float | None:
        value = float(np.percentile(data, q, method="higher"))
        return round(value, 2) if math.isfinite(value) else None

    return {
        "p50": at(50),
        "p90": at(90),
        "p99": at(99),
        "p999": at(99.9),
        "max": None if unresolved else round(float(ordered[-1]), 2),
    }


@dataclass(frozen=True)
class DrainWindow:
    start: float
    """Wall time of the first committed-offset read that saw a commit (the group had started working)."""
    end: float
    """Wall time of the first read that saw the group committed to the end."""
    offsets: int
    """Offsets committed between the two reads."""

    @property
    def seconds(self) -> float:
        return max(self.end - self.start, 1e-3)


def drain_window(samples: Sequence[tuple[float, int]], total: int, slack: int = 0) -> DrainWindow | None:
    """From (wall time, committed offsets) reads of a draining group: the window from the first read with a
    commit to the first read with `total - slack` or more committed; None when the group never got there or
    committed everything at once (no window to measure). `slack` tolerates what a group never commits past (a
    transactional topic's last commit marker per partition)."""
    first: tuple[float, int] | None = None
    for at, committed in samples:
        if first is None and committed > 0:
            first = (at, committed)
        if first is not None and committed >= total - slack:
            if at <= first[0] or committed <= first[1]:
                return None
            return DrainWindow(first[0], at, committed - first[1])
    return None


def parse_status(text: str) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of a /proc/<pid>/status, in KiB."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(rest.split()[0])
    return out


def process_memory_kib(pid: int) -> dict[str, int]:
    try:
        return parse_status(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return {}


@dataclass(frozen=True)
class StampedEvent:
    event_id: str
    produced_ms: int
    account: str
    event_us: int


def parse_stamps(text: str) -> list[StampedEvent]:
    """The load worker's file: `event_id<TAB>produced_ms<TAB>account<TAB>event_time_us` per line."""
    out = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 4:
            out.append(StampedEvent(parts[0], int(parts[1]), parts[2], int(parts[3])))
    return out


def last_event_us(value: bytes | None) -> int | None:
    """The `last_event_ts` feature of a snapshot as Feast's Redis store holds it (a serialized `Value` with a
    double, epoch seconds), in µs; None when absent or not a double."""
    if value is None or len(value) != 9 or value[0] != _DOUBLE_TAG:
        return None
    seconds = struct.unpack("<d", value[1:])[0]
    return round(seconds * 1e6) if math.isfinite(seconds) else None


def freshness_ms(
    events: Iterable[StampedEvent], observations: Mapping[str, Sequence[tuple[float, int]]], tolerance_us: int = 1
) -> tuple[list[float], int]:
    """Per event of an observed account: the first observation (wall seconds, the snapshot's last event time in
    µs) whose snapshot holds the event (its last event time ≥ the event's: an account's events are in event-time
    order on its partition) − the event's produce time, in ms. Returns (freshness values, events never seen)."""
    values: list[float] = []
    unseen = 0
    for event in events:
        seen = observations.get(event.account)
        if seen is None:
            continue
        for at, last_us in seen:
            if last_us >= event.event_us - tolerance_us:
                values.append(at * 1000.0 - event.produced_ms)
                break
        else:
            unseen += 1
    return values, unseen


@dataclass(frozen=True)
class LagSummary:
    max_offsets: int
    end_offsets: int
    """Lag when the load stopped producing."""
    catch_up_s: float | None
    """Seconds after the load stopped until the lag was back to `settled` or less (None: not within the grace)."""


def lag_summary(samples: Sequence[tuple[float, int]], load_end: float, settled: int = 0) -> LagSummary:
    """From (wall time, total lag) samples: the largest lag while the load produced, the lag when it stopped, and
    how long the group took after that to catch up."""
    during = [lag for at, lag in samples if at <= load_end]
    after = [(at, lag) for at, lag in samples if at > load_end]
    end = during[-1] if during else (after[0][1] if after else 0)
    catch_up: float | None = 0.0 if end <= settled else None
    if catch_up is None:
        for at, lag in after:
            if lag <= settled:
                catch_up = round(at - load_end, 2)
                break
    return LagSummary(max(during, default=end), end, catch_up)


PROFILE_STEPS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    FEATURES: (
        ("push to the online store", ("push_realtime", "RealtimeRedisWriter", "feature_repo/store.py", "feast/")),
        ("fold", ("fold (",)),
        ("decode (contract)", ("decode_transaction", "decode (")),
        ("table / changelog write", ("faust/tables",)),
        ("offset commit", ("_commit", "commit (")),
        ("aiokafka: fetch, decompress, parse", ("aiokafka/consumer", "aiokafka/record")),
        ("aiokafka: produce", ("aiokafka/producer",)),
        ("Faust stream, agent, acks", ("faust/",)),
        ("asyncio loop, other", ("",)),
    ),
    MONITOR: (
        ("decode (contract)", ("parse_event",)),
        ("on_score", ("on_score (",)),
        ("on_label", ("on_label (",)),
        ("checkpoint", ("checkpoint (",)),
        ("changelog write", ("write_changelog",)),
        ("merge, drift and A/B evaluation", ("monitor/merge.py", "monitor/drift.py", "monitor/ab.py")),
        ("offset commit", ("_commit", "commit (")),
        ("aiokafka: fetch, decompress, parse", ("aiokafka/consumer", "aiokafka/record")),
        ("aiokafka: produce", ("aiokafka/producer",)),
        ("Faust stream, agent, acks", ("faust/",)),
        ("asyncio loop, other", ("",)),
    ),
}
"""py-spy's stacks sorted into steps: the first step with a pattern anywhere in a stack takes its samples."""


def profile_steps(raw: str, steps: Sequence[tuple[str, Sequence[str]]]) -> dict[str, float]:
    """Share of the samples of a py-spy `--format raw` profile (`frame;frame;… count` per line) in each step."""
    counts = dict.fromkeys((label for label, _ in steps), 0)
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        for label, patterns in steps:
            if any(pattern in stack for pattern in patterns):
                counts[label] += n
                break
    return {label: round(n / total, 3) for label, n in counts.items()} if total else {}


CONSUMED = {
    FEATURES: ("streamscore_features_events_processed_total", "streamscore_features_events_skipped_total"),
    MONITOR: ("streamscore_monitor_records_total",),
}
"""The counters of records a service has consumed (every outcome), on its /metrics."""


def metric_total(text: str, names: Sequence[str]) -> float:
    """Sum of every sample (all label sets) of the metrics `names` in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{", 1)[0] in names:
            total += float(value)
    return total


def consumed_records(port: int, service: str) -> float | None:
    """Records `service` has consumed so far, from its /metrics; None while it does not answer (starting)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as response:
            return metric_total(response.read().decode(), CONSUMED[service])
    except OSError:
        return None


def steady_rates(scorer_rate: float, fractions: Sequence[float]) -> list[float]:
    """The steady rates of the processors' phase: fractions of the scorer's measured maximum, rounded."""
    return [round(scorer_rate * f, 1) for f in fractions]


# --- results ------------------------------------------------------------------------------------------------------


@dataclass
class Drain:
    name: str
    events: int
    """Records of its backlog (data records, not a transactional topic's commit markers)."""
    seconds: float
    events_per_s: float
    cpu_us_per_event: float | None
    broker_cpu_us_per_event: float | None
    redis_cpu_us_per_event: float | None
    machine_busy: float | None
    other_cpu_share: float | None
    steal_share: float | None
    startup_s: float
    """Spawn → its first consumed record (imports, Feast, group join, table recovery)."""
    uncommitted_at_consumed: int | None = None
    """Offsets of its input its group had not committed when it had consumed its last record."""
    committed_end_after_s: float | None = None
    """Seconds from its last consumed record until its group had committed to the end (None: not within
    --commit-wait-s)."""
    uncommitted_after_wait: int | None = None
    """Offsets still not committed --commit-wait-s after its last consumed record (when it did not get there)."""
    transactions_per_s: float | None = None
    """The transactions' worth of records per second: the monitor reads a score (and a shadow score) and a label per
    transaction, so its records/s divided by the records per transaction; the feature processor's events/s."""
    ratio_to_scorer: float | None = None
    """transactions_per_s / the scorer's events/s of (c)."""


@dataclass
class Steady:
    fraction: float
    rate_per_s: float
    achieved_per_s: float
    events: int
    sampled_accounts: int
    sampled_events: int
    fresh_unseen: int
    freshness_ms: dict[str, float | None]
    probe_interval_ms: float
    """Mean time between two reads of one sampled account: the freshness figures' resolution."""
    probe_cpu_us_per_round: float | None
    probed_for_s: float = 0.0
    """From the first measured produce to the probe's last read: an event unseen by then waited longer than this
    ("> window" in the report)."""
    lag: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Service → max / end lag in offsets and in seconds of traffic, catch-up seconds, kept_up."""
    cpu_us_per_event: dict[str, float | None] = field(default_factory=dict)
    machine_busy: float | None = None
    other_cpu_share: float | None = None
    steal_share: float | None = None


@dataclass
class ProcessorResults:
    features_drain: Drain | None = None
    monitor_drain: Drain | None = None
    steady: list[Steady] = field(default_factory=list)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    profiles: dict[str, dict[str, float]] = field(default_factory=dict)
    """With --py-spy: service → share of its drain's samples per step (profile_steps; py-spy skews the drain)."""
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    """Service → peak_rss_mib, end_rss_mib."""
    online_store: dict[str, Any] = field(default_factory=dict)
    goals: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)


# --- Kafka probes -------------------------------------------------------------------------------------------------


class GroupLag:
    """Committed offsets and log ends of a consumer group over some topics, per partition; never joins the group."""

    def __init__(self, kafka: KafkaSettings, group: str, topics: Sequence[str]) -> None:
        self.consumer = Consumer(consumer_config(kafka, group, "bench-lag"))
        self.tps = [TopicPartition(t, p) for t in topics for p in partitions(kafka, t)]

    def read(self) -> tuple[int, int, int]:
        """(committed, log end, partitions with lag > 1), summed over partitions; committed 0 where none yet."""
        try:
            offsets = self.consumer.committed(self.tps, timeout=5.0)
        except Exception:  # noqa: BLE001 - the coordinator may still be loading; best effort
            offsets = [TopicPartition(tp.topic, tp.partition, -1) for tp in self.tps]
        committed = end = behind = 0
        for tp in offsets:
            high = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=5.0)[1]
            done = max(tp.offset, 0)
            committed += done
            end += high
            behind += high - done > 1
        return committed, end, behind

    def close(self) -> None:
        self.consumer.close()


class FreshnessProbe:
    """Reads the `last_event_ts` feature of sampled accounts' real-time snapshots from Redis, all of them in one
    round trip per round (a Lua script: one command, one array reply, so the probe's own CPU stays small beside the
    services it measures), and keeps each change with the wall time of the round that saw it."""

    SCRIPT = "local out = {} for i, key in ipairs(KEYS) do out[i] = redis.call('HGET', key, ARGV[1]) end return out"

    def __init__(self, host: str, port: int, project: str, accounts: Sequence[str]) -> None:
        import redis

        from feature_repo.layout import REALTIME_VIEW
        from scorer.features.redis_client import ACCOUNT_JOIN_KEY, feature_field, redis_key

        self.client = redis.Redis(host=host, port=port)
        self.accounts = list(accounts)
        self.keys = [redis_key(project, ACCOUNT_JOIN_KEY, a) for a in self.accounts]
        self.field = feature_field(REALTIME_VIEW, "last_event_ts")
        self.sha = self.client.script_load(self.SCRIPT)  # type: ignore[no-untyped-call]
        self.last: dict[str, int | None] = {}
        self.changes: dict[str, list[tuple[float, int]]] = {a: [] for a in self.accounts}
        self.rounds = 0
        self.round_cpu_s = 0.0
        self.first_at = self.last_at = 0.0

    def round(self) -> None:
        cpu = time.thread_time()
        values = self.client.evalsha(self.sha, len(self.keys), *self.keys, self.field)  # type: ignore[no-untyped-call]
        now = time.time()
        for account, value in zip(self.accounts, values, strict=True):
            us = last_event_us(value)
            if us is not None and us != self.last.get(account):
                self.last[account] = us
                self.changes[account].append((now, us))
        self.rounds += 1
        self.first_at = self.first_at or now
        self.last_at = now
        self.round_cpu_s += time.thread_time() - cpu

    @property
    def interval_ms(self) -> float:
        return (self.last_at - self.first_at) / max(self.rounds - 1, 1) * 1000.0

    def close(self) -> None:
        self.client.close()


def sample_accounts(records: Sequence[Record], count: int, seed: int) -> list[str]:
    """`count` accounts of the load's records, drawn at random with weights = their number of events, so the
    sampled events are spread like the traffic (a busy account is read as often as a quiet one)."""
    counts: dict[str, int] = {}
    for key, _, _, _ in records:
        account = key.decode()
        counts[account] = counts.get(account, 0) + 1
    accounts = sorted(counts)
    if len(accounts) <= count:
        return accounts
    rng = random.Random(seed)
    chosen: set[str] = set()
    weights = [counts[a] for a in accounts]
    while len(chosen) < count:
        chosen.update(rng.choices(accounts, weights, k=count - len(chosen)))
    return sorted(chosen)


# --- the phases ---------------------------------------------------------------------------------------------------


class Processors:
    """The processors' phases of one pipeline benchmark run, on its stack, backlog, sampler and processes."""

    def __init__(self, bench: Bench, registry: TopicRegistry) -> None:
        self.bench = bench
        self.registry = registry
        self.args = bench.args
        self.prefix = registry.transactions.name.removesuffix("transactions")
        self.features_app = f"bench-features-{bench.run_id}"
        self.monitor_app = f"bench-monitor-{bench.run_id}"
        self.results = ProcessorResults()
        self.features_process: subprocess.Popen[bytes] | None = None
        self.features_port = _free_port()
        self.monitor_port = _free_port()
        self.monitor_process: subprocess.Popen[bytes] | None = None

    # --- environments: as the integration tests and the demo build them -----------------------------------------

    def features_env(self) -> dict[str, str]:
        bench = self.bench
        env = {
            **bench.env,
            "TOPICS_PREFIX": self.prefix,
            "TOPICS_PARTITIONS": str(self.args.partitions),
            "FEAST_ONLINE_STORE": "redis",
            "FEATURES_APP_ID": self.features_app,
            "FEATURES_STATE_DIR": str(bench.tmp / "faust" / self.features_app),
            "FEATURES_METRICS_PORT": str(self.features_port),
            "FEATURES_METRICS_BIND": "127.0.0.1",
            "FEATURES_PUSH_MAX_DELAY_MS": str(self.args.features_push_delay_ms),
            "FEATURES_SHUTDOWN_DRAIN_S": "5",
        }
        self.results.settings.update({k: v for k, v in env.items() if k.startswith("FEATURES_PUSH")})
        return env

    def monitor_env(self) -> dict[str, str]:
        bench = self.bench
        return {
            **bench.env,
            "TOPICS_PREFIX": self.prefix,
            "TOPICS_PARTITIONS": str(self.args.partitions),
            "MONITOR_APP_ID": self.monitor_app,
            "MONITOR_STATE_DIR": str(bench.tmp / "faust" / self.monitor_app),
            "MONITOR_METRICS_PORT": str(self.monitor_port),
            "MONITOR_METRICS_BIND": "127.0.0.1",
        }

    @property
    def features_group(self) -> str:
        return self.prefix + self.features_app

    @property
    def monitor_group(self) -> str:
        return self.prefix + self.monitor_app

    @property
    def monitor_inputs(self) -> list[str]:
        r = self.registry
        return [r.scores.name, r.scores_shadow.name, r.labels.name]

    # --- drain ----------------------------------------------------------------------------------------------------

    def drain(
        self,
        name: str,
        module: str,
        env: Mapping[str, str],
        group: str,
        topics: list[str],
        events: int,
        port: int,
        slack: int,
    ) -> tuple[subprocess.Popen[bytes], Drain]:
        """Start `python -m <module>` on its backlog of `events` records, wait until it has consumed them all (its own
        counters, `CONSUMED[name]` on its /metrics, read every POLL_S) and then, at most --commit-wait-s, until its
        group has committed to the end; the process is left running (the steady phases reuse it)."""
        bench, args = self.bench, self.args
        lag = GroupLag(bench.kafka, group, topics)
        spawned = time.time()
        process = bench.spawn(name, ["-m", module], env)
        profiler, profile = self._profile(name, process)
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + args.drain_timeout_s
        try:
            with bench.new_progress() as progress:
                task = progress.add_task(f"{name} drains", total=events, info="starting")
                while True:
                    consumed = int(consumed_records(port, name) or 0)
                    now = time.time()
                    samples.append((now, consumed))
                    info = "starting" if consumed == 0 else f"{_recent_rate(samples):,.0f} records/s"
                    progress.update(task, completed=min(consumed, events), info=info)
                    if consumed >= events:
                        break
                    if process.poll() is not None:
                        raise RuntimeError(f"{name} exited with {process.returncode}:\n{bench.tail(name)}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name}: {consumed}/{events} after {args.drain_timeout_s:.0f}s")
                    time.sleep(POLL_S)
        finally:
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)  # py-spy writes what it recorded and exits
                try:
                    profiler.wait(60)
                except subprocess.TimeoutExpired:
                    profiler.kill()
                if profile.exists():
                    self.results.profiles[name] = profile_steps(profile.read_text(), PROFILE_STEPS[name])
        window = drain_window(samples, events)
        if window is None:
            lag.close()
            raise RuntimeError(f"{name}: no drain window in its counters (did it consume everything at once?)")
        result = self._drain_figures(name, float(window.offsets), window, events)
        result.startup_s = round(window.start - spawned, 1)
        self._memory(name, process)
        try:
            self._follow_commits(name, lag, result, window.end, slack)
        finally:
            lag.close()
        return process, result

    def _follow_commits(self, name: str, lag: GroupLag, result: Drain, consumed_at: float, slack: int) -> None:
        """After the last record was consumed: until the group's committed offsets reach the log end (every partition
        within `slack`), at most --commit-wait-s."""
        bench = self.bench
        with bench.console.status(f"{name}: waiting for its commits to reach the end") as status:
            while True:
                committed, end, behind = lag.read()
                left = max(end - committed, 0)
                if result.uncommitted_at_consumed is None:
                    result.uncommitted_at_consumed = left
                if left <= slack and (slack == 0 or behind == 0):
                    result.committed_end_after_s = round(time.time() - consumed_at, 2)
                    return
                if time.time() > consumed_at + self.args.commit_wait_s:
                    result.uncommitted_after_wait = left
                    bench.log(
                        f"[yellow]{name}: {left:,} offsets still uncommitted {self.args.commit_wait_s:.0f}s after it"
                        " consumed its last record[/]"
                    )
                    return
                status.update(f"{name}: {left:,} offsets not committed yet")
                time.sleep(POLL_S)

    def _profile(self, name: str, process: subprocess.Popen[bytes]) -> tuple[subprocess.Popen[bytes] | None, Path]:
        """With --py-spy, a sampling profiler on the service during its drain (it costs CPU beside it)."""
        out = self.bench.tmp / f"{name}-profile.txt"
        if not self.args.py_spy:
            return None, out
        argv = [self.args.py_spy, "record", "--pid", str(process.pid), "--format", "raw", "--rate", "100"]
        log = (self.bench.tmp / "py-spy.log").open("ab")
        # py-spy needs the interpreter up: it retries attaching for a while by itself.
        return subprocess.Popen([*argv, "--nonblocking", "--output", str(out)], stdout=log, stderr=log), out

    def _drain_figures(self, name: str, consumed: float, window: DrainWindow, events: int) -> Drain:
        sampler = self.bench.sampler
        first, last = window.start, window.end

        def per_event(who: str | None) -> float | None:
            cpu = sampler.cpu_between(who, first, last)
            return None if cpu is None else round(cpu / consumed * 1e6, 1)

        busy = sampler.cpu_between(None, first, last)
        tracked = sum(sampler.cpu_between(w, first, last) or 0.0 for w in ("broker", "redis", "bench", name))
        capacity = window.seconds * (os.cpu_count() or 1)
        steal = sampler.cpu_between(STEAL, first, last)
        return Drain(
            name=name,
            events=events,
            seconds=round(window.seconds, 2),
            events_per_s=round(consumed / window.seconds, 1),
            cpu_us_per_event=per_event(name),
            broker_cpu_us_per_event=per_event("broker"),
            redis_cpu_us_per_event=per_event("redis"),
            machine_busy=None if busy is None else round(busy / capacity, 3),
            other_cpu_share=None if busy is None else round(max(busy - tracked, 0.0) / capacity, 3),
            steal_share=None if steal is None else round(steal / capacity, 3),
            startup_s=0.0,
        )

    def drain_features(self) -> None:
        """The whole transactions topic: the backlog and, in a full run, what the scorer's latency phase produced
        after it (a plain producer's topic: offsets are records)."""
        bench = self.bench
        topic = self.registry.transactions.name
        backlog = sum(high_watermarks(bench.kafka, topic).values())
        bench.log(f"[bold]feature processor: python -m stream_processors drains the {backlog:,} transactions")
        env = self.features_env()
        port = int(env["FEATURES_METRICS_PORT"])
        process, result = self.drain(
            FEATURES, "stream_processors", env, self.features_group, [topic], backlog, port, slack=0
        )
        self.features_process = process
        result.transactions_per_s = result.events_per_s
        self.results.features_drain = result
        bench.log(f"    {result.events_per_s:,.0f} events/s, {result.cpu_us_per_event} µs/event")

    def produce_labels(self, labels: list[Record]) -> None:
        producer = Producer(producer_config(self.bench.kafka, "bench-labels"))
        topic = self.registry.labels.name
        for key, value, headers, _ in labels:
            while True:
                try:
                    producer.produce(topic, value, key, headers=headers)
                    break
                except BufferError:
                    producer.poll(0.05)
        if producer.flush(120.0):
            raise RuntimeError("labels were not all delivered")

    def drain_monitor(self, labels: list[Record]) -> None:
        """Every score the scorer wrote (the backlog's and, in a full run, its latency phase's) and the backlog's
        labels; the records are counted (the scores' offsets include commit markers)."""
        bench = self.bench
        self.produce_labels(labels)
        with bench.console.status("counting the scores"):
            scores = read_topic(bench.kafka, self.registry.scores.name, 1 << 40, timeout_s=600.0).count
            shadow = read_topic(bench.kafka, self.registry.scores_shadow.name, 1 << 40, timeout_s=600.0).count
        events = scores + shadow + len(labels)
        bench.log(
            f"[bold]monitor: python -m monitor drains {scores:,} scores, {shadow:,} shadow scores,"
            f" {len(labels):,} labels"
        )
        env = self.monitor_env()
        process, result = self.drain(
            MONITOR,
            "monitor",
            env,
            self.monitor_group,
            self.monitor_inputs,
            events,
            int(env["MONITOR_METRICS_PORT"]),
            # The scorer's transactions leave a commit marker after the last record of each partition, which the
            # group's committed offset (last record + 1) never passes.
            slack=2 * self.args.partitions,
        )
        self.monitor_process = process
        result.transactions_per_s = round(result.events_per_s * scores / events, 1)
        self.results.monitor_drain = result
        bench.log(f"    {result.events_per_s:,.0f} records/s, {result.cpu_us_per_event} µs/record")

    # --- steady rates ---------------------------------------------------------------------------------------------

    def steady(self, fraction: float, rate: float, index: int, scorer_group: str) -> Steady:
        """Load at `rate` for --steady-seconds (after a warm-up) while the scorer, the feature processor and the
        monitor run; freshness from the probe, lags from the groups."""
        bench, args = self.bench, self.args
        seed = args.seed + 3000 + index
        warmup = int(rate * args.warmup_seconds)
        total = warmup + int(rate * args.steady_seconds)
        # The load process builds the same records from the same seed (the sequence of accounts does not depend on
        # the start time): the probe's accounts are drawn from them.
        preview = transactions(
            seed,
            min(total, warmup + 50_000),
            datetime.now(UTC),
            rate,
            accounts=args.accounts,
            merchants=args.merchants,
        )
        accounts = sample_accounts(preview[warmup:], args.fresh_accounts, seed)
        del preview
        redis = bench.stack.settings.redis_settings()
        probe = FreshnessProbe(redis.host, redis.port, bench.env["FEAST_PROJECT"], accounts)
        lags = {
            FEATURES: GroupLag(bench.kafka, self.features_group, [self.registry.transactions.name]),
            MONITOR: GroupLag(bench.kafka, self.monitor_group, self.monitor_inputs),
            "scorer": GroupLag(bench.kafka, scorer_group, [self.registry.transactions.name]),
        }
        self.settle(lags)
        reads = {name: lag.read() for name, lag in lags.items()}
        # What is left at the start (commit markers, a group that did not settle) is not this phase's lag.
        base = {name: end - committed for name, (committed, end, _) in reads.items()}
        start_end = reads[FEATURES][1]
        start_scored = reads["scorer"][0]
        ports = {FEATURES: self.features_port, MONITOR: self.monitor_port}
        start_consumed = {name: consumed_records(port, name) or 0.0 for name, port in ports.items()}
        lag_samples: dict[str, list[tuple[float, int]]] = {name: [] for name in lags}
        # Records its input received since the start − records it consumed (its own counters): what it has not
        # processed yet, whatever its commits say.
        behind_samples: dict[str, list[tuple[float, int]]] = {name: [] for name in ports}
        stamps_path = bench.tmp / f"steady-{index}.tsv"
        load = bench.spawn(
            "load",
            [
                "-m",
                "bench._workers",
                "load",
                f"--bootstrap={bench.kafka.bootstrap_servers}",
                f"--topic={self.registry.transactions.name}",
                f"--rate={rate}",
                f"--seconds={args.steady_seconds}",
                f"--seed={seed}",
                f"--accounts={args.accounts}",
                f"--merchants={args.merchants}",
                f"--stamps={stamps_path}",
                f"--warmup-seconds={args.warmup_seconds}",
            ],
        )
        interval = args.fresh_interval_ms / 1000.0
        load_end: float | None = None
        next_lag = 0.0
        try:
            with bench.new_progress() as progress:
                task = progress.add_task(f"{fraction:.0%}: {rate:,.0f}/s", total=total, info="")
                while True:
                    started = time.monotonic()
                    probe.round()
                    if started >= next_lag:
                        next_lag = started + POLL_S * 2
                        now = time.time()
                        produced = scored = 0
                        for name, lag in lags.items():
                            committed, end, _ = lag.read()
                            lag_samples[name].append((now, max(end - committed - base[name], 0)))
                            if name == FEATURES:
                                produced = end - start_end
                            if name == "scorer":
                                scored = committed - start_scored
                        inputs = {FEATURES: produced, MONITOR: scored}  # one score per transaction: no shadow
                        for name, port in ports.items():
                            consumed = consumed_records(port, name)
                            if consumed is not None:
                                behind = inputs[name] - int(consumed - start_consumed[name])
                                behind_samples[name].append((now, max(behind, 0)))
                        info = "  ".join(f"{n} lag {s[-1][1]:,}" for n, s in lag_samples.items())
                        progress.update(task, completed=min(max(produced, 0), total), info=info)
                        for name, process in (
                            (FEATURES, self.features_process),
                            (MONITOR, self.monitor_process),
                        ):
                            if process is not None and process.poll() is not None:
                                raise RuntimeError(f"{name} exited with {process.returncode}:\n{bench.tail(name)}")
                        if load_end is None and load.poll() is not None:
                            if load.returncode != 0:
                                raise RuntimeError(f"the load process failed:\n{bench.tail('load')}")
                            load_end = time.time()
                        if load_end is not None:
                            settled = all(s[-1][1] <= 2 * args.partitions for s in lag_samples.values())
                            if settled or time.time() > load_end + args.steady_grace_s:
                                break
                    pause = interval - (time.monotonic() - started)
                    if pause > 0:
                        time.sleep(pause)
        finally:
            probe.close()
            for lag in lags.values():
                lag.close()
            bench.sampler.forget("load")
        events = parse_stamps(stamps_path.read_text())
        sampled = set(accounts)
        mine = [e for e in events if e.account in sampled]
        values, unseen = freshness_ms(mine, probe.changes)
        first, last = min(e.produced_ms for e in events) / 1000.0, max(e.produced_ms for e in events) / 1000.0
        window = max(last - first, 1e-3)
        achieved = (len(events) - 1) / window
        sampler = bench.sampler
        cpu = {
            name: _per(sampler.cpu_between(name, first, last), len(events))
            for name in ("scorer", FEATURES, MONITOR, "broker", "redis", "bench")
        }
        busy = sampler.cpu_between(None, first, last)
        tracked = sum(
            sampler.cpu_between(w, first, last) or 0.0
            for w in ("scorer", FEATURES, MONITOR, "broker", "redis", "bench", "load")
        )
        capacity = window * (os.cpu_count() or 1)
        steal = sampler.cpu_between(STEAL, first, last)
        result = Steady(
            fraction=fraction,
            rate_per_s=round(rate, 1),
            achieved_per_s=round(achieved, 1),
            events=len(events),
            sampled_accounts=len(accounts),
            sampled_events=len(mine),
            fresh_unseen=unseen,
            freshness_ms=percentiles(values, unseen),
            probe_interval_ms=round(probe.interval_ms, 2),
            probed_for_s=round(probe.last_at - first, 1),
            probe_cpu_us_per_round=round(probe.round_cpu_s / max(probe.rounds, 1) * 1e6, 1),
            cpu_us_per_event=cpu,
            machine_busy=None if busy is None else round(busy / capacity, 3),
            other_cpu_share=None if busy is None else round(max(busy - tracked, 0.0) / capacity, 3),
            steal_share=None if steal is None else round(steal / capacity, 3),
        )
        end_at = load_end if load_end is not None else time.time()
        for name, samples in lag_samples.items():
            summary = lag_summary(
                [(at, lag) for at, lag in samples if at >= first], end_at, settled=2 * args.partitions
            )
            max_s = summary.max_offsets / rate if rate > 0 else None
            result.lag[name] = {
                "max_offsets": summary.max_offsets,
                "end_offsets": summary.end_offsets,
                "max_seconds_of_traffic": None if max_s is None else round(max_s, 2),
                "catch_up_s": summary.catch_up_s,
                "kept_up": max_s is not None and max_s <= args.kept_up_seconds and summary.catch_up_s is not None,
            }
        for name, samples in behind_samples.items():
            summary = lag_summary([(at, n) for at, n in samples if at >= first], end_at, settled=0)
            max_s = summary.max_offsets / rate if rate > 0 else None
            result.lag[name].update(
                {
                    "unprocessed_max_records": summary.max_offsets,
                    "unprocessed_end_records": summary.end_offsets,
                    "unprocessed_max_seconds_of_traffic": None if max_s is None else round(max_s, 2),
                    "processing_kept_up": max_s is not None
                    and max_s <= args.kept_up_seconds
                    and summary.catch_up_s is not None,
                }
            )
        for name, process in ((FEATURES, self.features_process), (MONITOR, self.monitor_process)):
            if process is not None:
                self._memory(name, process)
        return result

    def settle(self, lags: Mapping[str, GroupLag]) -> None:
        """Before a steady rate: until the services have caught up with what the previous phase left them (at most
        --steady-settle-s), so a phase does not inherit its predecessor's backlog. The feature processor and the
        scorer by their committed offsets; the monitor by its consumption (its counter stopped moving: it has read
        everything), since its commits may trail for minutes (docs/benchmarks.md)."""
        bench = self.bench
        deadline = time.monotonic() + self.args.steady_settle_s
        previous: float | None = None
        with bench.console.status("waiting for the services to catch up before the next rate") as status:
            while True:
                left = {
                    name: end - committed
                    for name, (committed, end, _) in ((n, g.read()) for n, g in lags.items())
                    if name != MONITOR
                }
                consumed = consumed_records(self.monitor_port, MONITOR)
                monitor_idle = consumed is not None and consumed == previous
                previous = consumed
                status.update(
                    "waiting for the services to catch up: "
                    + ", ".join(f"{n} {v:,}" for n, v in left.items())
                    + f", monitor {'idle' if monitor_idle else 'reading'}"
                )
                if monitor_idle and all(v <= 2 * self.args.partitions for v in left.values()):
                    return
                if time.monotonic() > deadline:
                    bench.log(f"[yellow]not caught up after {self.args.steady_settle_s:.0f}s: {left}[/]")
                    return
                time.sleep(1.0)

    # --- memory and the online store ------------------------------------------------------------------------------

    def _memory(self, name: str, process: subprocess.Popen[bytes]) -> None:
        record_memory(self.results.memory, name, process.pid)

    def online_store(self, accounts: Sequence[str], sample: int = 200) -> None:
        """Redis `MEMORY USAGE` (every field counted: SAMPLES 0) of a sample of account keys, each holding the
        account's real-time snapshot and its daily profile (Feast keeps one hash per entity), and `used_memory`
        over the keys Redis holds."""
        import redis as redis_lib

        from scorer.features.redis_client import ACCOUNT_JOIN_KEY, redis_key

        settings = self.bench.stack.settings.redis_settings()
        client = redis_lib.Redis(host=settings.host, port=settings.port)
        try:
            rng = random.Random(self.args.seed)
            chosen = rng.sample(list(accounts), min(sample, len(accounts)))
            project = self.bench.env["FEAST_PROJECT"]
            sizes = [client.memory_usage(redis_key(project, ACCOUNT_JOIN_KEY, a), samples=0) for a in chosen]
            found = [int(s) for s in sizes if s is not None]
            info = client.info("memory")
            keys = int(client.dbsize())
        finally:
            client.close()
        self.results.online_store = {
            "account_keys_sampled": len(chosen),
            "account_keys_found": len(found),
            "bytes_per_account_key_mean": round(float(np.mean(found)), 1) if found else None,
            "bytes_per_account_key_p50": float(np.median(found)) if found else None,
            "bytes_per_account_key_max": max(found) if found else None,
            "used_memory_bytes": int(info.get("used_memory", 0)),
            "keys": keys,
            "used_memory_per_key": round(int(info.get("used_memory", 0)) / max(keys, 1), 1),
        }

    # --- stages ---------------------------------------------------------------------------------------------------

    def stages(self) -> None:
        bench, args = self.bench, self.args
        out = bench.tmp / "processor-stages.json"
        argv = [
            "-m",
            "bench._processor_stages",
            f"--out={out}",
            f"--seed={args.seed}",
            f"--accounts={args.accounts}",
            f"--merchants={args.merchants}",
            f"--events={args.processor_stage_events}",
            f"--scores-topic={self.registry.scores.name}",
            f"--reference={bench.tmp / 'reference-champion.json'}",
        ]
        process = bench.spawn("processor-stages", argv, bench.env)
        with bench.console.status("timing the processors' steps in a process of their own"):
            code = process.wait(900)
        bench.sampler.forget("processor-stages")
        if code != 0:
            raise RuntimeError(f"bench._processor_stages exited with {code}:\n{bench.tail('processor-stages')}")
        import json

        stages: dict[str, dict[str, float]] = json.loads(out.read_text())
        drains = {"feature processor": self.results.features_drain, "monitor": self.results.monitor_drain}
        for label, steps in stages.items():
            drain = drains.get(label)
            measured = sum(v for k, v in steps.items() if "wall time" not in k)
            if drain is not None and drain.cpu_us_per_event is not None:
                steps["rest: Faust, aiokafka, commits (drain CPU − steps)"] = round(
                    drain.cpu_us_per_event - measured, 1
                )
                steps["drain: the process's CPU per event"] = drain.cpu_us_per_event
        self.results.stages = stages

    # --- goals ----------------------------------------------------------------------------------------------------

    def goals(self, scorer_rate: float | None) -> None:
        """Issue 16's goals as figures measured in this run (never as assertions)."""
        r = self.results
        goals: dict[str, Any] = {}
        for name, drain in ((FEATURES, r.features_drain), (MONITOR, r.monitor_drain)):
            if drain is not None and scorer_rate:
                drain.ratio_to_scorer = round((drain.transactions_per_s or drain.events_per_s) / scorer_rate, 3)
                goals[f"{name}_drain_over_scorer"] = drain.ratio_to_scorer
        at = [s for s in r.steady if abs(s.fraction - GOAL_FRESHNESS_AT) < 1e-9]
        if at:
            p99 = at[0].freshness_ms.get("p99")
            goals["freshness_p99_ms_at_25pct"] = p99
            goals["freshness_p99_over_goal"] = None if p99 is None else round(p99 / GOAL_FRESHNESS_P99_MS, 2)
        for s in r.steady:
            for name in (FEATURES, MONITOR):
                if name in s.lag:
                    goals[f"{name}_kept_up_at_{s.fraction:.0%}"] = s.lag[name]["kept_up"]
        r.goals = goals


def record_memory(memory: dict[str, dict[str, float]], name: str, pid: int) -> None:
    """Keep the largest peak and the latest resident set of `name`'s process (MiB)."""
    status = process_memory_kib(pid)
    if not status:
        return
    entry = memory.setdefault(name, {})
    if "VmHWM" in status:
        entry["peak_rss_mib"] = round(max(entry.get("peak_rss_mib", 0.0), status["VmHWM"] / 1024), 1)
    if "VmRSS" in status:
        entry["end_rss_mib"] = round(status["VmRSS"] / 1024, 1)


def ensure_all_topics(bench: Bench, registry: TopicRegistry) -> None:
    """Every topic of the registry (labels, the monitor's outputs, features.dlq, …): the broker creates none."""
    ensure_topics(bench.kafka, registry.all())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _recent_rate(samples: list[tuple[float, int]], span_s: float = 3.0) -> float:
    if len(samples) < 2:
        return 0.0
    last_at, last = samples[-1]
    for at, value in samples:
        if last_at - at <= span_s:
            return (last - value) / max(last_at - at, 1e-9)
    return 0.0


def _per(cpu_s: float | None, events: int) -> float | None:
    return None if cpu_s is None or events <= 0 else round(cpu_s / events * 1e6, 1)
