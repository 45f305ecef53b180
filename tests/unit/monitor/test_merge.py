"""The merging agent's logic: six partitions' closed windows merge into exactly the one-pass result, duplicates
change nothing, a window waits for every partition; A/B looks on merged counts, alerts once per change."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from monitor.ab import ABCounts, ABRecord, outcome
from monitor.alerts import Alert, ab_alerts, drift_alerts
from monitor.drift import DriftWindow, evaluate
from monitor.merge import Merger
from monitor.partition import Clocks, PartitionState, Policy, WindowBody
from monitor.reference import DriftReference
from monitor.references import ReferenceBook, score_series
from monitor.settings import MonitorSettings
from streamscore.kafka import partition_for
from tests.support.monitoring import (
    COLUMN,
    draw_features,
    label_event,
    model_scores,
    score_event,
    two_versions,
)

T0 = 1_900_000_000.0
STATS = MonitorSettings(
    window_seconds=10.0,
    min_window_events=30,
    label_maturity_s=2.0,
    ab_min_units=50,
    msprt_tau=0.05,
    expected_split={"champion": 0.5, "challenger": 0.5},
)
PARTITIONS = 6


@pytest.fixture(scope="module")
def book() -> ReferenceBook:
    return two_versions(11, sample_seed=3, strength=1.5, categorical=STATS.categorical_features)


def partitioned(book: ReferenceBook) -> list[PartitionState]:
    policy = Policy(partitions=PARTITIONS, allowed_lateness_s=0.0)
    return [PartitionState(p, STATS, policy, book) for p in range(PARTITIONS)]


def account_of(i: int) -> tuple[str, int]:
    account = f"acct-{i % 97:03d}"
    return account, partition_for(account.encode(), PARTITIONS)


def close_all(states: list[PartitionState], now: float) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for state in states:
        state.checkpoint(Clocks(now=now, scores_caught_up=True, labels_caught_up=True))
        due = state.due_windows()
        messages += [state.partial(key) for key in due]
        state.close(due)
        progress = state.progress()
        assert progress is not None
        messages.append(progress)
    return messages


def test_six_partitions_merge_into_the_one_pass_records(book: ReferenceBook) -> None:
    rng = np.random.default_rng(5)
    n = 1500
    x = draw_features(rng, n, shift={"amount_log": 0.3})
    scores = model_scores(x)
    states = partitioned(book)
    features_ref = book.features("1")
    champion_ref, shadow_ref = book.score("champion", "1"), book.score("shadow", "2")
    assert features_ref is not None and champion_ref is not None and shadow_ref is not None
    one_pass = DriftWindow(DriftReference(features_ref.series + champion_ref.series + shadow_ref.series), 0)
    one_pass.key = int(T0 // 10)
    for i in range(n):
        t = T0 + i * (9.0 / n)
        account, p = account_of(i)
        live = score_event(f"e{i}", account, t, scores[i], features=x[i])
        states[p].on_score(live, "scores", i, t)
        one_pass.add_features(live.features or {}, t)
        one_pass.add_score("champion@1", live.score, t)
        if i % 3 == 0:
            states[p].on_score(
                score_event(f"e{i}", account, t, scores[i] / 2, variant="shadow", version="2"), "shadow", i, t
            )
            one_pass.add_score("shadow@2", scores[i] / 2, t)
    store: dict[str, Any] = {}
    merger = Merger(store, book, STATS, look_interval_s=0.0)
    messages = close_all(states, T0 + 60)
    # Through JSON, as over Kafka; the first partition's window arrives twice.
    wire = [json.loads(json.dumps(m)) for m in messages]
    wire.insert(1, wire[0])
    records = []
    for m in wire:
        records += merger.on_message(m, T0 + 60).drift
    expected = evaluate(one_pass, STATS)
    assert [r.model_dump() for r in records] == [r.model_dump() for r in expected]
    assert {r.feature for r in records if r.drifted} >= {"amount_log"}
    assert {r.feature for r in records} >= {score_series("champion", "1"), score_series("shadow", "2")}
    assert store.get("done") == [int(T0 // 10)] and not any(k.startswith("w/") for k in store)
    # A late duplicate of an evaluated window is ignored.
    assert merger.on_message(wire[0], T0 + 61).drift == []


def test_a_window_waits_for_every_partition(book: ReferenceBook) -> None:
    states = partitioned(book)
    for i in range(200):
        account, p = account_of(i)
        states[p].on_score(score_event(f"e{i}", account, T0 + i * 0.01, 0.2), "scores", i, T0)
    messages = close_all(states, T0 + 60)
    merger = Merger({}, book, STATS, look_interval_s=0.0)
    last_progress = max(i for i, m in enumerate(messages) if m["type"] == "progress")
    for m in messages[:last_progress]:
        assert merger.on_message(m, T0).drift == []
    assert merger.on_message(messages[last_progress], T0).drift != []


def test_feature_states_against_another_champion_version_are_left_out(book: ReferenceBook) -> None:
    rng = np.random.default_rng(2)
    a = WindowBody(5, "1", None)
    state_v1 = PartitionState(0, STATS, Policy(partitions=2), book)
    state_v2 = PartitionState(1, STATS, Policy(partitions=2), book)
    for i, (state, version) in enumerate(((state_v1, "1"), (state_v2, "2"))):
        state.on_score(
            score_event(f"e{i}", "a", T0, 0.2, version=version, features=draw_features(rng, 1)[0]), "scores", 0, T0
        )
    key = int(T0 // 10)
    a = WindowBody.from_json(state_v1.partial(key))
    assert a.merge(WindowBody.from_json(state_v2.partial(key))) is False
    assert a.features_version == "1"
    assert set(a.scores) == {score_series("champion", "1"), score_series("champion", "2")}


# --- A/B -------------------------------------------------------------------------------------------------------


def ab_traffic(states: list[PartitionState], n: int, catch: dict[str, float], seed: int) -> None:
    """Paired units: each fraud is scored by both arms' accounts alike; an arm declines a fraud with its rate."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        variant = "champion" if i % 2 == 0 else "challenger"
        account, p = account_of(i)
        account = f"{variant}-{account}"
        p = partition_for(account.encode(), PARTITIONS)
        fraud = i % 10 in (0, 1)
        declined = fraud and rng.random() < catch[variant]
        t = T0 + i * 0.01
        s = score_event(f"e{i}", account, t, 0.9 if declined else 0.1, variant=variant)
        states[p].on_score(s, "scores", i, t)
        states[p].on_label(label_event(f"e{i}", account, t, fraud, 0.5), i)


