"""What `streamscore top` shows, computed from the services' `/metrics` text: pure functions, no I/O.

`snapshot` turns one scrape of each service (Prometheus text, or None when it did not answer) into a `TopSnapshot`;
`rates` compares two snapshots (counters per second between the scrapes); `histogram_quantile` estimates a quantile
from cumulative buckets the way PromQL's `histogram_quantile` does (linear inside the bucket). Group lag from the
broker is `streamscore.lag`'s (the same rule as the scorer's lag gauges); the CLI adds it beside.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

SCORER: Final = "streamscore_scorer"
FEATURES: Final = "streamscore_features"
MONITOR: Final = "streamscore_monitor"

VERDICTS: Final = {1.0: "better", 0.0: "inconclusive", -1.0: "worse"}
"""`streamscore_monitor_ab_verdict`'s values."""


def samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition (counters as `…_total`, histograms as `…_bucket`, …)."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


@dataclass(frozen=True, slots=True)
class PartitionLagGauge:
    """One partition's lag as the scorer publishes it (`streamscore_scorer_consumer_lag_*`)."""

    topic: str
    partition: int
    records: float | None
    seconds: float | None


@dataclass(frozen=True, slots=True)
class ModelVersion:
    variant: str
    name: str
    version: str
    kind: str
    weight: str
    experiment_id: str


@dataclass(frozen=True, slots=True)
class AbStatus:
    experiment: str
    verdicts: dict[str, str]
    """Variant → better / inconclusive / worse (the challenger against the champion)."""
    units: dict[str, float]
    srm_alarm: bool


@dataclass(frozen=True, slots=True)
class TopSnapshot:
    """One look at the services. Counters are totals since each process started; `rates` turns two into speeds."""

    taken_at: float
    """Wall time of the scrape, seconds."""
    answered: dict[str, bool]
    """Service → whether its /metrics answered."""
    events_in: float | None = None
    scored: float | None = None
    """Live scores committed (shadow scores excluded)."""
    dead_letters: float | None = None
    dead_letters_by_reason: dict[str, float] = field(default_factory=dict)
    decisions: dict[str, float] = field(default_factory=dict)
    """Live decisions (approve / review / decline) over every variant."""
    latency_buckets: list[tuple[float, float]] = field(default_factory=list)
    """The scorer's end-to-end latency histogram: (upper bound in seconds, cumulative count)."""
    lag: list[PartitionLagGauge] = field(default_factory=list)
    models: list[ModelVersion] = field(default_factory=list)
    ready: dict[str, bool] = field(default_factory=dict)
    """Service → its `_ready` gauge."""
    drift_tested: int = 0
    """Features (and the score) the monitor evaluated in its last window."""
    drifted: list[str] = field(default_factory=list)
    ab: list[AbStatus] = field(default_factory=list)
    features_processed: float | None = None

    @property
    def anything_answered(self) -> bool:
        return any(self.answered.values())

    def p99_s(self) -> float | None:
        """The p99 end-to-end latency since the scorer started (see `Rates.p99_s` for the latest interval)."""
        return histogram_quantile(0.99, self.latency_buckets)


@dataclass(frozen=True, slots=True)
class Rates:
    """Per second, between two snapshots; None where a counter is missing or restarted (went down)."""

    seconds: float
    events_in: float | None
    scored: float | None
    dead_letters: float | None
    features_processed: float | None
    p99_s: float | None
    """The p99 end-to-end latency of the records committed between the two scrapes (None when none)."""


def _total(found: Iterable[Sample], name: str) -> float | None:
    values = [s.value for s in found if s.name == name]
    return sum(values) if values else None


