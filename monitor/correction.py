"""Multiple-testing control across the series of one window, and the false-alarm budget over time.

With m series tested in a window, testing each at α raises an alarm somewhere far more often than α (30 stable
series at 0.05: 1 − 0.95³⁰ ≈ 79 % of windows). Both methods keep the chance of any alarm in a window where
nothing drifted at or below α; Benjamini–Hochberg then bounds the expected share of false alarms among the
alarms (FDR) when some series do drift, Bonferroni the chance of any false alarm (FWER).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

Correction = Literal["bh", "bonferroni"]


def window_alpha(false_alarm_windows: float) -> float:
    """Per-window level from the budget "one false alarm every N windows on average when nothing drifts":
    alarms are then at most a Bernoulli(1/N) per window, N windows apart on average."""
    if false_alarm_windows < 1:
        raise ValueError(f"false_alarm_windows must be at least 1, got {false_alarm_windows}")
    return 1.0 / false_alarm_windows


def thresholds(p_values: ArrayLike, alpha: float, method: Correction) -> NDArray[np.float64]:
    """Per row of `p_values` (shape (..., m): m series' p-values per window), the p-value at or below which a
    series of that window is declared drifted.

    bonferroni: α/m. bh: k·α/m for the largest k with p₍ₖ₎ ≤ k·α/m, or α/m when there is none (then every
    p > α/m, so nothing is rejected)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.shape[-1]
    if m == 0:
        return np.full(p.shape[:-1], alpha)
    if method == "bonferroni":
        return np.full(p.shape[:-1], alpha / m)
    if method != "bh":
        raise ValueError(f"unknown correction {method!r}")
    ranks = np.arange(1, m + 1)
    passing = np.sort(p, axis=-1) <= alpha * ranks / m
    k = np.where(passing.any(axis=-1), m - np.argmax(passing[..., ::-1], axis=-1), 1)
    return np.asarray(alpha * k / m, dtype=np.float64)


def threshold(p_values: Sequence[float], alpha: float, method: Correction) -> float:
    """`thresholds` for one window."""
    return float(thresholds(np.asarray(p_values, dtype=np.float64), alpha, method))
