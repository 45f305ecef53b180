"""Seeded simulations that validate the monitor's statistics against known answers, shared by the unit tests
(small, seconds) and `python -m bench.statistics` (large). Each harness runs the production functions —
`sequential` vectorized over runs, `drift.DriftWindow` / `drift.evaluate` window by window — and carries a
negative control (a method that must fail in the same harness) so a harness that cannot fail is noticed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from monitor.ab import is_mature
from monitor.correction import threshold
from monitor.drift import DriftWindow, category_counts, evaluate, mixed_rows, mixed_shares
from monitor.reference import DriftReference, drift_reference, series_reference
from monitor.sequential import ClusterSums, cluster_difference, difference, half_width, log_mixture_ratio
from monitor.settings import MonitorSettings

NAIVE_Z = 1.959963984540054
"""Two-sided 5 % critical value of the naive z-test (the negative control of the peeking harness)."""


def standard_error(rate: float, runs: int) -> float:
    return math.sqrt(max(rate * (1 - rate), 1e-12) / runs)


# --- A/B: continuous peeking -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PeekingResult:
    """Per run: the first look (index) at which each test rejected, -1 if never."""

    units: NDArray[np.int64]
    """Units per arm at each look (arm A's when the split is uneven)."""
    msprt_first: NDArray[np.int64]
    msprt_direction: NDArray[np.int64]
    """Sign of the estimate (B − A) at the mSPRT's first rejection; 0 if never."""
    naive_first: NDArray[np.int64]
    ci_miss: NDArray[np.bool_]
    """The running intersection of intervals excluded the true difference at some look."""

    def rejected_by(self, units: int, first: NDArray[np.int64] | None = None) -> NDArray[np.bool_]:
        f = self.msprt_first if first is None else first
        last = int(np.searchsorted(self.units, units, side="right")) - 1
        return np.asarray((f >= 0) & (f <= last))

    def msprt_rate(self, units: int | None = None, direction: int = 0) -> float:
        hit = self.rejected_by(int(self.units[-1]) if units is None else units)
        if direction:
            hit &= self.msprt_direction == direction
        return float(hit.mean())

    def naive_rate(self) -> float:
        return float((self.naive_first >= 0).mean())


def independent(successes: ArrayLike, units: ArrayLike) -> ClusterSums:
    """The cluster sums of independent units: every unit an account of its own."""
    return (units, units, successes, units, successes, successes)


def _first_true(hits: NDArray[np.bool_]) -> NDArray[np.int64]:
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1).astype(np.int64)


def peeking(
    rate_a: float,
    rate_b: float,
    *,
    runs: int,
    looks: int = 100,
    max_units: int = 40_000,
    tau: float,
    alpha: float = 0.05,
    min_units: int = 100,
    share_b: float = 0.5,
    seed: int,
    chunk: int = 2_000,
) -> PeekingResult:
    """`runs` experiments with two arms of Bernoulli units, looked at `looks` times at equal steps up to
    `max_units` per arm (B gets `share_b` of 2·`max_units` when the split is uneven): binomial increments per
    look, cumulated. The mSPRT (production functions) and a naive two-sided z-test at 5 % (pooled variance) are
    applied at every look."""
    rng = np.random.default_rng(seed)
    per_look_b = round(2 * max_units * share_b) // looks
    per_look = 2 * max_units // looks - per_look_b
    units = per_look * np.arange(1, looks + 1, dtype=np.int64)
    units_b = per_look_b * np.arange(1, looks + 1, dtype=np.int64)
    threshold = math.log(1 / alpha)
    out: dict[str, list[NDArray[np.generic]]] = {k: [] for k in ("first", "dir", "naive", "miss")}
    for start in range(0, runs, chunk):
        r = min(chunk, runs - start)
        xa = np.cumsum(rng.binomial(per_look, rate_a, size=(r, looks)), axis=1)
        xb = np.cumsum(rng.binomial(per_look_b, rate_b, size=(r, looks)), axis=1)
        delta, var = cluster_difference(independent(xa, units), independent(xb, units_b))
        active = np.minimum(units, units_b) >= min_units
        reject = (log_mixture_ratio(delta, var, tau) >= threshold) & active
        first = _first_true(reject)
        direction = np.where(first >= 0, np.sign(delta[np.arange(r), np.maximum(first, 0)]), 0)
        w = np.where(active, half_width(var, tau, alpha), np.inf)
        low = np.maximum.accumulate(delta - w, axis=1)
        high = np.minimum.accumulate(delta + w, axis=1)
        truth = rate_b - rate_a
        pooled = (xa + xb) / (units + units_b)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = delta / np.sqrt(pooled * (1 - pooled) * (1 / units + 1 / units_b))
        out["first"].append(first)
        out["dir"].append(direction.astype(np.int64))
        out["naive"].append(_first_true(np.abs(np.nan_to_num(z)) > NAIVE_Z))
        out["miss"].append(np.asarray(((low > truth) | (high < truth)).any(axis=1)))
    return PeekingResult(
        units=units,
        msprt_first=np.concatenate(out["first"]).astype(np.int64),
        msprt_direction=np.concatenate(out["dir"]).astype(np.int64),
        naive_first=np.concatenate(out["naive"]).astype(np.int64),
        ci_miss=np.concatenate(out["miss"]).astype(bool),
    )


