"""Drift of the model inputs and scores in tumbling windows: PSI on the frozen bins, KS against the reference
sample, χ² for categorical features, with multiple-testing control across the series of a window.

State. A window is kept per series as counts, never as values: counts in the frozen bins (PSI, χ²) and counts in
the cells below, at and between the reference sample's distinct values (KS). The two-sample KS statistic against
a fixed sample depends on the window only through those cell counts — between two consecutive reference values
the reference ECDF is flat, so the largest gap there sits at the ends of the interval — so the counts give
exactly `scipy.stats.ks_2samp`'s statistic and p-value. Memory is O(reference sample) per series whatever the
window's size, and states of the same window merge by adding counts: six partitions' states merged equal one
pass over the whole window.

Testing. A window tests each series with at least `min_window_events` values: KS for continuous series, χ² for
categorical ones (an exact binomial test for a two-category feature whose expected counts are below 5, where
χ² would overstate the evidence). The p-values of a window share the level α = 1 / `false_alarm_windows` through
Benjamini–Hochberg or Bonferroni. PSI grades the size of a shift; it does not decide whether the shift is real.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from monitor.correction import Correction, threshold
from monitor.reference import SCORE_PREFIX, DriftReference, Kind, SeriesReference, bin_index
from monitor.settings import MonitorSettings

Test = Literal["ks", "chi2", "binomial"]
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
        self.first_event_time = math.inf
        self.last_event_time = -math.inf

    def add(self, name: str, values: ArrayLike, event_times: ArrayLike = ()) -> None:
        """Count `values` of series `name` (feature name or `score:<variant>`); `event_times` widen the window's
        observed time span."""
        i = self.reference.index(name)
        ref = self.reference.series[i]
        v = np.atleast_1d(np.asarray(values, dtype=np.float64))
        finite = v[np.isfinite(v)]
        self.missing[i] += len(v) - len(finite)
        self.bins[i] += np.bincount(bin_index(ref.edges, v), minlength=ref.bins)
        if len(ref.points):
            self.cells[i] += np.bincount(_cell_index(ref.points, finite), minlength=ref.cells)
        times = np.atleast_1d(np.asarray(event_times, dtype=np.float64))
        if times.size:
            self.first_event_time = min(self.first_event_time, float(times.min()))
            self.last_event_time = max(self.last_event_time, float(times.max()))

    def add_features(self, features: Mapping[str, float], event_time: float) -> None:
        """One event's model inputs (a `Score.features` map; names outside the reference are ignored). Add each
        event's features once: from its `scores` record, not again from a shadow score of the same event."""
        for name, value in features.items():
            if name in self.reference:
                self._add_one(self.reference.index(name), value)
        self._saw(event_time)

    def add_score(self, variant: str, score: float, event_time: float) -> None:
        """One score of `variant` (from `scores` or `scores.shadow`); variants without a reference are ignored."""
        name = SCORE_PREFIX + variant
        if name in self.reference:
            self._add_one(self.reference.index(name), score)
        self._saw(event_time)

    def _add_one(self, i: int, value: float) -> None:
        # One value in plain Python (bisect on lists): a Faust agent calls this per event and series, where
        # numpy's per-call overhead would cost ~20x more. Same rules as `add` (tested equal).
        ref = self.reference.series[i]
        if not math.isfinite(value):
            self.missing[i] += 1
            self.bins[i][len(ref.edges) if math.isnan(value) else bisect.bisect_left(ref.edge_list, value)] += 1
            return
        self.bins[i][bisect.bisect_left(ref.edge_list, value)] += 1
        if ref.point_list:
            k = bisect.bisect_left(ref.point_list, value)
            self.cells[i][2 * k + (k < len(ref.point_list) and ref.point_list[k] == value)] += 1

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


def ks_statistic(ref: SeriesReference, cells: ArrayLike) -> NDArray[np.float64]:
    """Two-sample KS statistic of windows given as cell counts (shape (..., cells)) against the reference
    sample: the largest ECDF gap, bit for bit as `scipy.stats.ks_2samp` computes it on the window's values before
    its exact method rounds it to a multiple of 1 / lcm(n, m).

    scipy takes the largest gap between the two ECDFs over every data point. At reference point i the window's
    ECDF is (#values ≤ pᵢ)/n; in the open cell just below pᵢ the largest window value has (#values < pᵢ)/n
    against the reference's (#sample < pᵢ)/m; every other window value's gap is no larger (the same
    reference ECDF, a smaller or equal window ECDF for the upper gap, a larger one for the lower gap). So the
    gaps at those points, computed with the same divisions, give scipy's maximum exactly."""
    c = np.asarray(cells, dtype=np.int64)
    n = c.sum(axis=-1, keepdims=True)
    cum = np.cumsum(c, axis=-1)
    m = len(ref.sample)
    at_or_below = np.searchsorted(ref.sample, ref.points, side="right") / m
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


