"""Health that tells the truth, for the Faust services (the feature processor, the monitor): liveness, readiness
and a watchdog that ends a process which stopped making progress, so its supervisor restarts it.

Pure rules over a `Progress` record, plus two small threads; nothing here imports Faust (the Faust wiring is in
`streamscore.faust_apps`), so the rules are unit-tested with a fake clock.

- **Liveness** (`/livez`): the event loop turns (a heartbeat task stamps `Progress.tick` every second) and the
  watchdog has not decided to end the process.
- **Readiness** (`/readyz`, and `/healthz` for the callers that probe that name): live; the tables are recovered
  and no rebalance is in progress; the service holds partitions of its input topics, unless the broker says
  every one of them is owned by another member (an idle replica); the broker answered the last lag read in time;
  while the group has lag, its committed offsets advanced recently; and the service's own checks (pushes to the
  online store, checkpoints).
- **Watchdog**: a thread that does not depend on the event loop. When the loop has not turned for
  `loop_stall_s` the process cannot stop gracefully, so it exits at once with `EXIT_STUCK`. When the service has
  been unready for a Kafka-side reason (no assignment, rebalancing, broker unreachable, commits not advancing
  with lag, a commit that does not return) for `stall_exit_s`, it asks for a graceful stop (`on_stall`: commit
  what is acknowledged, drain) and, if the process is still there `exit_grace_s` later (a stop can wait on the
  broker forever too), exits with `EXIT_INFRA`. Table recovery and the service's own checks never trigger it:
  recovery makes progress of its own, and the services give up on their other dependencies themselves.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Gauge

from streamscore.kafka import admin_client, consumer_config
from streamscore.lag import GroupLag, LagReader, PartitionLag, partition_lag
from streamscore.settings import KafkaSettings

log = logging.getLogger(__name__)

EXIT_INFRA: Final = 3
"""Exit status after giving up on infrastructure (no progress against the broker): a supervisor restarts it."""
EXIT_STUCK: Final = 4
"""Exit status when the event loop stopped turning (the process could not even stop gracefully)."""


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """The bounds of the health rules (from each service's settings)."""

    loop_stall_s: float = 30.0
    """Liveness fails, and the watchdog ends the process at once, when the event loop has not turned this long."""
    ready_commit_age_s: float = 30.0
    """Readiness fails when the group has lag and its committed offsets have not advanced for this long."""
    stall_exit_s: float = 120.0
    """The watchdog stops the process when it has been unready for a Kafka-side reason this long, or when one
    offset commit or one rebalance has not finished after this long."""
    lag_interval_s: float = 5.0
    """How often the group's lag is read from the broker."""
    exit_grace_s: float = 30.0
    """After asking for a graceful stop, the watchdog exits hard when the process is still there this long after."""

    @property
    def broker_silence_s(self) -> float:
        """Readiness fails when no lag read succeeded for this long (two reads missed, each with its timeout)."""
        return 3.0 * self.lag_interval_s + 2.0 * self.lag_timeout_s

    @property
    def lag_timeout_s(self) -> float:
        """Timeout of each broker request of a lag read."""
        return max(min(self.lag_interval_s, 10.0), 1.0)


@dataclass(frozen=True)
class HealthGauges:
    """The gauges `install_health` keeps current; each service defines them in its metrics.py (its own prefix)."""

    lag_offsets: Gauge
    """["topic", "partition"]: the group's lag per input partition, the broker's view (every partition, owned by
    this worker or not: a revoked partition keeps its series, and its lag keeps growing if nobody consumes it)."""
    lag_seconds: Gauge
    """["topic", "partition"]: age of the oldest record not committed yet; 0 when caught up."""
    group_lag_offsets: Gauge
    """["topic"]: the group's total lag per input topic."""
    lag_read_timestamp: Gauge
    """Wall time of the last successful lag read (the gauges above are as old as this)."""
    assigned_partitions: Gauge
    """Input partitions this worker holds."""
    ready: Gauge
    """1 while readiness passes."""

    @classmethod
    def define(cls, prefix: str, registry: CollectorRegistry, partitions: str) -> HealthGauges:
        """The gauges under a service's metric `prefix`; `partitions` names its input partitions in the help texts
        (e.g. "transactions partition")."""
        return cls(
            lag_offsets=Gauge(
                f"{prefix}_consumer_lag_offsets",
                f"The group's lag per {partitions}, as the broker sees it (committed offset to log end; every"
                " partition, held by this worker or not, so a revoked one keeps its series)",
                ["topic", "partition"],
                registry=registry,
            ),
            lag_seconds=Gauge(
                f"{prefix}_consumer_lag_seconds",
                f"Per {partitions}: now minus the timestamp of the oldest record not committed; 0 when caught up",
                ["topic", "partition"],
                registry=registry,
            ),
            group_lag_offsets=Gauge(
                f"{prefix}_consumer_group_lag_offsets",
                "The group's total lag per input topic (every replica reports the same: aggregate with max)",
                ["topic"],
                registry=registry,
            ),
            lag_read_timestamp=Gauge(
                f"{prefix}_consumer_lag_read_timestamp_seconds",
                "Wall time of the last successful lag read from the broker (the lag gauges are this old)",
                registry=registry,
            ),
            assigned_partitions=Gauge(
                f"{prefix}_assigned_partitions", "Input partitions this worker holds", registry=registry
            ),
            ready=Gauge(f"{prefix}_ready", "1 while readiness (/readyz) passes", registry=registry),
        )


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness condition. `stalls`: a Kafka-side condition the watchdog counts (see the module docstring)."""

    name: str
    ok: bool
    detail: str = ""
    stalls: bool = True
    holds_offsets: bool = False
    """A failure of this condition holds the offsets back (the feature processor's failing pushes): commits that do
    not advance are then its consequence, and the watchdog leaves that to the service's own patience."""


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    checks: tuple[Check, ...]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def stalled(self) -> bool:
        """Unready for a reason the watchdog counts."""
        return any(c.stalls for c in self.failed)

    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.detail}" if c.detail else c.name for c in self.failed]


@dataclass
class GroupView:
    """What the last lag read said about the group (the broker's view)."""

    total_lag: int = 0
    """Offsets behind on the input topics, over every partition of the group."""
    lag_by_partition: dict[tuple[str, int], int | None] = field(default_factory=dict)
    committed: dict[tuple[str, int], int | None] = field(default_factory=dict)
    owned_by_others: bool = False
    """Every input partition is assigned to a member of the group, none to this worker (an idle replica)."""
    state: str = "Unknown"
    held: frozenset[tuple[str, int]] = frozenset()
    """The partitions this worker held when the view was recorded (set by `Progress.on_group`)."""


@dataclass
class Progress:
    """What the event loop, the consumer's hooks and the lag reader record; read by the rules. Times are
    `time.monotonic()` seconds; one writer per field (the loop, or the lag thread for the broker's view)."""

    started: float = field(default_factory=time.monotonic)
    tick: float = field(default_factory=time.monotonic)
    """Last turn of the event loop (the heartbeat task)."""
    recovered: bool = False
    """The tables are recovered from their changelogs (Faust's recovery has completed)."""
    rebalancing_since: float | None = None
    commit_since: float | None = None
    """An offset commit started at this time and has not returned yet."""
    assigned: frozenset[tuple[str, int]] = frozenset()
    """Input-topic partitions this worker holds."""
    group: GroupView | None = None
    """The broker's view at the last successful lag read; None before the first one."""
    lag_read_ok: float | None = None
    """When a lag read last succeeded."""
    lag_error: str | None = None
    pending_lag: int = 0
    """Offsets behind on the partitions this worker holds, at the last lag read (the broker's view)."""
    lagging: dict[tuple[str, int], int] = field(default_factory=dict)
    """This worker's partitions with lag at the last read, and their lag."""
    advanced_at: dict[tuple[str, int], float] = field(default_factory=dict)
    """Per partition: when its committed offset last advanced, it had no lag, or it became this worker's."""
    stopping: str | None = None
    """Why the watchdog stopped the process (liveness fails from then on)."""

    def on_group(self, view: GroupView, now: float) -> None:
        """Record a successful lag read. Progress is per partition: one partition's commits (the monitor's merge
        topic moves all the time) must not hide another that is stuck. Only this worker's partitions count
        (another member's stall is that member's to report), and a partition just assigned starts afresh."""
        before = self.group
        held_before = set(before.held) if before is not None else set()
        for key, new in view.committed.items():
            old = before.committed.get(key) if before is not None else None
            moved = new is not None and (old is None or new > old)
            fresh = key in self.assigned and key not in held_before
            if moved or fresh or not view.lag_by_partition.get(key) or key not in self.advanced_at:
                self.advanced_at[key] = now
        view.held = frozenset(key for key in view.committed if key in self.assigned)
        self.lagging = {key: lag for key in view.held if (lag := view.lag_by_partition.get(key) or 0) > 0}
        self.pending_lag = sum(self.lagging.values())
        self.group, self.lag_read_ok, self.lag_error = view, now, None

    def stuck(self, now: float, after_s: float) -> list[tuple[tuple[str, int], int, float]]:
        """(partition, lag, seconds without progress) of this worker's lagging partitions stuck for `after_s`."""
        out = [(key, lag, now - self.advanced_at.get(key, now)) for key, lag in self.lagging.items()]
        return sorted((row for row in out if row[2] >= after_s), key=lambda row: -row[2])


def liveness(progress: Progress, policy: HealthPolicy, now: float) -> Verdict:
    loop_age = now - progress.tick
    checks = (
        Check("event loop", loop_age < policy.loop_stall_s, f"last turn {loop_age:.1f} s ago"),
        Check("watchdog", progress.stopping is None, progress.stopping or ""),
    )
    return Verdict(all(c.ok for c in checks), checks)


def readiness(progress: Progress, policy: HealthPolicy, now: float, extra: Iterable[Check] = ()) -> Verdict:
    """Every condition of readiness (see the module docstring); `extra`: the service's own checks."""
    checks = [*liveness(progress, policy, now).checks]
    checks.append(Check("tables recovered", progress.recovered, "recovering from the changelogs", stalls=False))
    if progress.rebalancing_since is not None:
        checks.append(Check("rebalance", False, f"in progress for {now - progress.rebalancing_since:.1f} s"))
    if progress.commit_since is not None and now - progress.commit_since >= policy.ready_commit_age_s:
        checks.append(
            Check("commit", False, f"an offset commit has not returned for {now - progress.commit_since:.1f} s")
        )
    group = progress.group
    idle_replica = group is not None and group.owned_by_others
    checks.append(
        Check(
            "partitions",
            bool(progress.assigned) or idle_replica or not progress.recovered,
            "holds no partition of its input topics",
        )
    )
    silent = now - (progress.lag_read_ok if progress.lag_read_ok is not None else progress.started)
    checks.append(
        Check(
            "broker",
            silent < policy.broker_silence_s,
            f"no lag read answered for {silent:.1f} s ({progress.lag_error or 'no answer yet'})",
        )
    )
    if group is not None and progress.lagging:
        stuck = progress.stuck(now, policy.ready_commit_age_s)
        detail = ""
        if stuck:
            (topic, partition), lag, still = stuck[0]
            detail = (
                f"{len(stuck)} partition(s) with lag and committed offsets unchanged for {policy.ready_commit_age_s:g}"
                f" s or more (longest {topic}:{partition}, lag {lag}, {still:.1f} s)"
            )
        checks.append(Check("commits", not stuck, detail))
    own = list(extra)
    if any(c.holds_offsets and not c.ok for c in own):
        checks = [Check(c.name, c.ok, c.detail, stalls=False) if c.name == "commits" else c for c in checks]
    checks.extend(own)
    return Verdict(all(c.ok for c in checks), tuple(checks))


def stall_reason(progress: Progress, policy: HealthPolicy, now: float, unready_since: float | None) -> str | None:
    """Why the watchdog should stop the process now (a graceful stop, then `EXIT_INFRA`), or None."""
    if progress.commit_since is not None and now - progress.commit_since >= policy.stall_exit_s:
        return f"an offset commit has not returned for {now - progress.commit_since:.0f} s"
    if progress.rebalancing_since is not None and now - progress.rebalancing_since >= policy.stall_exit_s:
        return f"a rebalance has not finished for {now - progress.rebalancing_since:.0f} s"
    if unready_since is not None and now - unready_since >= policy.stall_exit_s:
        return f"not ready for {now - unready_since:.0f} s"
    return None


def group_view(lag: GroupLag, topics: Iterable[str], assigned: frozenset[tuple[str, int]]) -> GroupView:
    """The broker's view of the group restricted to the input topics."""
    wanted = set(topics)
    rows = [p for p in lag.partitions if p.topic in wanted]
    owners = {(p.topic, p.partition): p.consumer_id for p in rows}
    owned_by_others = bool(rows) and not assigned and all(owner is not None for owner in owners.values())
    return GroupView(
        total_lag=sum(p.lag or 0 for p in rows),
        lag_by_partition={(p.topic, p.partition): p.lag for p in rows},
        committed={(p.topic, p.partition): p.current_offset for p in rows},
        owned_by_others=owned_by_others,
        state=lag.state,
    )


class Watchdog:
    """A daemon thread applying the rules every `interval_s` (see the module docstring). `evaluate` returns the
    readiness verdict (computed from the progress record, thread-safe to read); `on_stall(reason)` asks for a
    graceful stop; `exit` ends the process (os._exit: no cleanup can wait on a stuck loop or broker)."""

    def __init__(
        self,
        progress: Progress,
        policy: HealthPolicy,
        evaluate: Callable[[float], Verdict],
        on_stall: Callable[[str], None],
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self.progress = progress
        self.policy = policy
        self.evaluate = evaluate
        self.on_stall = on_stall
        self.interval_s = interval_s
        self.clock = clock
        self.exit = exit
        self.unready_since: float | None = None
        self.stop_requested_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> int | None:
        """One pass of the rules; returns the exit status it ended the process with (for tests), else None."""
        now = self.clock()
        p = self.progress
        if self.stop_requested_at is not None:
            # Stopping (asked by this watchdog or by a signal): only the grace deadline applies now; the loop
            # is winding down and stops beating.
            if now - self.stop_requested_at >= self.policy.exit_grace_s:
                log.critical(
                    "still running %.0f s after the stop began (%s); exiting with status %d",
                    now - self.stop_requested_at,
                    p.stopping or "stop requested",
                    EXIT_INFRA,
                )
                self.exit(EXIT_INFRA)
                return EXIT_INFRA
            return None
        loop_age = now - p.tick
        if loop_age >= self.policy.loop_stall_s:
            log.critical("the event loop has not turned for %.0f s; exiting with status %d", loop_age, EXIT_STUCK)
            self.exit(EXIT_STUCK)
            return EXIT_STUCK
        verdict = self.evaluate(now)
        if verdict.stalled:
            if self.unready_since is None:
                self.unready_since = now
        else:
            self.unready_since = None
        reason = stall_reason(p, self.policy, now, self.unready_since)
        if reason is not None:
            if verdict.failed:
                reason += f" ({'; '.join(verdict.reasons())})"
            p.stopping = reason
            self.stop_requested_at = now
            log.critical("no progress: %s; stopping for a restart (exit status %d)", reason, EXIT_INFRA)
            try:
                self.on_stall(reason)
            except Exception:
                log.exception("the graceful stop could not be requested; exiting now")
                self.exit(EXIT_INFRA)
                return EXIT_INFRA
        return None

    def stopping(self) -> None:
        """The process began to stop (a signal, or this watchdog): it must be gone within `exit_grace_s`."""
        if self.stop_requested_at is None:
            self.stop_requested_at = self.clock()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # the watchdog itself must keep watching
                log.exception("watchdog check failed")

    def stop(self) -> None:
        self._stop.set()


class CommittedLagReader:
    """The group's lag on its input topics, read without the admin client's coordinator requests: committed offsets
    through a consumer of the group that never subscribes (OffsetFetch), log ends read_committed (ListOffsets), the
    oldest unconsumed record's timestamp by `streamscore.lag`'s peek. librdkafka 2.16 aborted the whole process
    (`rd_kafka_enq_once_del_source_return: Assertion eonce->refcnt > 0`) when the broker was SIGKILLed while an
    admin request to the group coordinator waited (found by the scorer's fault test); in a Faust worker that would
    take the worker down. Who owns which partition is such a request: it is asked only when `owners` is True (the
    worker holds no input partition, so it needs to know whether another member holds them all)."""

    def __init__(self, kafka: KafkaSettings, group: str, topics: Iterable[str], timeout_s: float) -> None:
        self.kafka = kafka
        self.group = group
        self.topics = tuple(topics)
        self.timeout_s = timeout_s
        self._offsets = Consumer(
            {**consumer_config(kafka, group, "health-lag"), "log_level": 3, "enable.auto.commit": False}
        )
        self._peeks = LagReader(kafka, timeout_s=timeout_s, peek_timeout_s=timeout_s)
        self._admin: Any = None

    def read(self, owners: bool = False) -> GroupLag:
        tps: list[TopicPartition] = []
        for topic in self.topics:
            metadata = self._offsets.list_topics(topic, timeout=self.timeout_s).topics.get(topic)
            if metadata is None or metadata.error is not None:
                raise KafkaException(metadata.error if metadata is not None else f"no metadata for {topic}")
            tps.extend(TopicPartition(topic, p) for p in sorted(metadata.partitions))
        committed = {
            (tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None
            for tp in self._offsets.committed(tps, timeout=self.timeout_s)
        }
        ends = {
            (tp.topic, tp.partition): int(self._offsets.get_watermark_offsets(tp, timeout=self.timeout_s)[1])
            for tp in tps
        }
        behind = {k: c for k, c in committed.items() if c is not None and c < ends[k]}
        peeks = self._peeks.peek(behind)
        now_ms = int(time.time() * 1000)
        owner: dict[tuple[str, int], str] = {}
        state, members = "Unknown", 0
        if owners:
            if self._admin is None:
                self._admin = admin_client(self.kafka, quiet=True)
            description = self._admin.describe_consumer_groups([self.group], request_timeout=self.timeout_s)[
                self.group
            ].result(timeout=self.timeout_s)
            owner = {
                (tp.topic, tp.partition): m.member_id
                for m in description.members
                for tp in (m.assignment.topic_partitions if m.assignment else [])
            }
            state = getattr(description.state, "name", str(description.state)).title().replace("_", "")
            members = len(description.members)
        rows: list[PartitionLag] = []
        for tp in tps:
            key = (tp.topic, tp.partition)
            row = partition_lag(
                group=self.group,
                topic=tp.topic,
                partition=tp.partition,
                committed=committed.get(key),
                log_end=ends[key],
                peek=peeks.get(key),
                now_ms=now_ms,
            )
            if key in owner:
                row = PartitionLag(**{**row.to_dict(), "consumer_id": owner[key]})
            rows.append(row)
        return GroupLag(self.group, state, members, rows)

    def close(self) -> None:
        for close in (self._peeks.close, self._offsets.close):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - closing after a failure; nothing to do about it
                log.debug("closing the lag reader's clients: %s", exc)


class LagPoller:
    """A daemon thread reading the group's lag from the broker every `policy.lag_interval_s` (`read`, blocking:
    `streamscore.lag.LagReader` in production) and handing it to `on_read(lag)`, or `on_error(exc)`. Off the
    event loop, so the gauges stay current while the loop is busy and a slow broker never blocks it."""

    def __init__(
        self,
        read: Callable[[], GroupLag],
        on_read: Callable[[GroupLag], None],
        on_error: Callable[[Exception], None],
        interval_s: float,
    ) -> None:
        self.read = read
        self.on_read = on_read
        self.on_error = on_error
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> None:
        try:
            lag = self.read()
        except Exception as exc:  # noqa: BLE001 - a failed read is a health signal, not a crash
            self.on_error(exc)
        else:
            self.on_read(lag)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lag-poller", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()


def verdict_body(verdict: Verdict, extra: Mapping[str, object] | None = None) -> dict[str, object]:
    """The JSON body of a health page: `extra`, then the failed conditions (`reasons`, empty when all pass). No
    `status` key: the HTTP status says it, and callers merge the body with the status they got."""
    return {**(extra or {}), "reasons": verdict.reasons()}
