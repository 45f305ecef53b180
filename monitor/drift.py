"""Drift of the model inputs and scores in tumbling windows: two-sample tests of each series against the
reference sample — KS for continuous series, Fisher's exact test (χ² of homogeneity for many well-filled
categories) for categorical ones — with the reference re-drawn to the window's own hours of day, PSI on the frozen
bins or on the categories, and multiple-testing control across the series of a window.

State. A window is kept per series as counts, never as values: counts in the frozen bins, in the cells below, at
and between the reference sample's distinct values (KS; a categorical series' categories), and per time-of-day
stratum of the event times. Values are first rounded to the model's precision (float32), as the scorer's cast
does: the reference holds float32 values, and a float64 value float32 cannot represent would fall between two
reference points and look like drift. The two-sample KS statistic against any subset of the reference sample
depends on the window only through the cell counts — between two consecutive reference values the reference ECDF
is flat, so the largest gap there sits at the ends of the interval — so the counts give exactly
`scipy.stats.ks_2samp`'s statistic and p-value. Memory is O(reference sample + strata) per series whatever the
window's size, and states of the same window merge by adding counts: six partitions' states merged equal one
pass over the whole window.

Testing. The reference is a sample, not the truth: every test is two-sample, so its size holds for a 2 000-row
reference and a 10 000-row window alike. Inputs that follow the daily rhythm are compared with the same hours: the
reference rows are re-drawn (a fixed subsample per stratum) in the proportions of the window's own strata
(`mixed_rows`). A window tests each series with at least `min_window_events` values; the p-values of a window
share the level α = 1 / `false_alarm_windows` through Benjamini–Hochberg or Bonferroni. PSI grades the size of a
shift; it does not decide whether the shift is real.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from monitor.correction import Correction, threshold
from monitor.reference import (
    SCORE_PREFIX,
    DriftReference,
    Kind,
    SeriesReference,
    bin_index,
    model_precision,
    model_precision_one,
    stratum_of,
    stratum_of_one,
)
from monitor.settings import MonitorSettings

Test = Literal["ks", "fisher", "chi2", "binomial"]
"""binomial: the one-sample test of earlier versions, kept so their records still parse."""
MIN_EXPECTED = 5.0
"""Cochran's rule: χ²'s approximation needs every expected count at 5 or more."""


# --- windows ---------------------------------------------------------------------------------------------


def window_key(settings: MonitorSettings, event_time: float, ordinal: int | None = None) -> int:
    """The tumbling window of an event: floor(event time / size) for time windows (epoch seconds), or
    ordinal // size for count windows, where `ordinal` numbers the events of the counted stream 0, 1, …"""
    if settings.window == "time":
        return math.floor(event_time / settings.window_seconds)
    if ordinal is None:
        raise ValueError("count windows need the event's ordinal")
    return ordinal // settings.window_events


def window_bounds(settings: MonitorSettings, key: int) -> tuple[datetime, datetime] | None:
    """[start, end) of a time window; None for count windows (their records carry the events' time span)."""
    if settings.window != "time":
        return None
    start = key * settings.window_seconds
    return _utc(start), _utc(start + settings.window_seconds)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


# --- state -----------------------------------------------------------------------------------------------