# --- A/B: clustered units ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusteredResult:
    robust_rate: float
    """Share of runs where the mSPRT with the cluster-robust variance (production) ever rejected."""
    naive_rate: float
    """Share of runs where the mSPRT with the per-transaction variance ever rejected (the negative control)."""
    runs: int
    units: float
    """Mean transactions per arm at the last look."""
    accounts: int
    """Accounts per arm at the last look."""
    design_effect: float
    """Mean over runs of cluster-robust V / per-transaction V at the last look."""


def clustered_peeking(
    *,
    runs: int,
    looks: int = 100,
    accounts_per_look: int = 40,
    mean_transactions: float = 5.0,
    burst_share: float = 0.1,
    burst_rate: float = 0.3,
    base_rate: float = 0.005,
    tau: float,
    alpha: float = 0.05,
    min_units: int = 100,
    seed: int,
    chunk: int = 250,
) -> ClusteredResult:
    """A/A with accounts as the randomized unit, like the scorer's routing and the generator's fraud: each look
    adds `accounts_per_look` accounts to each arm, each with a geometric number of transactions (mean
    `mean_transactions`) and an account-level rate — `burst_rate` for a `burst_share` of accounts (card testing,
    a taken-over account), `base_rate` otherwise — so an account's outcomes are correlated. Both arms are drawn
    alike; any rejection is false. The mSPRT runs at every look with the cluster-robust variance of the
    per-account sums (`cluster_difference`, production) and, as the negative control, with the per-transaction
    variance (`difference`, what the monitor used before)."""
    rng = np.random.default_rng(seed)
    threshold = math.log(1 / alpha)
    k = accounts_per_look * np.arange(1, looks + 1, dtype=np.float64)
    hits: dict[str, list[NDArray[np.bool_]]] = {"robust": [], "naive": []}
    units: list[NDArray[np.float64]] = []
    effect: list[NDArray[np.float64]] = []

    def arm(r: int) -> ClusterSums:
        n = rng.geometric(1 / mean_transactions, size=(r, looks, accounts_per_look))
        rate = np.where(rng.random(size=n.shape) < burst_share, burst_rate, base_rate)
        y = rng.binomial(n, rate)
        n, y = n.astype(np.float64), y.astype(np.float64)
        sn, sy, snn, syy, sny = (np.cumsum(v.sum(axis=2), axis=1) for v in (n, y, n * n, y * y, n * y))
        return (np.broadcast_to(k, (r, looks)), sn, sy, snn, syy, sny)

    for start in range(0, runs, chunk):
        r = min(chunk, runs - start)
        a, b = arm(r), arm(r)
        units_a = np.asarray(a[1], dtype=np.float64)
        active = np.minimum(units_a, np.asarray(b[1])) >= min_units
        delta, robust = cluster_difference(a, b)
        _, naive = difference(a[2], a[1], b[2], b[1])
        for name, var in (("robust", robust), ("naive", naive)):
            hits[name].append(np.asarray(((log_mixture_ratio(delta, var, tau) >= threshold) & active).any(axis=1)))
        units.append(units_a[:, -1])
        effect.append(robust[:, -1] / naive[:, -1])
    return ClusteredResult(
        robust_rate=float(np.concatenate(hits["robust"]).mean()),
        naive_rate=float(np.concatenate(hits["naive"]).mean()),
        runs=runs,
        units=float(np.concatenate(units).mean()),
        accounts=int(k[-1]),
        design_effect=float(np.concatenate(effect).mean()),
    )


