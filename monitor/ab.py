"""A/B statistics between variants: per-unit outcomes once their labels have matured, mergeable per-variant
counts, and at each look the always-valid comparison of every variant with the champion and the sample-ratio
check.

A unit is one scored transaction of a variant. It counts once its label maturity window has passed
(`is_mature`: event time + maturity ≤ the monitor's clock), with the label that arrived by then, and never
before: counting a transaction whose fraud label is still on its way as legitimate makes a variant that got its
traffic more recently (a growing canary) look better than it is (`simulation.delayed_labels` measures it).

Hidden outcomes. A declined transaction does not happen, so in a real deployment its outcome is never observed:
no chargeback comes for it. What stays observable is the fraud among approved transactions (fraud missed, its
amount) and the decline rate; fraud caught, false declines, precision and recall need the outcomes of declined
transactions. `outcome` therefore marks a declined transaction without a label at maturity as hidden, and
those metrics are reported only when no declined outcome of the variant is hidden (None otherwise) — a real
deployment gets them from a random holdout of would-be declines approved and watched, or from a shadow variant
compared on the champion's approved traffic. In our simulation a label arrives for every transaction, so
nothing is hidden and every metric is observable.

Idempotence (Faust runs at least once): the counts are sums, so the application counts a unit once — when it
leaves its table of pending units, keyed by event id — and merges per-partition counts into one per look.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field

from monitor.sequential import SequentialState, cluster_difference, difference, step
from monitor.settings import Metric, MonitorSettings
from monitor.srm import SrmResult, srm
from streamscore.contracts import Label, Score

Verdict = Literal["better", "worse", "inconclusive"]

HIGHER_IS_BETTER: dict[Metric, bool] = {
    "fraud_caught": True,
    "fraud_missed": False,
    "false_decline": False,
    "decline": False,
}
NEEDS_DECLINED_OUTCOMES: frozenset[Metric] = frozenset({"fraud_caught", "false_decline"})
METRIC_FIELDS = ("caught", "missed", "false_declines", "declined")
"""The per-account sums kept after the unit count, in `AccountSums` order."""
METRIC_COLUMN: dict[Metric, str] = {
    "fraud_caught": "caught",
    "fraud_missed": "missed",
    "false_decline": "false_declines",
    "decline": "declined",
}
AccountSums = tuple[int, int, int, int, int]
"""One account's counted units of one variant: (units, caught, missed, false declines, declined)."""


# --- units -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One matured unit of a variant."""

    variant: str
    declined: bool
    """The variant's decision was `decline` (its decision threshold); approve and review are not declines."""
    fraud: bool | None
    """The label; None when the outcome is hidden (declined, no label by maturity)."""
    amount: float


def is_mature(event_time: ArrayLike, now: float, maturity_s: float) -> NDArray[np.bool_]:
    """Whether units with these event times (epoch seconds) count at `now` (the monitor's clock: the event-time
    watermark of the labels it has read, or the wall clock when live). Vectorized for the simulations."""
    return np.asarray(np.asarray(event_time, dtype=np.float64) + maturity_s <= now)


def outcome(score: Score, label: Label | None, *, rates: Mapping[str, float] | None = None) -> Outcome:
    """The unit of a matured score with the label that arrived by maturity (None: none arrived). An approved
    transaction without a label is legitimate (no chargeback came); a declined one is hidden. `rates`: units
    of each currency per reporting-currency unit, to sum amounts in one currency (currencies absent: as is)."""
    if label is not None and label.event_id != score.event_id:
        raise ValueError(f"label {label.event_id} is not the outcome of score {score.event_id}")
    declined = score.decision == "decline"
    fraud = label.is_fraud if label is not None else (None if declined else False)
    rate = (rates or {}).get(score.currency, 1.0)
    return Outcome(variant=score.variant, declined=declined, fraud=fraud, amount=score.amount / rate)


def account_sums(before: Sequence[int] | None, unit: Outcome) -> AccountSums:
    """An account's sums after adding one of its units (`before`: its sums so far, None for none)."""
    n, caught, missed, false_declines, declined = before if before is not None else (0, 0, 0, 0, 0)
    return (
        n + 1,
        caught + int(unit.declined and unit.fraud is True),
        missed + int(not unit.declined and unit.fraud is True),
        false_declines + int(unit.declined and unit.fraud is False),
        declined + int(unit.declined),
    )


# --- counts ----------------------------------------------------------------------------------------------


