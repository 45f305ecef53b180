"""Always-valid inference for the difference of two rates: the mixture sequential probability ratio test (mSPRT)
with a normal mixture (Johari, Koomen, Pekelis & Walsh, "Always valid inference", Operations Research 2022).

At each look, with the estimated difference Δ̂ = p̂_B − p̂_A and its variance V (`difference`), the likelihood
ratio of "the difference is drawn from N(θ₀, τ²)" against "the difference is θ₀" is

    Λ = √(V / (V + τ²)) · exp(τ² (Δ̂ − θ₀)² / (2 V (V + τ²))).

For normal data with a known variance, under θ₀ this ratio is a nonnegative martingale with mean 1, so by
Ville's inequality it ever reaches 1/α with probability at most α, however often it is looked at. Hence the
always-valid p-value pₙ = min(pₙ₋₁, 1/Λₙ(0)), which never increases, and the confidence sequence
{θ₀ : Λₙ(θ₀) < 1/α} = Δ̂ ± √(V (V + τ²) / τ² · (2 ln(1/α) + ln((V + τ²) / V))), intersected over the looks.
For rates, the normal likelihood with an estimated variance is the large-sample form, so the guarantee is
approximate: the simulations in tests/unit/monitor and bench/statistics.py measure it (2 % and 0.2 % base
rates, even and 90/10 splits, 100 looks).

τ is the spread of differences the test is tuned to find: power is highest for true differences of about τ,
and the test stays valid for every τ. Everything here is vectorized over runs for the simulations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


def difference(
    successes_a: ArrayLike, units_a: ArrayLike, successes_b: ArrayLike, units_b: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Δ̂ = p̂_B − p̂_A and its variance V: the larger of the unpooled plug-in p̂_A(1−p̂_A)/n_A + p̂_B(1−p̂_B)/n_B
    and the pooled p̄(1−p̄)(1/n_A + 1/n_B); 0 when an arm is empty or no arm has an event.

    The unpooled form alone fails with rare events in a small arm: a canary with 120 units at a 2 % rate has
    no event at all 9 % of the time, its plug-in variance is then 0, V collapses to the big arm's tiny share and
    a difference of one rate is "significant" (measured: 9 % false positives in `simulation.delayed_labels`).
    The pooled form is the variance under "no difference"; the unpooled one keeps the interval honest when the
    rates do differ. The larger of the two only widens the interval and, where evidence is strong (Δ̂² ≫ V),
    only lowers Λ."""
    xa, na = np.asarray(successes_a, dtype=np.float64), np.asarray(units_a, dtype=np.float64)
    xb, nb = np.asarray(successes_b, dtype=np.float64), np.asarray(units_b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        both = (na > 0) & (nb > 0)
        pa = np.where(na > 0, xa / na, 0.0)
        pb = np.where(nb > 0, xb / nb, 0.0)
        pooled = np.where(both, (xa + xb) / (na + nb), 0.0)
        unpooled_var = pa * (1 - pa) / na + pb * (1 - pb) / nb
        pooled_var = pooled * (1 - pooled) * (1 / na + 1 / nb)
        var = np.where(both, np.maximum(unpooled_var, pooled_var), 0.0)
    return pb - pa, var


ClusterSums = tuple[ArrayLike, ArrayLike, ArrayLike, ArrayLike, ArrayLike, ArrayLike]
"""(K, Σn_a, Σy_a, Σn_a², Σy_a², Σn_a·y_a) of one arm over its K accounts (`VariantCounts.cluster_sums`)."""


def _squares(sums: ClusterSums, rate: NDArray[np.float64]) -> NDArray[np.float64]:
    """Σ_a (y_a − rate·n_a)² from the sums (exact integers in, so the cancellation is harmless at our sizes)."""
    _, _, _, nn, yy, ny = (np.asarray(v, dtype=np.float64) for v in sums)
    return np.asarray(np.maximum(yy - 2 * rate * ny + rate * rate * nn, 0.0), dtype=np.float64)


def _corrected(k: NDArray[np.float64]) -> NDArray[np.float64]:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.where(k > 1, k / (k - 1), 1.0), dtype=np.float64)