# --- A/B: delayed labels ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DelayedLabelsResult:
    matured_rate: float
    """Share of runs where the mSPRT on matured units only ever rejected."""
    naive_rate: float
    """Share of runs where the mSPRT on every scored unit (labels so far; unlabeled = no event) rejected."""
    runs: int


def delayed_labels(
    *,
    runs: int,
    rate: float = 0.02,
    steps: int = 100,
    units_per_step: int = 800,
    share_start: float = 0.05,
    share_end: float = 0.5,
    max_delay_steps: int = 20,
    step_seconds: float = 3600.0,
    tau: float,
    alpha: float = 0.05,
    min_units: int = 100,
    seed: int,
) -> DelayedLabelsResult:
    """No true effect (both arms `rate`), a challenger whose share of traffic grows from `share_start` to
    `share_end` (a canary being ramped), each event's label arriving 0…`max_delay_steps` steps later (uniform),
    label maturity = `max_delay_steps` steps, a look after every step. Counting only matured units (`is_mature`)
    keeps the mSPRT valid; counting scored units with the labels arrived so far makes the challenger, whose units
    are younger, look as if it had fewer events (the negative control)."""
    rng = np.random.default_rng(seed)
    share = np.linspace(share_start, share_end, steps)
    n_b = np.round(units_per_step * share).astype(np.int64)
    n_a = units_per_step - n_b
    event_time = np.arange(steps) * step_seconds
    maturity_s = max_delay_steps * step_seconds
    look_time = (np.arange(steps) + 1) * step_seconds
    # matured[l, t]: units of step t count at look l.
    matured = np.stack([is_mature(event_time, now, maturity_s) for now in look_time])
    scored = event_time[None, :] < look_time[:, None]
    threshold = math.log(1 / alpha)

    def arm(n: NDArray[np.int64]) -> tuple[NDArray[np.float64], ...]:
        events = rng.binomial(n, rate, size=(runs, steps))
        delays = rng.multinomial(events, np.full(max_delay_steps + 1, 1 / (max_delay_steps + 1)))
        arrived = np.zeros((runs, steps + max_delay_steps + 1), dtype=np.int64)
        for d in range(max_delay_steps + 1):
            arrived[:, d : d + steps] += delays[:, :, d]
        # A label arriving at step s is there at the look after step s - 1 (looks at the end of steps).
        labeled_by_look = np.cumsum(arrived, axis=1)[:, 1 : steps + 1]
        m_units = matured.astype(np.float64) @ n.astype(np.float64)
        m_events = events.astype(np.float64) @ matured.T.astype(np.float64)
        s_units = scored.astype(np.float64) @ n.astype(np.float64)
        return m_units, m_events, s_units, labeled_by_look.astype(np.float64)

    ma_units, ma_events, sa_units, sa_events = arm(n_a)
    mb_units, mb_events, sb_units, sb_events = arm(n_b)

    def rejected(*arms: NDArray[np.float64]) -> float:
        ua, ea, ub, eb = arms
        delta, var = cluster_difference(independent(ea, ua), independent(eb, ub))
        active = np.minimum(ua, ub) >= min_units
        return float(((log_mixture_ratio(delta, var, tau) >= threshold) & active).any(axis=1).mean())

    return DelayedLabelsResult(
        matured_rate=rejected(ma_units, ma_events, mb_units, mb_events),
        naive_rate=rejected(sa_units, sa_events, sb_units, sb_events),
        runs=runs,
    )