def look_all(merger: Merger, states: list[PartitionState], now: float) -> tuple[list[ABRecord], list[Alert]]:
    records, alerts = [], []
    for state in states:
        state.checkpoint(Clocks(now=now, scores_caught_up=True, labels_caught_up=True))
        for m in state.ab_messages():
            out = merger.on_message(json.loads(json.dumps(m)), now)
            records += out.ab
            alerts += out.alerts
    return records, alerts


def test_looks_merge_every_partition_and_alert_once_on_a_worse_challenger(book: ReferenceBook) -> None:
    states = partitioned(book)
    merger = Merger({}, book, STATS, look_interval_s=5.0)
    ab_traffic(states, 4000, {"champion": 0.8, "challenger": 0.2}, seed=1)
    first, alerts = look_all(merger, states, T0 + 100)
    assert len(first) == 1, "at most one look per interval"
    records, more = look_all(merger, states, T0 + 200)
    last = records[-1]
    units = {v.variant: v.units for v in last.variants}
    assert units == {"champion": 2000, "challenger": 2000}, "every partition's counts, once"
    assert last.comparisons[0].verdict == "worse"
    assert [a.kind for a in alerts + more] == ["ab_verdict"] and alerts[0].variant == "challenger"
    assert last.srm.observed == {"champion": 97, "challenger": 97}, "accounts first seen per variant"
    # The same counts again: no new look, no new alert.
    records, alerts = look_all(merger, states, T0 + 300)
    assert records == [] and alerts == []


def test_no_verdict_when_both_arms_behave_alike(book: ReferenceBook) -> None:
    states = partitioned(book)
    merger = Merger({}, book, STATS, look_interval_s=0.0)
    ab_traffic(states, 4000, {"champion": 0.5, "challenger": 0.5}, seed=2)
    records, alerts = look_all(merger, states, T0 + 100)
    assert records and all(c.verdict == "inconclusive" for r in records for c in r.comparisons)
    assert not any(r.srm.alarm for r in records) and alerts == []


# --- alerts ----------------------------------------------------------------------------------------------------


def test_drift_alerts_name_the_series_and_grade_the_shift(book: ReferenceBook) -> None:
    rng = np.random.default_rng(9)
    reference = book.features("1")
    assert reference is not None
    window = DriftWindow(reference, 3)
    for row in draw_features(rng, 800, shift={"amount_log": 1.0, "amount_zscore": 0.15}):
        window.add_features(dict(zip(reference.names, row[[COLUMN[n] for n in reference.names]], strict=True)), T0)
    records = evaluate(window, STATS)
    alerts = drift_alerts(records, datetime.fromtimestamp(T0, tz=UTC))
    by_key = {a.key: a for a in alerts}
    assert "amount_log" in by_key and by_key["amount_log"].severity == "critical"
    assert all(a.kind == "drift" and a.window == 3 for a in alerts)
    assert {a.key for a in alerts} == {r.feature for r in records if r.drifted}


def test_a_sample_ratio_alarm_alerts_once(book: ReferenceBook) -> None:
    counts = ABCounts()
    for i in range(3000):
        variant = "champion" if i % 4 else "challenger"
        counts.add(outcome(score_event(f"e{i}", "a", T0, 0.1, variant=variant), None))
    from monitor.ab import ABState, look

    _, record = look(ABState(), counts, STATS, experiment_id="x", at=datetime.fromtimestamp(T0, tz=UTC))
    assert record.srm.alarm
    alerts, verdicts, alarm = ab_alerts(record, {}, False)
    assert [a.kind for a in alerts] == ["sample_ratio_mismatch"] and alarm
    assert ab_alerts(record, verdicts, alarm)[0] == []