@dataclass
class VariantCounts:
    """Sums over a variant's matured units (additive, so per-partition counts merge by adding)."""

    units: int = 0
    declined: int = 0
    fraud: int = 0
    """Units labeled fraud (declined or not)."""
    caught: int = 0
    """Fraud and declined."""
    missed: int = 0
    """Fraud and not declined."""
    false_declines: int = 0
    """Legitimate and declined."""
    hidden: int = 0
    """Declined with the outcome unknown."""
    amount: float = 0.0
    caught_amount: float = 0.0
    missed_amount: float = 0.0
    # Cluster sums over the variant's accounts (the randomized unit), for the cluster-robust variance: K accounts
    # with a counted unit, Σn_a², and per metric Σy_a² and Σn_a·y_a (Σn_a and Σy_a are the counts above).
    accounts: int = 0
    units_sq: int = 0
    caught_sq: int = 0
    missed_sq: int = 0
    false_declines_sq: int = 0
    declined_sq: int = 0
    caught_x: int = 0
    missed_x: int = 0
    false_declines_x: int = 0
    declined_x: int = 0

    def add(self, unit: Outcome) -> None:
        self.units += 1
        self.amount += unit.amount
        if unit.declined:
            self.declined += 1
        if unit.fraud is None:
            self.hidden += 1
        elif unit.fraud:
            self.fraud += 1
            if unit.declined:
                self.caught += 1
                self.caught_amount += unit.amount
            else:
                self.missed += 1
                self.missed_amount += unit.amount
        elif unit.declined:
            self.false_declines += 1

    def cluster(self, before: Sequence[int] | None, after: Sequence[int]) -> None:
        """Replace one account's contribution to the cluster sums: its `AccountSums` before (None: the account had
        no counted unit of this variant) by after. The sums over accounts stay exact integers."""
        if before is None:
            self.accounts += 1
        for sign, sums in ((-1, before), (1, after)):
            if sums is None:
                continue
            n = sums[0]
            self.units_sq += sign * n * n
            for name, y in zip(METRIC_FIELDS, sums[1:], strict=True):
                setattr(self, f"{name}_sq", getattr(self, f"{name}_sq") + sign * y * y)
                setattr(self, f"{name}_x", getattr(self, f"{name}_x") + sign * n * y)

    def cluster_sums(self, metric: Metric) -> tuple[int, int, int, int, int, int]:
        """(K, Σn_a, Σy_a, Σn_a², Σy_a², Σn_a·y_a) of the primary metric over this variant's accounts."""
        name = METRIC_COLUMN[metric]
        return (
            self.accounts,
            self.units,
            self.successes(metric),
            self.units_sq,
            getattr(self, f"{name}_sq"),
            getattr(self, f"{name}_x"),
        )

    def merged(self, other: VariantCounts) -> VariantCounts:
        return VariantCounts(
            **{f: getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__},
        )

    def successes(self, metric: Metric) -> int:
        """Units with a yes for the primary metric."""
        return {
            "fraud_caught": self.caught,
            "fraud_missed": self.missed,
            "false_decline": self.false_declines,
            "decline": self.declined,
        }[metric]


@dataclass
class ABCounts:
    """Per-variant counts of one experiment."""

    variants: dict[str, VariantCounts] = field(default_factory=dict)

    def add(self, unit: Outcome, before: Sequence[int] | None = None) -> AccountSums:
        """Count a unit of an account whose counted units of this variant summed to `before` (None: none yet, which
        is also how a unit counts as an account of its own); returns the account's new sums."""
        counts = self.variants.setdefault(unit.variant, VariantCounts())
        counts.add(unit)
        after = account_sums(before, unit)
        counts.cluster(before, after)
        return after

    def merge(self, other: ABCounts) -> ABCounts:
        """Add `other` into these counts; returns self."""
        for name, counts in other.variants.items():
            self.variants[name] = self.variants.get(name, VariantCounts()).merged(counts)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {name: vars(c).copy() for name, c in sorted(self.variants.items())}

    @classmethod
    def from_dict(cls, state: Mapping[str, Mapping[str, Any]]) -> ABCounts:
        return cls({name: VariantCounts(**c) for name, c in state.items()})


# --- records ---------------------------------------------------------------------------------------------


class VariantMetrics(BaseModel):
    """What a variant did, over its matured units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: str
    units: int = Field(ge=0, description="Matured transactions")
    decline_rate: float | None
    fraud: int = Field(ge=0, description="Units labeled fraud")
    fraud_caught: int = Field(ge=0, description="Fraud declined")
    fraud_caught_per_1000: float | None
    fraud_amount_caught_per_1000: float | None = Field(description="Amount of fraud declined per 1 000 units")
    fraud_missed_per_1000: float | None = Field(description="Fraud approved per 1 000 units (always observable)")
    false_decline_rate: float | None = Field(description="Share of legitimate units declined; None if hidden")
    precision: float | None = Field(description="Share of declines that were fraud; None if hidden")
    recall: float | None = Field(description="Share of fraud declined; None if hidden")
    hidden_outcomes: int = Field(ge=0, description="Declined units whose outcome is unknown")
    metric_rate: float | None = Field(description="Rate of the primary metric")


class Comparison(BaseModel):
    """A variant against the champion on the primary metric, valid at every look."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: str
    baseline: str
    difference: float = Field(description="Variant's rate minus the baseline's")
    ci_low: float = Field(description="Always-valid (1 − alpha) interval of the difference")
    ci_high: float
    p_value: float = Field(ge=0, le=1, description="Always-valid p-value: never increases")
    alpha: float
    tau: float
    looks: int = Field(ge=0, description="Looks at which the test had enough units")
    verdict: Verdict
    observable: bool = Field(description="False when the metric needs declined outcomes that are hidden")