class DriftWindow:
    """Mergeable state of one window: per series of `reference`, value counts in the frozen bins and in the KS
    cells, and how many values were not finite. Add values with `add` (vectorized) or the per-event helpers;
    combine states of the same window from different partitions with `merge`."""

    def __init__(self, reference: DriftReference, key: int) -> None:
        self.reference = reference
        self.key = key
        self.bins = [np.zeros(s.bins, dtype=np.int64) for s in reference.series]
        self.cells = [np.zeros(s.cells, dtype=np.int64) for s in reference.series]
        self.missing = np.zeros(len(reference.series), dtype=np.int64)
        self.strata = [np.zeros(s.strata, dtype=np.int64) for s in reference.series]
        self.first_event_time = math.inf
        self.last_event_time = -math.inf

    def add(self, name: str, values: ArrayLike, event_times: ArrayLike = ()) -> None:
        """Count `values` of series `name` (feature name or `score:<variant>`) at the model's precision.
        `event_times` (epoch seconds, one per value) widen the window's observed time span and give each value's
        time-of-day stratum; without them the window is compared with the whole reference sample."""
        i = self.reference.index(name)
        ref = self.reference.series[i]
        v = model_precision(np.atleast_1d(np.asarray(values, dtype=np.float64)))
        ok = np.isfinite(v)
        finite = v[ok]
        self.missing[i] += len(v) - len(finite)
        self.bins[i] += np.bincount(bin_index(ref.edges, v), minlength=ref.bins)
        if len(ref.points):
            self.cells[i] += np.bincount(_cell_index(ref.points, finite), minlength=ref.cells)
        times = np.atleast_1d(np.asarray(event_times, dtype=np.float64))
        if ref.strata and times.size:
            if times.shape != v.shape:
                raise ValueError(f"{len(times)} event times for {len(v)} values of {name!r}")
            self.strata[i] += np.bincount(stratum_of(times[ok], ref.strata), minlength=ref.strata)
        if times.size:
            self.first_event_time = min(self.first_event_time, float(times.min()))
            self.last_event_time = max(self.last_event_time, float(times.max()))

    def add_features(self, features: Mapping[str, float], event_time: float) -> None:
        """One event's model inputs (a `Score.features` map; names outside the reference are ignored). Add each
        event's features once: from its `scores` record, not again from a shadow score of the same event."""
        for name, value in features.items():
            if name in self.reference:
                self._add_one(self.reference.index(name), value, event_time)
        self._saw(event_time)

    def add_rows(self, rows: Sequence[Mapping[str, float]], event_times: Sequence[float]) -> None:
        """`add_features` of many events at once, with the same counts (tested equal): one vectorized `add` per
        series instead of ~1 µs of Python per event and feature — the monitor buffers a window's rows and adds them
        at its checkpoint."""
        if len(rows) != len(event_times):
            raise ValueError(f"{len(event_times)} event times for {len(rows)} rows")
        if not rows:
            return
        for name in self.reference.names:
            try:
                values: Sequence[float] = [row[name] for row in rows]
                times: Sequence[float] = event_times
            except KeyError:  # a row without this series: only the rows that have it count, as in add_features
                kept = [(row[name], t) for row, t in zip(rows, event_times, strict=True) if name in row]
                values, times = [v for v, _ in kept], [t for _, t in kept]
            if values:
                self.add(name, values, times)
        self._saw(min(event_times))
        self._saw(max(event_times))

    def add_score(self, variant: str, score: float, event_time: float) -> None:
        """One score of `variant` (from `scores` or `scores.shadow`); variants without a reference are ignored."""
        name = SCORE_PREFIX + variant
        if name in self.reference:
            self._add_one(self.reference.index(name), score, event_time)
        self._saw(event_time)

    def _add_one(self, i: int, value: float, event_time: float) -> None:
        # One value in plain Python (bisect on lists): a Faust agent calls this per event and series, where
        # numpy's per-call overhead would cost ~20x more. Same rules as `add` (tested equal).
        ref = self.reference.series[i]
        value = model_precision_one(value)
        if not math.isfinite(value):
            self.missing[i] += 1
            self.bins[i][len(ref.edges) if math.isnan(value) else bisect.bisect_left(ref.edge_list, value)] += 1
            return
        self.bins[i][bisect.bisect_left(ref.edge_list, value)] += 1
        if ref.point_list:
            k = bisect.bisect_left(ref.point_list, value)
            self.cells[i][2 * k + (k < len(ref.point_list) and ref.point_list[k] == value)] += 1
        if ref.strata:
            self.strata[i][stratum_of_one(event_time, ref.strata)] += 1

    def _saw(self, event_time: float) -> None:
        self.first_event_time = min(self.first_event_time, event_time)
        self.last_event_time = max(self.last_event_time, event_time)

    def merge(self, other: DriftWindow) -> DriftWindow:
        """Add `other` (the same window, same reference) into this state; returns self."""
        if other.key != self.key or other.reference.names != self.reference.names:
            raise ValueError("only states of the same window and reference merge")
        for i in range(len(self.bins)):
            self.bins[i] += other.bins[i]
            self.cells[i] += other.cells[i]
            self.strata[i] += other.strata[i]
        self.missing += other.missing
        self.first_event_time = min(self.first_event_time, other.first_event_time)
        self.last_event_time = max(self.last_event_time, other.last_event_time)
        return self

    def events(self, name: str) -> int:
        return int(self.bins[self.reference.index(name)].sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (for a Faust table or a changelog): the non-zero counts only."""

        def sparse(a: NDArray[np.int64]) -> list[list[int]]:
            nz = np.flatnonzero(a)
            return [nz.tolist(), a[nz].tolist()]

        return {
            "key": self.key,
            "series": list(self.reference.names),
            "bins": [sparse(b) for b in self.bins],
            "cells": [sparse(c) for c in self.cells],
            "missing": self.missing.tolist(),
            "strata": [sparse(h) for h in self.strata],
            "first_event_time": None if math.isinf(self.first_event_time) else self.first_event_time,
            "last_event_time": None if math.isinf(self.last_event_time) else self.last_event_time,
        }

    @classmethod
    def from_dict(cls, reference: DriftReference, state: Mapping[str, Any]) -> DriftWindow:
        if tuple(state["series"]) != reference.names:
            raise ValueError("the state was built against another reference")
        window = cls(reference, int(state["key"]))
        for i, ((bi, bc), (ci, cc)) in enumerate(zip(state["bins"], state["cells"], strict=True)):
            window.bins[i][np.asarray(bi, dtype=np.intp)] = bc
            window.cells[i][np.asarray(ci, dtype=np.intp)] = cc
        window.missing[:] = state["missing"]
        # A state written before the strata were kept has none: its series are compared with the whole sample.
        for i, (hi, hc) in enumerate(state.get("strata") or ()):
            if len(window.strata[i]):
                window.strata[i][np.asarray(hi, dtype=np.intp)] = hc
        if state["first_event_time"] is not None:
            window.first_event_time = float(state["first_event_time"])
            window.last_event_time = float(state["last_event_time"])
        return window


def _cell_index(points: NDArray[np.float64], values: NDArray[np.float64]) -> NDArray[np.intp]:
    """Cell 2i: strictly between points i-1 and i (below all for i = 0, above all for i = len); 2i+1: equal to
    point i."""
    i = np.searchsorted(points, values, side="left")
    at = np.zeros(len(values), dtype=bool)
    inside = i < len(points)
    at[inside] = points[i[inside]] == values[inside]
    return np.asarray(2 * i + at, dtype=np.intp)


# --- statistics ------------------------------------------------------------------------------------------


def psi(counts: ArrayLike, shares: ArrayLike, epsilon: float = 1e-4) -> float:
    """Population stability index Σ (q − p)·ln(q / p) of window shares q against reference shares p, both floored
    at `epsilon` so an empty bin on either side gives a large but finite value. 0 for an empty window."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return 0.0
    q = np.maximum(c / total, epsilon)
    p = np.maximum(np.asarray(shares, dtype=np.float64), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_statistic(ref: SeriesReference, cells: ArrayLike, counts: ArrayLike | None = None) -> NDArray[np.float64]:
    """Two-sample KS statistic of windows given as cell counts (shape (..., cells)) against the reference sample —
    or against the rows of it whose per-point counts are `counts` (a window's hour mix, `mixed_rows`): the largest
    ECDF gap, bit for bit as `scipy.stats.ks_2samp` computes it on the values before its exact method rounds it
    to a multiple of 1 / lcm(n, m).

    scipy takes the largest gap between the two ECDFs over every data point. At reference point i the window's
    ECDF is (#values ≤ pᵢ)/n; in the open cell just below pᵢ the largest window value has (#values < pᵢ)/n
    against the reference's (#sample < pᵢ)/m; every other window value's gap is no larger (the same
    reference ECDF, a smaller or equal window ECDF for the upper gap, a larger one for the lower gap). A point
    no row of the subset holds leaves the reference ECDF flat, so its gaps are bounded by the next point's. So
    the gaps at those points, computed with the same divisions, give scipy's maximum exactly."""
    c = np.asarray(cells, dtype=np.int64)
    r = ref.sample_counts if counts is None else np.asarray(counts, dtype=np.int64)
    n = c.sum(axis=-1, keepdims=True)
    cum = np.cumsum(c, axis=-1)
    ref_cum = np.cumsum(r)
    m = int(ref_cum[-1]) if len(ref_cum) else 0
    at_or_below = ref_cum / m
    below = np.concatenate(([0.0], at_or_below[:-1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        at_point = cum[..., 1::2] / n - at_or_below
        under_point = cum[..., 0:-1:2] / n - below
    upper = np.maximum(at_point.max(axis=-1), under_point.max(axis=-1))
    lower = np.clip(-at_point.min(axis=-1), 0.0, 1.0)
    return np.asarray(np.where(lower > upper, lower, upper), dtype=np.float64)


@functools.lru_cache(maxsize=65_536)
def _ks_result(n1: int, n2: int, h: int) -> tuple[float, float]:
    """scipy's statistic and p-value for the gap h / lcm(n1, n2), through `ks_2samp` itself on two samples of
    sizes n1 and n2 whose ECDFs differ by exactly that much (k1 zeros in the first, k2 in the second, ones
    elsewhere, with k1/n1 − k2/n2 = h / lcm), so the method (exact or asymptotic) and its numbers are scipy's
    own. (The exact method reports the statistic as h / lcm, the asymptotic one as the float gap: equal to the
    raw data's to the last bit or two.)"""
    g = math.gcd(n1, n2)
    a, b = n1 // g, n2 // g
    k1 = (h * pow(b, -1, a)) % a if a > 1 else 0
    k1 += max(0, -(-(h - k1 * b) // (a * b))) * a
    k2 = (k1 * b - h) // a
    if not (0 <= k1 <= n1 and 0 <= k2 <= n2):
        raise ValueError(f"no two ECDFs of sizes {n1} and {n2} differ by {h}/{a * n2}")
    first = np.repeat([0.0, 1.0], [k1, n1 - k1])
    second = np.repeat([0.0, 1.0], [k2, n2 - k2])
    result = stats.ks_2samp(first, second)
    return float(result.statistic), float(result.pvalue)


def ks_result(statistic: float, n1: int, n2: int) -> tuple[float, float]:
    """scipy's (statistic, p-value) of the two-sided two-sample KS test, method auto, for an ECDF gap of samples
    of sizes n1 and n2. A gap is always a multiple of 1 / lcm(n1, n2); each multiple is computed once."""
    lcm = n1 // math.gcd(n1, n2) * n2
    return _ks_result(n1, n2, round(statistic * lcm))


def ks(ref: SeriesReference, cells: ArrayLike, counts: ArrayLike | None = None) -> tuple[float, float]:
    """Two-sample KS statistic and p-value of one window (as cell counts) against the reference sample (or the
    rows of it counted by `counts`): equal to `scipy.stats.ks_2samp(window_values, reference_rows)`, two-sided,
    method auto."""
    c = np.asarray(cells, dtype=np.int64)
    m = len(ref.sample) if counts is None else int(np.sum(counts))
    return ks_result(float(ks_statistic(ref, c, counts)), int(c.sum()), m)


def apportion(total: int, weights: NDArray[np.int64]) -> NDArray[np.int64]:
    """`total` split in proportion to integer `weights` by largest remainders (ties to the lower index), in exact
    integer arithmetic: each part is the floor or the ceiling of its quota."""
    w = np.asarray(weights, dtype=np.int64)
    whole = int(w.sum())
    if whole == 0 or total == 0:
        return np.zeros(len(w), dtype=np.int64)
    parts, rest = np.divmod(total * w, whole)
    short = total - int(parts.sum())
    parts[np.argsort(-rest, kind="stable")[:short]] += 1
    return parts.astype(np.int64)


def mixed_rows(ref: SeriesReference, strata: NDArray[np.int64], values: int) -> NDArray[np.bool_] | None:
    """The reference rows (a mask over `ref.sample`) re-drawn to a window's time-of-day mix: per stratum h, the
    first k_h rows of the stratum's fixed random order, with k_h ∝ the window's values in h and the largest total
    the sample can give (k_h ≤ the sample's rows in h). None — compare with the whole sample — when the document
    has no times or the window's strata do not account for all its `values` (events added without times, a state
    from before the strata were kept). An empty mask when the window has values in a stratum the sample has no
    row of: that window cannot be compared with the same hours.

    Why a subsample and not weights: the rows drawn are a sample of the reference's distribution for the window's
    hours, so the two-sample tests keep their exact size (up to the rounding of the k_h, a share below 1/k per
    stratum); weighting the whole sample would need an approximate null distribution whose error grows exactly
    where the weights are uneven."""
    if not ref.strata or values == 0 or int(strata.sum()) != values:
        return None
    rows = ref.stratum_rows
    present = strata > 0
    if np.any(rows[present] == 0):
        return np.zeros(len(ref.sample), dtype=bool)
    total = int(np.min(rows[present] * values // strata[present]))
    take = apportion(total, strata)
    return np.asarray(ref.sample_draw < take[ref.sample_stratum], dtype=bool)


def category_counts(ref: SeriesReference, cells: NDArray[np.int64]) -> NDArray[np.int64]:
    """A categorical window's count per reference point (category) and, last, of values at no point."""
    return np.append(cells[1::2], cells[0::2].sum()).astype(np.int64)


def categorical_test(window: NDArray[np.int64], reference: NDArray[np.int64]) -> tuple[Test, float, float]:
    """Two-sample test of a window's category counts against the reference rows' counts (a 2×K table).

    Two categories (a flag): Fisher's exact test (`scipy.stats.fisher_exact`). Conditional on the margins its
    p-value is exact, so its size is at most α whatever the flag's share, the reference's size (2 000 rows: 8 ones
    for a 0.4 % flag) or the window's (100 to 10 000+) — where the χ² approximation, or the earlier one-sample tests
    that took the reference shares as exact, overstate the evidence. It is conservative for rare flags (its
    discrete p-values rarely reach α exactly): the price of a guaranteed size; Barnard's and Boschloo's
    unconditional tests are less conservative but cost O(n·m) per window. More categories: Pearson's χ² of
    homogeneity when every expected count is at least 5, else the smallest of the one-against-the-rest Fisher
    p-values times the number of categories (Bonferroni: valid, conservative). Statistic: the largest difference
    in a category's share between the window and the reference rows (χ²: its statistic)."""
    keep = (window + reference) > 0
    w, r = window[keep].astype(np.int64), reference[keep].astype(np.int64)
    n, m = int(w.sum()), int(r.sum())
    if len(w) < 2 or n == 0 or m == 0:
        return "fisher", 0.0, 1.0
    gap = float(np.max(np.abs(w / n - r / m)))
    if len(w) == 2:
        return "fisher", gap, float(stats.fisher_exact([[w[0], w[1]], [r[0], r[1]]]).pvalue)
    table = np.stack([w, r])
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / (n + m)
    if expected.min() >= MIN_EXPECTED:
        result = stats.chi2_contingency(table, correction=False)
        return "chi2", float(result.statistic), float(result.pvalue)
    p = min(float(stats.fisher_exact([[w[j], n - w[j]], [r[j], m - r[j]]]).pvalue) for j in range(len(w)))
    return "fisher", gap, min(1.0, p * len(w))


def mixed_shares(
    shares: NDArray[np.float64], by_stratum: NDArray[np.float64] | None, strata: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Training's shares for a window's time-of-day mix: Σ_h π_h · shares_h with π the window's strata shares
    (renormalized, so a stratum training never saw does not shrink the total); `shares` when there is no mix."""
    total = int(strata.sum()) if len(strata) else 0
    if by_stratum is None or total == 0:
        return shares
    mix = (strata / total) @ by_stratum
    s = float(mix.sum())
    return mix / s if s > 0 else shares


# --- records ---------------------------------------------------------------------------------------------


class DriftRecord(BaseModel):
    """One series in one closed window: the value the monitor publishes to `monitor.drift` (key: the series)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    window: int = Field(description="Window index: floor(event time / size) or ordinal // size")
    window_start: datetime = Field(description="Time windows: nominal start; count windows: first event time")
    window_end: datetime = Field(description="Time windows: nominal end (exclusive); count windows: last event time")
    feature: str = Field(description="Feature name, or score:<variant>")
    kind: Kind
    events: int = Field(ge=0, description="Values of this series in the window (missing ones included)")
    missing: int = Field(ge=0, description="Values that were not finite: binned like training, not tested")
    psi: float = Field(ge=0, description="Population stability index on the frozen bins")
    psi_threshold: float
    psi_exceeded: bool = Field(description="PSI at or above the threshold: a shift big enough to act on")
    test: Test | None = Field(description="ks, fisher or chi2; None when the window had too few values")
    statistic: float | None = Field(
        description="KS: largest ECDF gap; fisher: largest difference in a category's share; χ²: the statistic"
    )
    p_value: float | None
    threshold: float | None = Field(description="p-value at or below which this window declares drift")
    alpha: float = Field(description="Family-wise level of the window (1 / false-alarm budget in windows)")
    correction: Correction
    tested: int = Field(ge=0, description="Series tested in this window (the multiple-testing family)")
    reference_rows: int = Field(ge=0, description="Reference rows the window was compared with (its hours' mix)")
    hour_mixed: bool = Field(
        default=False, description="The reference rows were re-drawn to the window's time-of-day mix"
    )
    drifted: bool = Field(description="p-value at or below the threshold")


CLOCK_INPUTS = frozenset({"hour_sin", "hour_cos"})
"""Inputs computed from the event's time of day alone. A window compared with the reference of its own hours is
already matched on them; what is left is the window's length (a 20 s window holds one value of an hour the
reference spreads over), not the data: they are not tested when the reference is hour-mixed."""


def _series_result(
    ref: SeriesReference, window: DriftWindow, i: int, settings: MonitorSettings
) -> tuple[tuple[Test, float, float] | None, float, int, bool]:
    """(test, statistic, p-value) or None when untested, PSI, reference rows compared with, mixed by hours."""
    cells = window.cells[i]
    finite = int(cells.sum())
    strata = window.strata[i]
    rows = mixed_rows(ref, strata, finite)
    mixed = rows is not None
    counts = ref.sample_counts if rows is None else np.bincount(ref.sample_point[rows], minlength=len(ref.points))
    m = int(counts.sum())
    usable = strata if mixed else np.zeros(0, dtype=np.int64)
    if ref.kind == "categorical" and ref.category_shares is not None:
        observed = category_counts(ref, cells)
        if ref.category_strata_shares is None and mixed and m:
            expected = np.append(counts / m, 0.0)
        else:
            expected = mixed_shares(ref.category_shares, ref.category_strata_shares, usable)
        value = psi(observed, expected, settings.psi_epsilon)
    else:
        value = psi(window.bins[i], mixed_shares(ref.shares, ref.strata_shares, usable), settings.psi_epsilon)
    if finite < settings.min_window_events or m == 0 or (mixed and ref.name in CLOCK_INPUTS):
        return None, value, m, mixed
    if ref.kind == "continuous":
        return ("ks", *ks(ref, cells, counts)), value, m, mixed
    return categorical_test(category_counts(ref, cells), np.append(counts, 0)), value, m, mixed


def evaluate(window: DriftWindow, settings: MonitorSettings) -> list[DriftRecord]:
    """The records of a closed window, one per series of its reference, in the reference's order."""
    reference = window.reference
    alpha = settings.drift_alpha
    parts = [_series_result(ref, window, i, settings) for i, ref in enumerate(reference.series)]
    p_values = [r[0][2] for r in parts if r[0] is not None]
    cut = threshold(p_values, alpha, settings.correction)
    bounds = window_bounds(settings, window.key)
    if bounds is None:
        first = window.first_event_time if math.isfinite(window.first_event_time) else 0.0
        last = window.last_event_time if math.isfinite(window.last_event_time) else first
        bounds = _utc(first), _utc(last)
    records = []
    for i, (ref, (result, value, rows, mixed)) in enumerate(zip(reference.series, parts, strict=True)):
        records.append(
            DriftRecord(
                window=window.key,
                window_start=bounds[0],
                window_end=bounds[1],
                feature=ref.name,
                kind=ref.kind,
                events=int(window.bins[i].sum()),
                missing=int(window.missing[i]),
                psi=value,
                psi_threshold=settings.psi_threshold,
                psi_exceeded=value >= settings.psi_threshold,
                test=None if result is None else result[0],
                statistic=None if result is None else result[1],
                p_value=None if result is None else result[2],
                threshold=None if result is None else cut,
                alpha=alpha,
                correction=settings.correction,
                tested=len(p_values),
                reference_rows=rows,
                hour_mixed=mixed,
                drifted=result is not None and result[2] <= cut,
            )
        )
    return records