# --- drift -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSpec:
    """A synthetic feature: its kind and how to draw n values shifted by `shift` population standard deviations."""

    name: str
    family: str
    """normal, lognormal, student, poisson or binary."""
    parameter: float

    @property
    def categorical(self) -> bool:
        return self.family == "binary"

    def draw(self, rng: np.random.Generator, n: int, shift: float = 0.0) -> NDArray[np.float64]:
        p = self.parameter
        if self.family == "normal":
            x, sd = rng.normal(0.0, p, n), p
        elif self.family == "lognormal":
            x, sd = rng.lognormal(0.0, p, n), math.sqrt((math.exp(p * p) - 1) * math.exp(p * p))
        elif self.family == "student":
            x, sd = rng.standard_t(p, n), math.sqrt(p / (p - 2))
        elif self.family == "poisson":
            x, sd = rng.poisson(p, n).astype(np.float64), math.sqrt(p)
        else:
            x, sd = (rng.random(n) < p).astype(np.float64), math.sqrt(p * (1 - p))
        return np.asarray(x + shift * sd, dtype=np.float64)


def synthetic_features(count: int = 30) -> list[FeatureSpec]:
    """`count` features shaped like ours: mostly continuous (some heavy-tailed), a few integer counts with ties,
    and 0/1 flags from common to rare (expected counts below 5 in a 1 000-row window for the rarest)."""
    families = [
        ("normal", 1.0),
        ("lognormal", 0.8),
        ("student", 5.0),
        ("normal", 2.0),
        ("lognormal", 1.5),
        ("poisson", 3.0),
        ("binary", 0.3),
        ("normal", 0.5),
        ("poisson", 0.4),
        ("binary", 0.02),
        ("student", 3.5),
        ("binary", 0.003),
    ]
    return [FeatureSpec(f"f{i:02d}", *families[i % len(families)]) for i in range(count)]


def _quantile_edges(values: NDArray[np.float64], bins: int = 10) -> list[float]:
    # training.registry.quantile_edges, restated: the monitor never imports training.
    cuts = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return [float(v) for v in np.unique(cuts)]


def synthetic_reference(
    specs: Sequence[FeatureSpec], rng: np.random.Generator, *, train_rows: int = 50_000, sample_rows: int = 2_000
) -> DriftReference:
    """A reference as training builds it: 10 quantile bins and shares on a training set, a sample of its rows."""
    series = []
    for spec in specs:
        train = spec.draw(rng, train_rows)
        edges = _quantile_edges(train)
        shares = np.bincount(np.searchsorted(edges, train, side="left"), minlength=len(edges) + 1) / train_rows
        sample = train[rng.choice(train_rows, size=sample_rows, replace=False)]
        series.append(
            series_reference(
                spec.name,
                "categorical" if spec.categorical else "continuous",
                {"edges": edges, "shares": shares.tolist()},
                sample.tolist(),
            )
        )
    return DriftReference(tuple(series))


@dataclass(frozen=True)
class DriftRun:
    windows: int
    any_alarm_corrected: float
    """Share of windows with at least one drifted series (the production decision)."""
    any_alarm_uncorrected: float
    """Share of windows with some p-value at or below α: testing each series at α (the negative control)."""


def stationary_drift(
    settings: Sequence[MonitorSettings],
    *,
    references: int,
    windows_per_reference: int,
    rows: int = 1_000,
    features: int = 30,
    train_rows: int = 50_000,
    seed: int,
) -> list[DriftRun]:
    """Windows drawn from the reference's own distribution, so every alarm is false; each window is evaluated
    under each of `settings` (one result each). Windows of one reference share its sample, so their alarms are
    correlated: many references with few windows each keep the binomial standard error honest."""
    rng = np.random.default_rng(seed)
    specs = synthetic_features(features)
    corrected = np.zeros(len(settings))
    uncorrected = np.zeros(len(settings))
    for _ in range(references):
        reference = synthetic_reference(specs, rng, train_rows=train_rows)
        for w in range(windows_per_reference):
            window = DriftWindow(reference, w)
            for spec in specs:
                window.add(spec.name, spec.draw(rng, rows))
            for j, s in enumerate(settings):
                records = evaluate(window, s)
                corrected[j] += any(r.drifted for r in records)
                uncorrected[j] += any(r.p_value is not None and r.p_value <= s.drift_alpha for r in records)
    total = references * windows_per_reference
    return [DriftRun(total, c / total, u / total) for c, u in zip(corrected, uncorrected, strict=True)]


@dataclass(frozen=True)
class DetectionRun:
    runs: int
    caught_within: tuple[float, ...]
    """Share of runs where the shifted feature was declared drifted within 1, 2, … windows."""
    other_alarms: float
    """Share of windows with a stable feature declared drifted."""