def ks(ref: SeriesReference, cells: ArrayLike) -> tuple[float, float]:
    """Two-sample KS statistic and p-value of one window (as cell counts) against the reference sample: equal to
    `scipy.stats.ks_2samp(window_values, reference_sample)`, two-sided, method auto."""
    c = np.asarray(cells, dtype=np.int64)
    return ks_result(float(ks_statistic(ref, c)), int(c.sum()), len(ref.sample))


def categorical_counts(
    ref: SeriesReference, bins: NDArray[np.int64], cells: NDArray[np.int64], epsilon: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Observed counts and expected shares per category. Categories are the frozen bins when they separate the
    values (shares from the whole training set), else the reference sample's distinct values plus one "other"
    (shares from the sample). Categories empty on both sides are dropped; a category unseen in the reference
    but present in the window gets share `epsilon`, and the shares are renormalised."""
    if ref.categories_from_bins:
        observed = bins.astype(np.float64)
        shares = ref.shares.astype(np.float64)
    else:
        observed = np.append(cells[1::2], cells[0::2].sum()).astype(np.float64)
        _, at = np.unique(ref.sample, return_counts=True)
        shares = np.append(at / len(ref.sample), 0.0)
    keep = (observed > 0) | (shares > 0)
    observed, shares = observed[keep], np.where(shares[keep] > 0, shares[keep], epsilon)
    return observed, shares / shares.sum()


def categorical_test(observed: NDArray[np.float64], shares: NDArray[np.float64]) -> tuple[Test, float, float]:
    """χ² goodness of fit (`scipy.stats.chisquare`) of the counts against the shares; for two categories with an
    expected count below 5, the exact binomial test on the second category (statistic: its observed share)."""
    n = observed.sum()
    if len(observed) < 2:
        return "chi2", 0.0, 1.0
    expected = shares * n
    if len(observed) == 2 and expected.min() < MIN_EXPECTED:
        k = round(float(observed[1]))
        return "binomial", k / n, float(stats.binomtest(k, round(float(n)), float(shares[1])).pvalue)
    result = stats.chisquare(observed, expected)
    return "chi2", float(result.statistic), float(result.pvalue)


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
    missing: int = Field(ge=0, description="Values that were not finite: binned like training, not in KS or χ²")
    psi: float = Field(ge=0, description="Population stability index on the frozen bins")
    psi_threshold: float
    psi_exceeded: bool = Field(description="PSI at or above the threshold: a shift big enough to act on")
    test: Test | None = Field(description="ks, chi2 or binomial; None when the window had too few values")
    statistic: float | None = Field(description="KS: largest ECDF gap; χ²: the statistic; binomial: the share")
    p_value: float | None
    threshold: float | None = Field(description="p-value at or below which this window declares drift")
    alpha: float = Field(description="Family-wise level of the window (1 / false-alarm budget in windows)")
    correction: Correction
    tested: int = Field(ge=0, description="Series tested in this window (the multiple-testing family)")
    reference_rows: int = Field(ge=0, description="Size of the KS reference sample")
    drifted: bool = Field(description="p-value at or below the threshold")


def evaluate(window: DriftWindow, settings: MonitorSettings) -> list[DriftRecord]:
    """The records of a closed window, one per series of its reference, in the reference's order."""
    reference = window.reference
    alpha = settings.drift_alpha
    results: list[tuple[Test, float, float] | None] = []
    for i, ref in enumerate(reference.series):
        finite = int(window.cells[i].sum())
        if finite < settings.min_window_events or (ref.kind == "continuous" and len(ref.sample) == 0):
            results.append(None)
        elif ref.kind == "continuous":
            results.append(("ks", *ks(ref, window.cells[i])))
        else:
            observed, shares = categorical_counts(ref, window.bins[i], window.cells[i], settings.psi_epsilon)
            results.append(categorical_test(observed, shares))
    p_values = [r[2] for r in results if r is not None]
    cut = threshold(p_values, alpha, settings.correction)
    bounds = window_bounds(settings, window.key)
    if bounds is None:
        first = window.first_event_time if math.isfinite(window.first_event_time) else 0.0
        last = window.last_event_time if math.isfinite(window.last_event_time) else first
        bounds = _utc(first), _utc(last)
    records = []
    for i, (ref, result) in enumerate(zip(reference.series, results, strict=True)):
        value = psi(window.bins[i], ref.shares, settings.psi_epsilon)
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
                reference_rows=len(ref.sample),
                drifted=result is not None and result[2] <= cut,
            )
        )
    return records
