"""Live traffic: generated transactions sent at a target rate, labels sent when they are due.

One world, one clock. The live stream is the history's process continued: the same world, the same per-account
rates, the same daily rhythm and fraud patterns. It plays the world's simulated time from `LiveRun.start` (where
the history ended) at `LiveRun.speed` simulated seconds per wall second: an event of simulated time `t` is sent at
`started + (t - start) / speed` on the wall clock and carries `t` as its event time. So a demo can play the world's
next hours in a minute while every account behaves as it did in the history (a busier live stream than the history
would put every velocity feature outside what the model learned). Whatever reads event time (feature windows, TTLs,
the monitor's windows and label maturity) works on the simulated clock; latency is measured from a record's arrival
(the broker's log-append time), never from its event time. The start must be far enough back that no event time
passes the wall clock: `start + speed x duration <= now`; a run that would pass it stops there.

A label is due at its `labeled_at = event_time + label_delay x` the event's delay factor (simulated clock), and is
sent when the simulated clock reaches it. Unreported fraud is labelled legitimate (`GeneratedEvent.labeled_fraud`).

Without a start (`start=None`) the run plays from now at speed 1: event times follow the wall clock. `rate=0`
sends as fast as possible and stamps each event with the wall-clock time at sending (benchmarks).
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from producers.client import EventProducer
from producers.generator import TransactionGenerator
from streamscore.contracts import Label

_POLL_EVERY = 500
_CLOCK_SLACK = timedelta(milliseconds=500)
"""Tolerance between the monotonic pacing clock and the wall clock before a run counts as passing it."""


@dataclass
class LiveProgress:
    events: int
    labels: int
    pending_labels: int
    elapsed_s: float


@dataclass
class LiveSummary:
    events: int = 0
    frauds: int = 0
    by_pattern: Counter[str] = field(default_factory=Counter)
    labels_sent: int = 0
    labels_not_sent: int = 0
    delivered: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    send_elapsed_s: float = 0.0
    labels: dict[str, bool] = field(default_factory=dict)
    """Event id → what its label says (fraud reported), when `LiveRun.keep_labels`."""

    @property
    def events_per_s(self) -> float:
        return self.events / self.send_elapsed_s if self.send_elapsed_s > 0 else 0.0


ProgressCallback = Callable[[LiveProgress], None]


@dataclass
class LiveRun:
    """What to send: stop after `events` transactions or `duration_s` seconds, whichever first."""

    events: int | None = None
    duration_s: float | None = None
    rate: float = 0.0
    """Events per second; 0 = as fast as possible."""
    label_delay_s: float = 30.0
    """Simulated seconds from a transaction to its label (legitimate events; reported fraud comes later)."""
    send_labels: bool = True
    wait_for_labels: bool = True
    """After the last transaction, keep running until every label has matured and been sent."""
    start: datetime | None = None
    """Simulated time of the first event (where the history ended); None = now, at speed 1."""
    speed: float = 1.0
    """Simulated seconds per wall-clock second: `rate / speed` events per simulated second."""
    keep_labels: bool = False
    """Keep every event's label in the summary (the demo judges its decisions by them)."""

    def __post_init__(self) -> None:
        if self.events is None and self.duration_s is None:
            raise ValueError("a live run needs a number of events or a duration")
        if not math.isfinite(self.speed) or self.speed < 1.0:
            raise ValueError(f"speed must be a finite number >= 1, got {self.speed}")
        if self.start is None and self.speed != 1.0:
            raise ValueError("a live run faster than real time needs its simulated start")
        if self.start is not None and self.duration_s is not None:
            end = self.start + timedelta(seconds=self.duration_s * self.speed)
            if end > datetime.now(UTC):
                raise ValueError(
                    f"a run from {self.start:%Y-%m-%d %H:%M:%S} UTC at {self.speed:g}x for {self.duration_s:g} s "
                    f"would reach {end:%Y-%m-%d %H:%M:%S} UTC, past the wall clock"
                )

    @property
    def simulated_rate(self) -> float:
        """Events per simulated second."""
        return self.rate / self.speed


