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
from typing import Final

from prometheus_client import Gauge

from streamscore.lag import GroupLag

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
    committed_advanced: float = field(default_factory=time.monotonic)
    """When the committed offsets of this worker's partitions last advanced (or they had no lag)."""
    stopping: str | None = None
    """Why the watchdog stopped the process (liveness fails from then on)."""

    def on_group(self, view: GroupView, now: float) -> None:
        """Record a successful lag read. Progress: a committed offset of this worker's partitions advanced, or they
        have no lag (only this worker's: another member's stall is that member's to report)."""
        before = self.group
        mine = [key for key in view.committed if key in self.assigned]
        advanced = before is None or any(
            (new := view.committed.get(key)) is not None
            and (old := before.committed.get(key)) is not None
            and new > old
            for key in mine
        )
        self.pending_lag = sum(view.lag_by_partition.get(key) or 0 for key in mine)
        if advanced or self.pending_lag == 0:
            self.committed_advanced = now
        self.group, self.lag_read_ok, self.lag_error = view, now, None


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
    if group is not None and progress.pending_lag > 0:
        still = now - progress.committed_advanced
        checks.append(
            Check(
                "commits",
                still < policy.ready_commit_age_s,
                f"lag {progress.pending_lag} and committed offsets unchanged for {still:.1f} s",
            )
        )
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