def shift_detection(
    settings: Sequence[MonitorSettings],
    *,
    runs: int,
    shift: float = 0.2,
    windows: int = 2,
    rows: int = 1_000,
    features: int = 30,
    runs_per_reference: int = 10,
    seed: int,
) -> list[DetectionRun]:
    """From its first window on, one continuous feature (a different one each run, in turn) is shifted by `shift`
    standard deviations; the others stay. Each window is evaluated under each of `settings`."""
    rng = np.random.default_rng(seed)
    specs = synthetic_features(features)
    continuous = [i for i, s in enumerate(specs) if not s.categorical and s.family != "poisson"]
    first_caught = np.full((len(settings), runs), -1)
    other = np.zeros(len(settings))
    reference = synthetic_reference(specs, rng)
    for run in range(runs):
        if run and run % runs_per_reference == 0:
            reference = synthetic_reference(specs, rng)
        target = continuous[run % len(continuous)]
        for w in range(windows):
            window = DriftWindow(reference, w)
            for i, spec in enumerate(specs):
                window.add(spec.name, spec.draw(rng, rows, shift if i == target else 0.0))
            for j, s in enumerate(settings):
                records = evaluate(window, s)
                if first_caught[j, run] < 0 and records[target].drifted:
                    first_caught[j, run] = w
                other[j] += any(r.drifted for i, r in enumerate(records) if i != target)
    return [
        DetectionRun(
            runs=runs,
            caught_within=tuple(float(((f >= 0) & (f <= w)).mean()) for w in range(windows)),
            other_alarms=float(o) / (runs * windows),
        )
        for f, o in zip(first_caught, other, strict=True)
    ]


# --- drift: realistic mixed inputs, a daily rhythm, float32 references -----------------------------------------


def activity(hour: NDArray[np.float64]) -> NDArray[np.float64]:
    """The daily rhythm: relative traffic by hour of day (UTC), peak at 15:00, trough at 03:00 (ratio ~5.7)."""
    return np.asarray(1.0 + 0.7 * np.cos(2 * np.pi * (hour - 15.0) / 24.0), dtype=np.float64)


def rhythm_times(rng: np.random.Generator, n: int, start: float, span_s: float) -> NDArray[np.float64]:
    """`n` event times in [start, start + span) with the daily rhythm's intensity (rejection sampling), sorted."""
    out: list[NDArray[np.float64]] = []
    have = 0
    while have < n:
        t = rng.uniform(start, start + span_s, size=2 * (n - have) + 16)
        keep = t[rng.random(len(t)) * 1.7 < activity(t % 86_400 / 3600)]
        out.append(keep)
        have += len(keep)
    return np.sort(np.concatenate(out)[:n])


REALISTIC_FLAGS = ("flag_0_4", "flag_2", "flag_30", "flag_95")


