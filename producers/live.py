"""Live traffic: generated transactions sent at a target rate, labels sent after their maturity delay.

Event times are the wall-clock time at sending, like a payment switch stamping a swipe; the
generator's simulated clock only orders and paces the events. A label is produced `label_delay`
after its transaction (wall clock), carrying `labeled_at = event_time + label_delay`.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from producers.client import EventProducer
from producers.generator import TransactionGenerator
from streamscore.contracts import Label

_POLL_EVERY = 500


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
    send_labels: bool = True
    wait_for_labels: bool = True
    """After the last transaction, keep running until every label has matured and been sent."""

    def __post_init__(self) -> None:
        if self.events is None and self.duration_s is None:
            raise ValueError("a live run needs a number of events or a duration")


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
    started = time.monotonic()
    last_report = started

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

    stream = generator.stream(datetime.now(UTC), rate_per_s=run.rate if run.rate > 0 else 1000.0)
    for generated in stream:
        now = time.monotonic()
        # Pace against the schedule, not the previous event, so short stalls are caught up.
        due = started + summary.events / run.rate if run.rate > 0 else now
        if (
            (run.events is not None and summary.events >= run.events)
            or (run.duration_s is not None and max(now, due) - started >= run.duration_s)
            or should_stop()
        ):
            break
        if run.rate > 0:
            while now < due:
                send_due_labels(now)
                time.sleep(min(due - now, 0.05))
                now = time.monotonic()
        stamped = datetime.now(UTC)
        # Taken after the stamp: the label is due no earlier than labeled_at on the wall clock.
        stamped_mono = time.monotonic()
        tx = generated.transaction.model_copy(update={"event_time": stamped})
        producer.send_transaction(tx)
        summary.events += 1
        if generated.is_fraud:
            summary.frauds += 1
            summary.by_pattern[generated.pattern or "unknown"] += 1
        if run.send_labels:
            label = Label(
                event_id=tx.event_id,
                account_id=tx.account_id,
                is_fraud=generated.is_fraud,
                fraud_pattern=generated.pattern,
                event_time=stamped,
                labeled_at=stamped + delay,
            )
            heapq.heappush(pending, (stamped_mono + run.label_delay_s, summary.events, label))
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
