"""Live traffic on the simulated clock: the world played on from a start at a speed, never past the wall clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from producers.client import DeliveryStats, EventProducer
from producers.generator import REPORT_DELAY_FACTOR, GeneratorConfig, TransactionGenerator
from producers.live import LiveRun, run_live
from producers.world import build_world
from streamscore.contracts import Label, Transaction


class MemoryProducer:
    """EventProducer's interface, keeping what is sent (with the wall-clock time it was sent) in memory."""

    def __init__(self) -> None:
        self.transactions: list[tuple[datetime, Transaction]] = []
        self.labels: list[tuple[datetime, Label]] = []
        self.stats = DeliveryStats()

    def send_transaction(self, event: Transaction) -> Transaction:
        self.transactions.append((datetime.now(UTC), event))
        self.stats.sent += 1
        return event

    def send_label(self, event: Label) -> Label:
        self.labels.append((datetime.now(UTC), event))
        self.stats.sent += 1
        return event

    def poll(self, timeout_s: float = 0.0) -> int:
        return 0

    def flush(self, timeout_s: float = 60.0, *, raise_on_error: bool = True) -> DeliveryStats:
        self.stats.delivered = self.stats.sent
        return self.stats


@pytest.fixture(scope="module")
def generator() -> TransactionGenerator:
    return TransactionGenerator(
        build_world(3, accounts=2_000, merchants=300), GeneratorConfig(seed=3, fraud_rate=0.05, rhythm=False)
    )


def test_a_fast_run_plays_the_simulated_clock_at_its_speed_and_never_passes_the_wall_clock(
    generator: TransactionGenerator,
) -> None:
    speed, duration = 7_200.0, 1.0
    start = datetime.now(UTC) - timedelta(hours=3)
    producer = MemoryProducer()
    run = LiveRun(duration_s=duration, rate=400.0, label_delay_s=600.0, start=start, speed=speed, keep_labels=True)
    summary = run_live(generator, cast(EventProducer, producer), run)
    sent = producer.transactions
    assert 200 < summary.events == len(sent) < 600
    first_wall = sent[0][0]
    for wall, tx in sent:
        assert start <= tx.event_time <= wall, "on the simulated clock, never past the wall clock"
        # Sent when the simulated clock reached it: simulated offset / speed after the start (generous jitter).
        due = first_wall + (tx.event_time - sent[0][1].event_time) / speed
        assert abs((wall - due).total_seconds()) < 0.25
    span = sent[-1][1].event_time - start
    assert timedelta(hours=1) < span <= timedelta(seconds=speed * duration), "about 2 simulated hours in a second"
    # Every label: due on the simulated clock, sent once that clock reached it, saying what the generator decided.
    assert len(producer.labels) == summary.labels_sent == summary.events and not summary.labels_not_sent
    delays = {label.event_id: label.labeled_at - label.event_time for _, label in producer.labels}
    for _, label in producer.labels:
        assert summary.labels[label.event_id] is label.is_fraud
        low, high = REPORT_DELAY_FACTOR if label.is_fraud else (1.0, 1.0)
        assert low * 600 - 1e-3 <= delays[label.event_id].total_seconds() <= high * 600 + 1e-3
    assert any(label.is_fraud for _, label in producer.labels)


def test_a_run_that_would_pass_the_wall_clock_is_refused_before_it_starts() -> None:
    with pytest.raises(ValueError, match="past the wall clock"):
        LiveRun(duration_s=60.0, rate=300.0, start=datetime.now(UTC) - timedelta(hours=1), speed=750.0)
    with pytest.raises(ValueError, match="needs its simulated start"):
        LiveRun(duration_s=60.0, rate=300.0, speed=750.0)