def snapshot(texts: Mapping[str, str | None], taken_at: float) -> TopSnapshot:
    """The snapshot of one scrape per service (`scorer`, `features`, `monitor`: its /metrics text, None when it did
    not answer). Unknown services are ignored; a missing metric stays None or empty."""
    answered = {name: text is not None for name, text in texts.items()}
    scorer = samples(texts.get("scorer") or "")
    features = samples(texts.get("features") or "")
    monitor = samples(texts.get("monitor") or "")
    ready: dict[str, bool] = {}
    for name, found, prefix in (
        ("scorer", scorer, SCORER),
        ("features", features, FEATURES),
        ("monitor", monitor, MONITOR),
    ):
        value = _total(found, f"{prefix}_ready")
        if value is not None:
            ready[name] = value >= 1.0

    reasons: dict[str, float] = {}
    decisions: dict[str, float] = {}
    buckets: list[tuple[float, float]] = []
    lag: dict[tuple[str, int], dict[str, float]] = {}
    models: list[ModelVersion] = []
    scored: float | None = None
    for s in scorer:
        if s.name == f"{SCORER}_dead_letters_total":
            reasons[s.labels["reason"]] = reasons.get(s.labels["reason"], 0.0) + s.value
        elif s.name == f"{SCORER}_decisions_total" and s.labels.get("kind") == "live":
            decisions[s.labels["decision"]] = decisions.get(s.labels["decision"], 0.0) + s.value
        elif s.name == f"{SCORER}_scored_total" and s.labels.get("kind") == "live":
            scored = (scored or 0.0) + s.value
        elif s.name == f"{SCORER}_end_to_end_latency_seconds_bucket":
            buckets.append((float(s.labels["le"]), s.value))
        elif s.name in (f"{SCORER}_consumer_lag_offsets", f"{SCORER}_consumer_lag_seconds"):
            key = (s.labels["topic"], int(s.labels["partition"]))
            lag.setdefault(key, {})[s.name.rsplit("_", 1)[-1]] = s.value
        elif s.name == f"{SCORER}_model_info":
            models.append(
                ModelVersion(
                    variant=s.labels.get("variant", "?"),
                    name=s.labels.get("model_name", "?"),
                    version=s.labels.get("model_version", "?"),
                    kind=s.labels.get("kind", "?"),
                    weight=s.labels.get("weight", "?"),
                    experiment_id=s.labels.get("experiment_id", ""),
                )
            )
    if scored is None and any(s.name == f"{SCORER}_scored_total" for s in scorer):
        scored = 0.0

    drifted = sorted(s.labels["feature"] for s in monitor if s.name == f"{MONITOR}_drift_drifted" and s.value >= 1)
    tested = sum(1 for s in monitor if s.name == f"{MONITOR}_drift_drifted")
    experiments: dict[str, dict[str, dict[str, float]]] = {}
    for s in monitor:
        if s.name in (f"{MONITOR}_ab_verdict", f"{MONITOR}_ab_units", f"{MONITOR}_ab_srm_alarm"):
            what = experiments.setdefault(s.labels["experiment"], {"verdict": {}, "units": {}, "srm": {}})
            kind = {"verdict": "verdict", "units": "units", "alarm": "srm"}[s.name.rsplit("_", 1)[-1]]
            what[kind][s.labels.get("variant", "")] = s.value
    ab = [
        AbStatus(
            experiment=x,
            verdicts={v: VERDICTS.get(value, f"{value:g}") for v, value in sorted(what["verdict"].items())},
            units=dict(sorted(what["units"].items())),
            srm_alarm=any(value >= 1 for value in what["srm"].values()),
        )
        for x, what in sorted(experiments.items())
    ]
    return TopSnapshot(
        taken_at=taken_at,
        answered=answered,
        events_in=_total(scorer, f"{SCORER}_events_in_total"),
        scored=scored,
        dead_letters=sum(reasons.values()) if reasons else None,
        dead_letters_by_reason=dict(sorted(reasons.items())),
        decisions=dict(sorted(decisions.items())),
        latency_buckets=sorted(buckets),
        lag=[
            PartitionLagGauge(topic, partition, values.get("offsets"), values.get("seconds"))
            for (topic, partition), values in sorted(lag.items())
        ],
        models=sorted(models, key=lambda m: m.variant),
        ready=ready,
        drift_tested=tested,
        drifted=drifted,
        ab=ab,
        features_processed=_total(features, f"{FEATURES}_events_processed_total"),
    )


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """PromQL's estimate from cumulative buckets (upper bound, count): linear inside the bucket that holds the q-th
    observation, the highest finite bound when it falls in +Inf; None without observations."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return ordered[-1][0]


def _per_second(before: float | None, after: float | None, seconds: float) -> float | None:
    if before is None or after is None or after < before or seconds <= 0:
        return None
    return (after - before) / seconds


def rates(before: TopSnapshot, after: TopSnapshot) -> Rates:
    """Counters per second between two snapshots, and the p99 latency of what was committed in between."""
    seconds = after.taken_at - before.taken_at
    old = dict(before.latency_buckets)
    delta = [(le, count - old.get(le, 0.0)) for le, count in after.latency_buckets]
    recent = None if any(c < 0 for _, c in delta) else histogram_quantile(0.99, delta)
    return Rates(
        seconds=seconds,
        events_in=_per_second(before.events_in, after.events_in, seconds),
        scored=_per_second(before.scored, after.scored, seconds),
        dead_letters=_per_second(before.dead_letters, after.dead_letters, seconds),
        features_processed=_per_second(before.features_processed, after.features_processed, seconds),
        p99_s=recent,
    )
