"""A/B units, counts and looks: maturity, hidden outcomes, metrics by hand, partitions merged equal one pass."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from monitor.ab import (
    ABCounts,
    ABState,
    Outcome,
    VariantCounts,
    is_mature,
    look,
    outcome,
    variant_metrics,
    verdict,
)
from monitor.sequential import SequentialState
from monitor.settings import MonitorSettings
from streamscore.contracts import Decision, Label, Score

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def score(event_id: str, decision: Decision, *, variant: str = "challenger", amount: float = 100.0) -> Score:
    return Score(
        event_id=event_id,
        account_id="acc-1",
        score={"decline": 0.9, "review": 0.5, "approve": 0.1}[decision],
        decision=decision,
        model_name="fraud-detector",
        model_version="3",
        variant=variant,
        experiment_id="exp-1",
        feature_status="ok",
        amount=amount,
        currency="EUR",
        event_time=T0,
        scored_time=T0,
        latency_ms=2.0,
    )


def label(event_id: str, fraud: bool) -> Label:
    return Label(
        event_id=event_id,
        account_id="acc-1",
        is_fraud=fraud,
        event_time=T0,
        labeled_at=T0 + timedelta(seconds=30),
    )


def test_maturity() -> None:
    t = T0.timestamp()
    assert is_mature(t, t + 60, 60.0)
    assert not is_mature(t, t + 59.9, 60.0)
    assert is_mature(np.array([t, t + 10]), t + 65, 60.0).tolist() == [True, False]


def test_outcome_of_a_matured_score() -> None:
    assert outcome(score("e1", "decline"), label("e1", True)) == Outcome("challenger", True, True, 100.0)
    assert outcome(score("e2", "review"), label("e2", False)) == Outcome("challenger", False, False, 100.0)
    # No label by maturity: an approved transaction was legitimate (no chargeback); a declined one is unknown.
    assert outcome(score("e3", "approve"), None).fraud is False
    assert outcome(score("e4", "decline"), None).fraud is None
    assert outcome(score("e5", "approve", amount=110.0), None, rates={"EUR": 1.1}).amount == pytest.approx(100.0)
    with pytest.raises(ValueError, match="not the outcome"):
        outcome(score("e6", "approve"), label("e7", False))


def test_metrics_by_hand() -> None:
    counts = VariantCounts()
    units = (
        [Outcome("v", True, True, 500.0)] * 3  # caught
        + [Outcome("v", False, True, 200.0)] * 2  # missed
        + [Outcome("v", True, False, 50.0)] * 5  # false declines
        + [Outcome("v", False, False, 40.0)] * 990
    )
    for u in units:
        counts.add(u)
    m = variant_metrics("v", counts, "fraud_caught")
    assert m.units == 1000
    assert m.decline_rate == pytest.approx(8 / 1000)
    assert (m.fraud, m.fraud_caught) == (5, 3)
    assert m.fraud_caught_per_1000 == pytest.approx(3.0)
    assert m.fraud_amount_caught_per_1000 == pytest.approx(1500.0)
    assert m.fraud_missed_per_1000 == pytest.approx(2.0)
    assert m.false_decline_rate == pytest.approx(5 / 995)
    assert m.precision == pytest.approx(3 / 8)
    assert m.recall == pytest.approx(3 / 5)
    assert m.metric_rate == pytest.approx(0.003)
    # One declined outcome hidden: what needs declined outcomes is not observable any more.
    counts.add(Outcome("v", True, None, 70.0))
    hidden = variant_metrics("v", counts, "fraud_caught")
    assert hidden.hidden_outcomes == 1
    assert hidden.precision is None and hidden.recall is None and hidden.false_decline_rate is None
    assert hidden.fraud_caught_per_1000 is None and hidden.metric_rate is None
    assert hidden.fraud_missed_per_1000 == pytest.approx(2000 / 1001)
    assert variant_metrics("v", counts, "fraud_missed").metric_rate == pytest.approx(2 / 1001)


def simulated_units(rng: np.random.Generator, n: int) -> list[Outcome]:
    variant = np.where(rng.random(n) < 0.5, "champion", "challenger")
    fraud = rng.random(n) < 0.02
    p_decline = np.where(fraud, np.where(variant == "challenger", 0.8, 0.6), 0.01)
    declined = rng.random(n) < p_decline
    amounts = rng.lognormal(4, 1, n)
    rows = zip(variant, declined, fraud, amounts, strict=True)
    return [Outcome(str(v), bool(d), bool(f), float(a)) for v, d, f, a in rows]


def test_partition_counts_merge_into_the_one_pass_result() -> None:
    rng = np.random.default_rng(12)
    units = simulated_units(rng, 30_000)
    single = ABCounts()
    for u in units:
        single.add(u)
    partitions = [ABCounts() for _ in range(6)]
    for u, p in zip(units, rng.integers(0, 6, size=len(units)), strict=True):
        partitions[p].add(u)
    merged = ABCounts()
    for part in partitions:
        merged.merge(ABCounts.from_dict(json.loads(json.dumps(part.to_dict()))))
    for name in single.variants:
        a, b = vars(single.variants[name]), vars(merged.variants[name])
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-12)
    settings = MonitorSettings(expected_split={"champion": 0.5, "challenger": 0.5})
    _, one = look(ABState(), single, settings, experiment_id="exp-1", at=T0)
    _, many = look(ABState(), merged, settings, experiment_id="exp-1", at=T0)
    # Comparisons and the ratio check depend on integer counts only: equal exactly; amounts up to summation order.
    assert one.comparisons == many.comparisons
    assert one.srm == many.srm
    for x, y in zip(one.variants, many.variants, strict=True):
        assert x.model_dump(exclude={"variant"}) == pytest.approx(y.model_dump(exclude={"variant"}), rel=1e-12)
        assert x.variant == y.variant


def test_looks_reach_a_verdict_and_survive_a_restart() -> None:
    rng = np.random.default_rng(13)
    settings = MonitorSettings(expected_split={"champion": 0.5, "challenger": 0.5})
    counts, state = ABCounts(), ABState()
    records = []
    for i in range(10):
        for u in simulated_units(rng, 6_000):
            counts.add(u)
        state, record = look(state, counts, settings, experiment_id="exp-1", at=T0 + timedelta(hours=i))
        state = ABState.from_dict(json.loads(json.dumps(state.to_dict())))  # a restart between looks
        records.append(record)
    (last,) = records[-1].comparisons
    assert (last.variant, last.baseline, last.looks) == ("challenger", "champion", 10)
    assert last.verdict == "better"
    assert 0 < last.ci_low < last.difference < last.ci_high
    assert last.p_value <= settings.ab_alpha
    p_values = [r.comparisons[0].p_value for r in records]
    assert p_values == sorted(p_values, reverse=True)
    assert not records[-1].srm.alarm
    assert records[-1].higher_is_better
    assert records[-1].variants[0].variant == "challenger"
    # Fraud let through: lower is better, and the challenger lets less through.
    _, missed = look(
        ABState(), counts, settings.model_copy(update={"ab_metric": "fraud_missed"}), experiment_id="exp-1", at=T0
    )
    assert not missed.higher_is_better
    assert missed.comparisons[0].difference < 0
    assert missed.comparisons[0].verdict == "better"


def test_verdict_follows_the_side_of_the_interval_and_the_metric_direction() -> None:
    up = SequentialState(looks=4, p_value=0.01, ci_low=0.001, ci_high=0.01, delta=0.005)
    assert verdict(up, 0.05, higher_is_better=True) == "better"
    assert verdict(up, 0.05, higher_is_better=False) == "worse"
    assert verdict(replace(up, p_value=0.2, ci_low=-0.001), 0.05, higher_is_better=True) == "inconclusive"
    # After a reset the interval may straddle 0 while p ≤ α: the estimate's sign decides.
    reset = replace(up, ci_low=-0.002, ci_high=0.001, delta=-0.001, ci_reset=True)
    assert verdict(reset, 0.05, higher_is_better=True) == "worse"
    assert verdict(SequentialState(), 0.05, higher_is_better=True) == "inconclusive"


def test_unobservable_metric_and_too_few_units_are_not_tested() -> None:
    counts = ABCounts()
    for _ in range(500):
        counts.add(Outcome("champion", False, False, 10.0))
        counts.add(Outcome("challenger", True, None, 10.0))
    settings = MonitorSettings(expected_split={"champion": 0.5, "challenger": 0.5})
    _, record = look(ABState(), counts, settings, experiment_id="exp-1", at=T0)
    (c,) = record.comparisons
    assert (c.observable, c.looks, c.verdict, c.p_value) == (False, 0, "inconclusive", 1.0)
    few = ABCounts()
    for _ in range(50):
        few.add(Outcome("champion", False, False, 10.0))
        few.add(Outcome("challenger", False, False, 10.0))
    _, record = look(ABState(), few, settings, experiment_id="exp-1", at=T0)
    assert record.comparisons[0].looks == 0


def test_srm_in_a_look_uses_assignments_when_given() -> None:
    counts = ABCounts()
    for _ in range(1000):
        counts.add(Outcome("champion", False, False, 10.0))
    for _ in range(400):
        counts.add(Outcome("challenger", False, False, 10.0))
        counts.add(Outcome("shadow", False, False, 10.0))
    settings = MonitorSettings(expected_split={"champion": 0.5, "challenger": 0.5})
    _, by_units = look(ABState(), counts, settings, experiment_id="exp-1", at=T0)
    assert by_units.srm.alarm
    assert by_units.srm.unexpected == []  # the shadow is not part of the split
    _, by_accounts = look(
        ABState(), counts, settings, experiment_id="exp-1", at=T0, assignments={"champion": 301, "challenger": 299}
    )
    assert not by_accounts.srm.alarm
    assert {c.variant for c in by_accounts.comparisons} == {"challenger", "shadow"}


def test_account_sums_are_replaced_incrementally_and_the_look_uses_them() -> None:
    rng = np.random.default_rng(5)
    counts = ABCounts()
    sums: dict[tuple[str, int], tuple[int, int, int, int, int]] = {}
    units: dict[tuple[str, int], list[Outcome]] = {}
    for _ in range(3000):
        variant = str(rng.choice(["champion", "challenger"]))
        account = int(rng.integers(300))
        burst = account % 10 == 0
        fraud = bool(rng.random() < (0.5 if burst else 0.01))
        unit = Outcome(variant, declined=bool(rng.random() < (0.8 if fraud else 0.02)), fraud=fraud, amount=1.0)
        sums[variant, account] = counts.add(unit, sums.get((variant, account)))
        units.setdefault((variant, account), []).append(unit)
    for variant in ("champion", "challenger"):
        c = counts.variants[variant]
        mine = [(len(u), sum(x.declined and bool(x.fraud) for x in u)) for (v, _), u in units.items() if v == variant]
        n = np.asarray([m[0] for m in mine])
        y = np.asarray([m[1] for m in mine])
        assert c.cluster_sums("fraud_caught") == (
            len(mine),
            n.sum(),
            y.sum(),
            (n * n).sum(),
            (y * y).sum(),
            (n * y).sum(),
        )
    # Through JSON (changelog, merge message) and by adding partitions' counts.
    again = ABCounts.from_dict(json.loads(json.dumps(counts.to_dict())))
    assert again.to_dict() == counts.to_dict()
    settings = MonitorSettings(expected_split={"champion": 0.5, "challenger": 0.5}, ab_min_units=10)
    _, record = look(ABState(), counts, settings, experiment_id="exp-1", at=T0)
    clustered = record.comparisons[0].ci_high - record.comparisons[0].ci_low
    flat = ABCounts()
    for group in units.values():
        for unit in group:
            flat.add(unit)
    _, record = look(ABState(), flat, settings, experiment_id="exp-1", at=T0)
    assert clustered > 1.2 * (record.comparisons[0].ci_high - record.comparisons[0].ci_low)
    # The sample-ratio check counts accounts by default, not transactions.
    _, record = look(ABState(), counts, settings, experiment_id="exp-1", at=T0)
    assert record.srm.observed == {v: counts.variants[v].accounts for v in ("champion", "challenger")}
