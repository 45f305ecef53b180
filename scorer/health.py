"""The scorer's health, and the HTTP side door that serves it with the metrics.

- `/livez`: the loop turns. 503 when no loop iteration (or bounded wait inside one) completed for
  `SCORER_UNHEALTHY_AFTER_S`, or once the loop has decided to exit. A supervisor that probes it restarts a wedged
  process.
- `/readyz` (and `/healthz`, the name the demo, the fault suite and Compose probe): the scorer does its job. 503
  while it recovers (an infrastructure retry, a rewind), when it has held no partitions for
  `SCORER_UNASSIGNED_AFTER_S` while the group has some for it, or when records have waited on its partitions for
  `SCORER_COMMIT_STALE_AFTER_S` without a commit.
- `/metrics`: Prometheus text format.

The verdicts are pure functions of a `LoopState` snapshot (`StreamScorer.state()`), unit-tested without Kafka.
The same conditions, lasting `SCORER_STALL_EXIT_AFTER_S`, make the loop exit (`stalled`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streamscore.exposition import prepare_exposition

if TYPE_CHECKING:
    from scorer.settings import ScorerSettings

logger = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
"""Returns (healthy, details)."""


@dataclass(frozen=True, slots=True)
class HealthBounds:
    live_after_s: float
    """Liveness fails when the loop has not turned for this long."""
    unassigned_after_s: float
    """Readiness fails after this long without partitions while the group has some for us."""
    commit_stale_after_s: float
    """Readiness fails when records have waited this long on our partitions without a commit."""
    stall_exit_after_s: float
    """Either condition lasting this long ends the process (`stalled`)."""

    @classmethod
    def of(cls, settings: ScorerSettings) -> HealthBounds:
        return cls(
            live_after_s=settings.unhealthy_after_s,
            unassigned_after_s=settings.unassigned_after_s,
            commit_stale_after_s=settings.commit_stale_after_s,
            stall_exit_after_s=settings.stall_exit_after_s,
        )


@dataclass(frozen=True, slots=True)
class LoopState:
    """What the loop looks like at `now` (all times monotonic seconds)."""

    now: float
    started: float
    last_iteration: float
    assigned: int
    """Partitions of the input topic this instance holds."""
    assigned_since: float
    """When the held partitions last changed."""
    last_commit: float | None
    """The last successful commit (transaction or offsets); None before the first."""
    pending: int | None
    """Records waiting on the held partitions, from the group's committed offsets; None when not measured."""
    pending_since: float | None
    """Since when `pending` has been above 0 (as measured); None when it is 0 or unknown."""
    should_hold: bool | None
    """Whether the group has partitions for this instance (scorer.watcher.should_hold); None when unknown."""
    recovering: str | None = None
    """What the loop is recovering from (an infrastructure retry, a rewind); None when it is not."""
    fatal: str | None = None
    """Why the loop decided to exit; None while it runs."""


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...] = ()


def unassigned_for(state: LoopState) -> float:
    """Seconds this instance has held no partitions while the group may have some for it (0 when it holds some or
    the group has none for it)."""
    if state.assigned or state.should_hold is False:
        return 0.0
    return max(state.now - max(state.assigned_since, state.started), 0.0)


def uncommitted_for(state: LoopState) -> float:
    """Seconds that records have waited on the held partitions with no commit meanwhile (0 when none wait). Counted
    from the latest of: the wait began, the last commit, the partitions changed, the start."""
    if not state.assigned or not state.pending or state.pending_since is None:
        return 0.0
    since = max(state.pending_since, state.last_commit or state.started, state.assigned_since, state.started)
    return max(state.now - since, 0.0)


def liveness(state: LoopState, bounds: HealthBounds) -> Verdict:
    reasons = []
    if state.fatal:
        reasons.append(f"exiting: {state.fatal}")
    idle = state.now - state.last_iteration
    if idle > bounds.live_after_s:
        reasons.append(f"the loop has not turned for {idle:.0f} s")
    return Verdict(not reasons, tuple(reasons))


def readiness(state: LoopState, bounds: HealthBounds) -> Verdict:
    reasons = list(liveness(state, bounds).reasons)
    if state.recovering:
        reasons.append(f"recovering: {state.recovering}")
    unassigned = unassigned_for(state)
    if unassigned > bounds.unassigned_after_s:
        group = "the group has partitions for it" if state.should_hold else "the group's view is unknown"
        reasons.append(f"no partitions for {unassigned:.0f} s while {group}")
    uncommitted = uncommitted_for(state)
    if uncommitted > bounds.commit_stale_after_s:
        reasons.append(f"{state.pending} records wait and nothing was committed for {uncommitted:.0f} s")
    return Verdict(not reasons, tuple(reasons))


def stalled(state: LoopState, bounds: HealthBounds) -> str | None:
    """Why the loop should give up on itself, or None. An unknown group view does not count here: the broker
    being unreachable has its own bound (SCORER_GIVE_UP_AFTER_S)."""
    if state.should_hold is True and (unassigned := unassigned_for(state)) >= bounds.stall_exit_after_s:
        return f"no partitions for {unassigned:.0f} s while the group has partitions for this instance"
    if (uncommitted := uncommitted_for(state)) >= bounds.stall_exit_after_s:
        return f"{state.pending} records wait on held partitions and nothing was committed for {uncommitted:.0f} s"
    return None


def details(state: LoopState) -> dict[str, Any]:
    """The JSON body's facts beside the verdict."""
    return {
        "seconds_since_loop": round(state.now - state.last_iteration, 3),
        "assigned_partitions": state.assigned,
        "pending_records": state.pending,
        "seconds_since_commit": None if state.last_commit is None else round(state.now - state.last_commit, 3),
        "should_hold_partitions": state.should_hold,
        "recovering": state.recovering,
    }


class MetricsServer:
    """`/metrics` plus one JSON health check per path (200 when it passes, else 503)."""

    def __init__(self, registry: CollectorRegistry, checks: Mapping[str, HealthCheck], host: str, port: int) -> None:
        prepare_exposition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                check = outer.checks.get(path)
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(outer.registry))
                elif check is not None:
                    healthy, facts = check()
                    status = "ok" if healthy else ("unhealthy" if path == "/livez" else "not_ready")
                    body = json.dumps({"status": status, **facts}).encode()
                    self._send(200 if healthy else 503, "application/json", body)
                else:
                    paths = ", ".join(["/metrics", *sorted(outer.checks)])
                    self._send(404, "text/plain", f"not found: try {paths}\n".encode())

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("http " + format, *args)

        self.registry = registry
        self.checks = dict(checks)
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