class ABRecord(BaseModel):
    """One look at one experiment: the value the monitor publishes to `monitor.ab` (key: the experiment id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    experiment_id: str
    at: datetime = Field(description="The monitor's clock at the look")
    label_maturity_s: float
    metric: Metric
    higher_is_better: bool
    variants: list[VariantMetrics]
    comparisons: list[Comparison]
    srm: SrmResult


def _ratio(num: float, den: float, scale: float = 1.0) -> float | None:
    return num / den * scale if den > 0 else None


def variant_metrics(name: str, c: VariantCounts, metric: Metric) -> VariantMetrics:
    observable = c.hidden == 0
    legit = c.units - c.fraud - c.hidden
    return VariantMetrics(
        variant=name,
        units=c.units,
        decline_rate=_ratio(c.declined, c.units),
        fraud=c.fraud,
        fraud_caught=c.caught,
        fraud_caught_per_1000=_ratio(c.caught, c.units, 1000.0) if observable else None,
        fraud_amount_caught_per_1000=_ratio(c.caught_amount, c.units, 1000.0) if observable else None,
        fraud_missed_per_1000=_ratio(c.missed, c.units, 1000.0),
        false_decline_rate=_ratio(c.false_declines, legit) if observable else None,
        precision=_ratio(c.caught, c.declined) if observable else None,
        recall=_ratio(c.caught, c.fraud) if observable else None,
        hidden_outcomes=c.hidden,
        metric_rate=_ratio(c.successes(metric), c.units)
        if observable or metric not in NEEDS_DECLINED_OUTCOMES
        else None,
    )


# --- looks -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ABState:
    """The sequential tests' memory across looks, per compared variant."""

    tests: dict[str, SequentialState] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {name: vars(t).copy() for name, t in sorted(self.tests.items())}

    @classmethod
    def from_dict(cls, state: Mapping[str, Mapping[str, Any]]) -> ABState:
        return cls({name: SequentialState(**t) for name, t in state.items()})


def verdict(state: SequentialState, alpha: float, higher_is_better: bool) -> Verdict:
    """better / worse once the always-valid p-value is at or below α (the interval then excludes 0; its side,
    or the estimate's sign after a reset, says which way), inconclusive before."""
    if state.looks == 0 or state.p_value > alpha:
        return "inconclusive"
    excludes_zero = state.ci_low > 0 or state.ci_high < 0
    higher = state.ci_low > 0 if excludes_zero else state.delta > 0
    return "better" if higher == higher_is_better else "worse"


def look(
    state: ABState,
    counts: ABCounts,
    settings: MonitorSettings,
    *,
    experiment_id: str,
    at: datetime,
    assignments: Mapping[str, int] | None = None,
) -> tuple[ABState, ABRecord]:
    """One look at the merged counts of an experiment: every other variant against `settings.champion` with the
    mSPRT on `settings.ab_metric`, and the sample-ratio check of `assignments` (the randomized units per live
    variant: accounts first seen on each; default: the distinct accounts with matured units in `counts`) against
    `settings.expected_split`. The comparison's variance is cluster-robust at the account level
    (`sequential.cluster_difference`): the scorer randomizes accounts, and an account's transactions are
    correlated. Returns the new state and the record to publish."""
    metric = settings.ab_metric
    higher = HIGHER_IS_BETTER[metric]
    champion = counts.variants.get(settings.champion, VariantCounts())
    tests = dict(state.tests)
    comparisons = []
    for name in sorted(counts.variants):
        if name == settings.champion:
            continue
        c = counts.variants[name]
        observable = metric not in NEEDS_DECLINED_OUTCOMES or (c.hidden == 0 and champion.hidden == 0)
        test = tests.get(name, SequentialState())
        if observable and min(c.units, champion.units) >= settings.ab_min_units:
            if champion.accounts and c.accounts:
                delta, var = cluster_difference(champion.cluster_sums(metric), c.cluster_sums(metric))
            else:
                # Counts without cluster sums (state written before they were kept): per-transaction variance.
                delta, var = difference(champion.successes(metric), champion.units, c.successes(metric), c.units)
            test = step(test, float(delta), float(var), tau=settings.msprt_tau, alpha=settings.ab_alpha)
            tests[name] = test
        comparisons.append(
            Comparison(
                variant=name,
                baseline=settings.champion,
                difference=test.delta,
                ci_low=test.ci_low,
                ci_high=test.ci_high,
                p_value=test.p_value,
                alpha=settings.ab_alpha,
                tau=settings.msprt_tau,
                looks=test.looks,
                verdict=verdict(test, settings.ab_alpha, higher),
                observable=observable,
            )
        )
    live = (
        assignments
        if assignments is not None
        else {n: c.accounts for n, c in counts.variants.items() if n in settings.expected_split}
    )
    record = ABRecord(
        experiment_id=experiment_id,
        at=at,
        label_maturity_s=settings.label_maturity_s,
        metric=metric,
        higher_is_better=higher,
        variants=[variant_metrics(n, counts.variants[n], metric) for n in sorted(counts.variants)],
        comparisons=comparisons,
        srm=srm(live, settings.expected_split, settings.srm_alpha),
    )
    return replace(state, tests=tests), record