def cluster_difference(a: ClusterSums, b: ClusterSums) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Δ̂ = μ̂_B − μ̂_A for ratio estimators μ̂ = Σy_a / Σn_a over accounts (the randomized unit), and its
    cluster-robust variance V, the larger of

    - unpooled: per arm the delta-method K/(K−1) · Σ_a (y_a − μ̂·n_a)² / (Σn)², added over the arms;
    - pooled (the variance under "no difference"): one per-account dispersion σ² = K/(K−1) · Σ_a (y_a − μ̄·n_a)² / K
      over both arms' K accounts around the pooled rate μ̄, and V = σ² · (K_A/(Σn_A)² + K_B/(Σn_B)²).

    As in `difference`, the pooled form keeps a small arm without events from collapsing V to 0 (its own squares
    around its own rate are then 0); the larger of the two only widens the interval. 0 when an arm is empty.

    Transactions of one account are correlated (fraud comes in bursts on an account), and the scorer assigns
    whole accounts to a variant, so the per-transaction binomial variance is too small and the test loses its
    guarantee (`simulation.clustered_peeking` measures both). With one unit per account (n_a = 1, y_a ∈ {0, 1})
    Σ_a (y_a − μ̂)² = Σn·μ̂(1−μ̂): both forms are `difference`'s times K/(K−1)."""
    ka, na, ya = (np.asarray(v, dtype=np.float64) for v in a[:3])
    kb, nb, yb = (np.asarray(v, dtype=np.float64) for v in b[:3])
    with np.errstate(invalid="ignore", divide="ignore"):
        both = (na > 0) & (nb > 0)
        ra = np.where(na > 0, ya / na, 0.0)
        rb = np.where(nb > 0, yb / nb, 0.0)
        pooled = np.where(both, (ya + yb) / (na + nb), 0.0)
        unpooled_var = _corrected(ka) * _squares(a, ra) / (na * na) + _corrected(kb) * _squares(b, rb) / (nb * nb)
        k = ka + kb
        sigma2 = _corrected(k) * (_squares(a, pooled) + _squares(b, pooled)) / k
        pooled_var = sigma2 * (ka / (na * na) + kb / (nb * nb))
        var = np.where(both, np.maximum(unpooled_var, pooled_var), 0.0)
    return rb - ra, np.asarray(var, dtype=np.float64)


def log_mixture_ratio(delta: ArrayLike, variance: ArrayLike, tau: float, null: float = 0.0) -> NDArray[np.float64]:
    """ln Λ of the normal-mixture SPRT against the difference `null`; 0 (no evidence) where V is 0."""
    d = np.asarray(delta, dtype=np.float64) - null
    v = np.asarray(variance, dtype=np.float64)
    t2 = tau * tau
    with np.errstate(invalid="ignore", divide="ignore"):
        value = 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2 * v * (v + t2))
    return np.asarray(np.where(v > 0, value, 0.0), dtype=np.float64)


def half_width(variance: ArrayLike, tau: float, alpha: float) -> NDArray[np.float64]:
    """Half-width of the look's (1 − α) confidence interval {θ : Λ(θ) < 1/α}; infinite where V is 0."""
    v = np.asarray(variance, dtype=np.float64)
    t2 = tau * tau
    with np.errstate(invalid="ignore", divide="ignore"):
        width = np.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + np.log((v + t2) / v)))
    return np.asarray(np.where(v > 0, width, np.inf), dtype=np.float64)


def look_p_value(delta: ArrayLike, variance: ArrayLike, tau: float) -> NDArray[np.float64]:
    """1 / Λ(0) capped at 1: the p-value of this look alone (the always-valid one is the running minimum)."""
    return np.asarray(np.minimum(1.0, np.exp(-log_mixture_ratio(delta, variance, tau))), dtype=np.float64)


@dataclass(frozen=True)
class SequentialState:
    """The test's memory across looks: the running minimum p-value and the running intersection of intervals."""

    looks: int = 0
    p_value: float = 1.0
    ci_low: float = -1.0
    ci_high: float = 1.0
    delta: float = 0.0
    """The latest look's estimate Δ̂."""
    ci_reset: bool = False
    """The latest look's interval did not meet the running intersection (probability ≤ α under the model);
    the intersection was restarted from that interval."""


def step(state: SequentialState, delta: float, variance: float, *, tau: float, alpha: float) -> SequentialState:
    """Fold one look (the cumulative Δ̂ and V) into the state. Looks may come at any time and in any number."""
    p = float(look_p_value(delta, variance, tau))
    w = float(half_width(variance, tau, alpha))
    low, high = max(state.ci_low, delta - w), min(state.ci_high, delta + w)
    reset = low > high
    if reset:
        low, high = delta - w, delta + w
    # A difference of two rates lies in [-1, 1].
    low, high = max(low, -1.0), min(high, 1.0)
    return SequentialState(
        looks=state.looks + 1,
        p_value=min(state.p_value, p),
        ci_low=low,
        ci_high=high,
        delta=delta,
        ci_reset=reset,
    )