def realistic_features(rng: np.random.Generator, times: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
    """Model inputs shaped like ours, computed in float64 as the scorer attaches them: counts with 70–95 % zeros
    (two follow the rhythm), log1p of a count and a rate k/m (ties float32 cannot represent exactly), a log amount
    and a heavy-tailed input, the hour as sine and cosine, and 0/1 flags at 0.4 %, 2 %, 30 % (more at night) and
    95 %. Amount, the counts of 5 minutes and 24 hours, the hour and the 30 % flag follow the daily rhythm."""
    n = len(times)
    hour = times % 86_400 / 3600
    act = activity(hour)
    angle = 2 * np.pi * hour / 24
    trials = 1 + rng.poisson(20, size=n)
    return {
        "count_5m": rng.poisson(0.05 * act).astype(np.float64),
        "count_24h": rng.poisson(0.36 * act).astype(np.float64),
        "count_1h_log": np.log1p(rng.poisson(0.16, size=n).astype(np.float64)),
        "rate": rng.binomial(trials, 0.03) / trials,
        "amount_log": np.log1p(rng.lognormal(3.0 + 0.3 * (act - 1), 1.2)),
        "heavy": rng.standard_t(2.5, size=n),
        "hour_sin": np.sin(angle),
        "hour_cos": np.cos(angle),
        "flag_0_4": (rng.random(n) < 0.004).astype(np.float64),
        "flag_2": (rng.random(n) < 0.02).astype(np.float64),
        "flag_30": (rng.random(n) < 0.3 * (1.3 - 0.3 * act)).astype(np.float64),
        "flag_95": (rng.random(n) < 0.95).astype(np.float64),
    }


def _frozen_edges(values: NDArray[np.float64], bins: int = 10) -> list[float]:
    # training.registry.build_reference's edges, restated (the monitor never imports training): deciles, and an
    # edge just below an edge value that holds ≥ 5 % of the rows with rows below it down to the previous edge.
    edges = _quantile_edges(values, bins)
    isolated = set(edges)
    for i, e in enumerate(edges):
        below = edges[i - 1] if i else -np.inf
        if np.mean(values == e) >= 0.5 / bins and np.any((values > below) & (values < e)):
            isolated.add(float(np.nextafter(e, -np.inf)))
    return sorted(isolated)


def realistic_document(
    rng: np.random.Generator, *, train_rows: int = 20_000, sample_rows: int = 2_000, days: int = 28, strata: int = 24
) -> dict[str, Any]:
    """A reference.json (schema 2) as training writes it: a training set over `days` days with the daily rhythm,
    stored as float32 (the model's input), 10 frozen bins per feature with per-hour shares, categories of the
    flags, a sample of `sample_rows` rows with their times of day."""
    times = rhythm_times(rng, train_rows, 1_700_006_400.0, days * 86_400.0)
    columns = {k: v.astype(np.float32).astype(np.float64) for k, v in realistic_features(rng, times).items()}
    stratum = np.minimum((times % 86_400 * (strata / 86_400)).astype(np.intp), strata - 1)
    groups = [np.flatnonzero(stratum == h) for h in range(strata)]

    def shares(v: NDArray[np.float64], edges: list[float]) -> list[float]:
        counts = np.bincount(np.searchsorted(edges, v, side="left"), minlength=len(edges) + 1)
        return [float(c) for c in counts / max(len(v), 1)]

    def block(name: str, v: NDArray[np.float64]) -> dict[str, Any]:
        edges = _frozen_edges(v)
        out: dict[str, Any] = {
            "edges": edges,
            "shares": shares(v, edges),
            "strata_shares": [shares(v[g], edges) for g in groups],
        }
        if name in REALISTIC_FLAGS:
            values = np.unique(v)
            cut = [float(x) for x in values[:-1]]
            out["categories"] = {
                "values": [float(x) for x in values],
                "shares": shares(v, cut),
                "strata_shares": [shares(v[g], cut) for g in groups],
            }
        return out

    rows = np.sort(rng.choice(train_rows, size=sample_rows, replace=False))
    names = list(columns)
    return {
        "schema_version": 2,
        "feature_names": names,
        "precision": "float32",
        "day_strata": strata,
        "features": {k: block(k, v) for k, v in columns.items()},
        "sample": {
            "rows": sample_rows,
            "features": [[float(columns[k][r]) for k in names] for r in rows],
            "time_of_day_s": [float(t) for t in times[rows] % 86_400],
        },
    }


@dataclass(frozen=True)
class RealisticRun:
    """Share of windows with at least one drifted series, nothing having changed (every alarm is false)."""

    windows: int
    production: float
    """The monitor as it is: two-sample tests, float32 values, the reference mixed to the window's hours."""
    one_sample: float
    """Negative control: the flags tested one-sample (the earlier χ²/binomial) against the shares of the reference
    rows compared (the sample re-drawn to the window's hours)."""
    one_sample_training: float
    """Negative control: the same against training's shares for the window's hours (20 000 training rows)."""
    unrounded: float
    """Negative control: log1p count and rate compared with scipy's KS on the float64 values, unrounded."""
    no_mix: float
    """Negative control: the whole reference sample, whatever the window's hours."""
    series: dict[str, float]
    """Production: share of windows in which each series was declared drifted."""
    by_rows: dict[int, float]
    """Production: share of windows with an alarm, per window size."""


def _one_sample_p(observed: NDArray[np.int64], shares: NDArray[np.float64]) -> float:
    # The test the monitor used before (one sample, the shares taken as exact), restated for the negative control.
    keep = (observed > 0) | (shares > 0)
    o, p = observed[keep].astype(np.float64), np.where(shares[keep] > 0, shares[keep], 1e-4)
    p = p / p.sum()
    n = o.sum()
    if len(o) < 2:
        return 1.0
    if len(o) == 2 and (p * n).min() < 5:
        return float(stats.binomtest(round(o[1]), round(n), float(p[1])).pvalue)
    return float(stats.chisquare(o, p * n).pvalue)


def realistic_drift(
    settings: Sequence[MonitorSettings],
    *,
    references: int,
    windows_per_reference: int,
    rows: Sequence[int] = (100, 1_000, 10_000),
    span_hours: Sequence[int] = (1, 4),
    train_rows: int = 20_000,
    sample_rows: int = 2_000,
    seed: int,
) -> list[RealisticRun]:
    """Stationary windows of `realistic_features` (nothing changes: every alarm is false), window w of a reference
    with rows[w % len(rows)] values over span_hours[(w // len(rows)) % len(span_hours)] hours starting at a random
    hour of a later day, evaluated under each of `settings` by the production functions and by the three negative
    controls, each of which changes one thing."""
    rng = np.random.default_rng(seed)
    alarms = np.zeros((len(settings), 5))
    per_series: list[dict[str, int]] = [{} for _ in settings]
    per_rows: list[dict[int, list[int]]] = [{n: [0, 0] for n in rows} for _ in settings]
    total = references * windows_per_reference
    for _ in range(references):
        document = realistic_document(rng, train_rows=train_rows, sample_rows=sample_rows)
        flags = list(REALISTIC_FLAGS)
        mixed = drift_reference(document, {}, categorical=flags)
        whole = drift_reference({**document, "day_strata": 0}, {}, categorical=flags)
        for w in range(windows_per_reference):
            n = rows[w % len(rows)]
            span = span_hours[(w // len(rows)) % len(span_hours)]
            start = 1_700_006_400.0 + 86_400.0 * int(rng.integers(30, 400)) + 3600.0 * int(rng.integers(0, 24))
            times = rhythm_times(rng, n, start, span * 3600.0)
            values = realistic_features(rng, times)
            window, unmixed = DriftWindow(mixed, w), DriftWindow(whole, w)
            for name, v in values.items():
                window.add(name, v, times)
                unmixed.add(name, v, times)
            for j, s in enumerate(settings):
                records = evaluate(window, s)
                p = [r.p_value for r in records]
                one, trained, raw = list(p), list(p), list(p)
                for i, ref in enumerate(mixed.series):
                    if p[i] is None:
                        continue
                    if ref.kind == "categorical":
                        take = mixed_rows(ref, window.strata[i], int(window.cells[i].sum()))
                        counts = (
                            ref.sample_counts
                            if take is None
                            else np.bincount(ref.sample_point[take], minlength=len(ref.points))
                        )
                        expected = np.append(counts / counts.sum(), 0.0)
                        observed = category_counts(ref, window.cells[i])
                        one[i] = _one_sample_p(observed, expected)
                        assert ref.category_shares is not None
                        shares = mixed_shares(ref.category_shares, ref.category_strata_shares, window.strata[i])
                        trained[i] = _one_sample_p(observed, shares)
                    elif ref.name in ("count_1h_log", "rate"):
                        raw[i] = float(stats.ks_2samp(values[ref.name], ref.sample).pvalue)
                for k, family in enumerate((one, trained, raw)):
                    tested = [x for x in family if x is not None]
                    cut = threshold(tested, s.drift_alpha, s.correction)
                    alarms[j, 1 + k] += any(x <= cut for x in tested)
                alarm = any(r.drifted for r in records)
                alarms[j, 0] += alarm
                per_rows[j][n][0] += alarm
                per_rows[j][n][1] += 1
                alarms[j, 4] += any(r.drifted for r in evaluate(unmixed, s))
                for r in records:
                    per_series[j][r.feature] = per_series[j].get(r.feature, 0) + r.drifted
    return [
        RealisticRun(
            windows=total,
            production=float(a[0]) / total,
            one_sample=float(a[1]) / total,
            one_sample_training=float(a[2]) / total,
            unrounded=float(a[3]) / total,
            no_mix=float(a[4]) / total,
            series={k: v / total for k, v in c.items()},
            by_rows={n: hit / max(seen, 1) for n, (hit, seen) in b.items()},
        )
        for a, c, b in zip(alarms, per_series, per_rows, strict=True)
    ]