def run_live(
    generator: TransactionGenerator,
    producer: EventProducer,
    run: LiveRun,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> LiveSummary:
    summary = LiveSummary()
    pending: list[tuple[float, int, Label]] = []
    delay = timedelta(seconds=run.label_delay_s)
    paced = run.rate > 0
    sim_start = run.start or datetime.now(UTC)
    sim_epoch = sim_start.timestamp()
    started = time.monotonic()  # after sim_start: at speed 1 from now, an event is never due before its time
    last_report = started

    def wall_due(sim: datetime) -> float:
        """The monotonic time at which simulated time `sim` is reached."""
        return started + (sim.timestamp() - sim_epoch) / run.speed

    def send_due_labels(now: float) -> None:
        while pending and pending[0][0] <= now:
            _, _, label = heapq.heappop(pending)
            producer.send_label(label)
            summary.labels_sent += 1

    def report(now: float) -> None:
        nonlocal last_report
        if on_progress and now - last_report >= 0.2:
            last_report = now
            on_progress(LiveProgress(summary.events, summary.labels_sent, len(pending), now - started))

    stream = generator.stream(sim_start, rate_per_s=run.simulated_rate if paced else 1000.0)
    for generated in stream:
        now = time.monotonic()
        tx = generated.transaction
        # Pace against the simulated schedule, not the previous event, so short stalls are caught up.
        due = wall_due(tx.event_time) if paced else now
        if (
            (run.events is not None and summary.events >= run.events)
            or (run.duration_s is not None and max(now, due) - started >= run.duration_s)
            or should_stop()
        ):
            break
        if paced:
            while now < due:
                send_due_labels(now)
                time.sleep(min(due - now, 0.05))
                now = time.monotonic()
        else:
            tx = tx.model_copy(update={"event_time": datetime.now(UTC)})
            # The label's due time counts from here: a monotonic reading taken before the event time (a loaded
            # machine can spend milliseconds in between) sent labels that much before their labeled_at.
            now = time.monotonic()
        if tx.event_time > datetime.now(UTC) + _CLOCK_SLACK:  # the simulated clock never passes the wall clock
            break
        producer.send_transaction(tx)
        summary.events += 1
        if run.keep_labels:
            summary.labels[tx.event_id] = generated.labeled_fraud
        if generated.is_fraud:
            summary.frauds += 1
            summary.by_pattern[generated.pattern or "unknown"] += 1
        if run.send_labels:
            labeled_at = tx.event_time + delay * generated.label_delay_factor
            label = Label(
                event_id=tx.event_id,
                account_id=tx.account_id,
                is_fraud=generated.labeled_fraud,
                fraud_pattern=generated.pattern,
                event_time=tx.event_time,
                labeled_at=labeled_at,
            )
            # Sent no earlier than labeled_at on the run's clock (after the event's own send when not paced).
            label_due = wall_due(labeled_at) if paced else now + (labeled_at - tx.event_time).total_seconds()
            heapq.heappush(pending, (label_due, summary.events, label))
        if summary.events % _POLL_EVERY == 0:
            producer.poll(0)
            send_due_labels(now)
            report(now)
    summary.send_elapsed_s = time.monotonic() - started

    if run.wait_for_labels:
        while pending and not should_stop():
            now = time.monotonic()
            send_due_labels(now)
            producer.poll(0)
            report(now)
            if pending:
                time.sleep(min(max(pending[0][0] - now, 0.0), 0.1))
    summary.labels_not_sent = len(pending)
    stats = producer.flush(raise_on_error=False)
    summary.delivered, summary.failed = stats.delivered, stats.failed
    summary.elapsed_s = time.monotonic() - started
    if on_progress:
        on_progress(LiveProgress(summary.events, summary.labels_sent, len(pending), summary.elapsed_s))
    return summary
