"""`streamscore top`'s numbers from /metrics text: the text is what the services' own metrics classes expose."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitor.metrics import MonitorMetrics
from scorer.metrics import ScorerMetrics
from stream_processors.metrics import FeatureMetrics
from streamscore.top import histogram_quantile, rates, snapshot


def scorer_text(*, events: int, scored: int, latencies: list[float]) -> str:
    m = ScorerMetrics(CollectorRegistry())
    m.events_in.inc(events)
    m.scored.labels(variant="champion", kind="live").inc(scored)
    m.scored.labels(variant="shadow", kind="shadow").inc(1000)  # shadow scores are not "scored"
    m.dead_letters.labels(reason="invalid_json").inc(3)
    m.dead_letters.labels(reason="schema_violation").inc(2)
    m.decisions.labels(variant="champion", kind="live", model_version="1", decision="approve").inc(scored - 10)
    m.decisions.labels(variant="challenger", kind="live", model_version="2", decision="decline").inc(10)
    m.decisions.labels(variant="shadow", kind="shadow", model_version="2", decision="decline").inc(99)
    for seconds in latencies:
        m.end_to_end_latency.observe(seconds)
    m.lag_offsets.labels(topic="transactions", partition="0").set(7)
    m.lag_seconds.labels(topic="transactions", partition="0").set(1.5)
    m.lag_offsets.labels(topic="transactions", partition="1").set(0)
    m.lag_seconds.labels(topic="transactions", partition="1").set(0)
    m.ready.set(1)
    m.model_info.labels(variant="champion").info(
        {"model_name": "fraud-detector", "model_version": "1", "kind": "live", "weight": "0.9", "experiment_id": "x1"}
    )
    m.model_info.labels(variant="challenger").info(
        {"model_name": "fraud-detector", "model_version": "2", "kind": "live", "weight": "0.1", "experiment_id": "x1"}
    )
    return generate_latest(m.registry).decode()


def monitor_text() -> str:
    m = MonitorMetrics(CollectorRegistry())
    m.drifted.labels(feature="amount").set(1)
    m.drifted.labels(feature="count_5m").set(0)
    m.drifted.labels(feature="score").set(0)
    m.ab_verdict.labels(experiment="x1", variant="challenger").set(-1)
    m.ab_units.labels(experiment="x1", variant="challenger").set(420)
    m.ab_units.labels(experiment="x1", variant="champion").set(3800)
    m.srm_alarm.labels(experiment="x1").set(0)
    m.health.ready.set(0)
    return generate_latest(m.registry).decode()


def features_text(processed: int) -> str:
    m = FeatureMetrics(CollectorRegistry())
    m.events_processed.inc(processed)
    return generate_latest(m.registry).decode()


def test_snapshot_reads_every_section_from_the_services_text() -> None:
    snap = snapshot(
        {
            "scorer": scorer_text(events=500, scored=480, latencies=[0.004] * 99 + [0.4]),
            "features": features_text(510),
            "monitor": monitor_text(),
        },
        taken_at=100.0,
    )
    assert snap.answered == {"scorer": True, "features": True, "monitor": True}
    assert (snap.events_in, snap.scored, snap.dead_letters, snap.features_processed) == (500, 480, 5, 510)
    assert snap.dead_letters_by_reason["invalid_json"] == 3 and snap.dead_letters_by_reason["schema_violation"] == 2
    assert snap.dead_letters_by_reason["oversize"] == 0, "every reason is declared at 0"
    assert snap.decisions == {"approve": 470, "decline": 10}, "live decisions only"
    assert [(g.partition, g.records, g.seconds) for g in snap.lag] == [(0, 7, 1.5), (1, 0, 0)]
    assert [(m.variant, m.version, m.weight) for m in snap.models] == [
        ("challenger", "2", "0.1"),
        ("champion", "1", "0.9"),
    ]
    assert snap.ready == {"scorer": True, "features": False, "monitor": False}
    assert (snap.drift_tested, snap.drifted) == (3, ["amount"])
    (ab,) = snap.ab
    assert (ab.experiment, ab.verdicts, ab.units["champion"], ab.srm_alarm) == (
        "x1",
        {"challenger": "worse"},
        3800,
        False,
    )
    # 100 observations, the 99th falls in the bucket that holds 0.004 s.
    p99 = snap.p99_s()
    assert p99 is not None and 0.0025 < p99 <= 0.005


def test_a_service_that_did_not_answer_leaves_its_numbers_empty() -> None:
    snap = snapshot({"scorer": None, "features": None, "monitor": monitor_text()}, taken_at=0.0)
    assert snap.answered == {"scorer": False, "features": False, "monitor": True}
    assert snap.anything_answered
    assert (snap.events_in, snap.scored, snap.dead_letters, snap.lag, snap.models) == (None, None, None, [], [])
    assert snap.p99_s() is None
    assert not snapshot({"scorer": None}, taken_at=0.0).anything_answered


def test_rates_between_two_scrapes_and_the_latest_p99() -> None:
    before = snapshot({"scorer": scorer_text(events=100, scored=90, latencies=[0.004] * 100)}, taken_at=10.0)
    after = snapshot(
        {"scorer": scorer_text(events=300, scored=290, latencies=[0.004] * 100 + [0.3] * 100)}, taken_at=12.0
    )
    speed = rates(before, after)
    assert (speed.seconds, speed.events_in, speed.scored, speed.dead_letters) == (2.0, 100.0, 100.0, 0.0)
    assert speed.features_processed is None, "no feature processor scraped"
    # Between the scrapes only the slow records were committed: their p99, not the lifetime's.
    assert speed.p99_s is not None and 0.25 < speed.p99_s <= 0.5
    lifetime = after.p99_s()
    assert lifetime is not None and speed.p99_s == pytest.approx(lifetime, rel=0.05)
    # A restarted scorer (counters went down) has no rate until the next scrape.
    restarted = rates(after, before)
    assert (restarted.events_in, restarted.p99_s) == (None, None)


def test_histogram_quantile_interpolates_like_promql() -> None:
    buckets = [(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.99, [(0.1, 0.0), (float("inf"), 10.0)]) == 0.1, "+Inf: the highest finite bound"
    assert histogram_quantile(0.99, [(0.1, 0.0), (float("inf"), 0.0)]) is None
