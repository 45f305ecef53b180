"""The mSPRT: its ratio against numerical integration, its interval against its own test, and the seeded
simulations of the issue: A/A with continuous peeking (with the naive z-test as the negative control), power,
and delayed labels."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
from scipy import integrate, stats

from monitor.sequential import (
    SequentialState,
    cluster_difference,
    difference,
    half_width,
    log_mixture_ratio,
    look_p_value,
    step,
)
from monitor.simulation import clustered_peeking, delayed_labels, independent, peeking, standard_error

TAU = 0.004
ALPHA = 0.05


def test_mixture_ratio_equals_the_integral_over_the_normal_mixture() -> None:
    for delta, var, tau in [(0.01, 1e-5, 0.004), (-0.002, 4e-6, 0.01), (0.0, 2e-4, 0.001), (0.03, 1e-4, 0.05)]:
        sd = math.sqrt(var)

        def integrand(theta: float, d: float = delta, s: float = sd, t: float = tau) -> float:
            return float(stats.norm.pdf(d, theta, s) * stats.norm.pdf(theta, 0.0, t))

        mixed, _ = integrate.quad(integrand, -1, 1, points=[0.0, delta], limit=200, epsabs=0, epsrel=1e-12)
        assert float(log_mixture_ratio(delta, var, tau)) == pytest.approx(
            math.log(mixed / stats.norm.pdf(delta, 0.0, sd)), rel=1e-8, abs=1e-10
        )


def test_interval_is_the_set_of_differences_the_test_keeps() -> None:
    delta, var = 0.006, 2e-6
    w = float(half_width(var, TAU, ALPHA))
    for edge in (delta - w, delta + w):
        assert float(log_mixture_ratio(delta, var, TAU, null=edge)) == pytest.approx(math.log(1 / ALPHA), rel=1e-12)
    assert float(log_mixture_ratio(delta, var, TAU, null=delta - 0.9 * w)) < math.log(1 / ALPHA)


def test_difference_and_variance() -> None:
    delta, var = difference(20, 1000, 30, 1000)
    assert float(delta) == pytest.approx(0.01)
    assert float(var) == pytest.approx(max(0.02 * 0.98 / 1000 + 0.03 * 0.97 / 1000, 0.025 * 0.975 * 2 / 1000))
    # No event in a small arm: the pooled variance keeps V away from 0.
    _, v = difference(200, 10_000, 0, 120)
    assert float(v) == pytest.approx(200 / 10_120 * (1 - 200 / 10_120) * (1 / 10_000 + 1 / 120))
    _, v = difference(0, 100, 0, 100)
    assert float(v) == 0.0
    assert float(look_p_value(0.5, 0.0, TAU)) == 1.0
    assert float(half_width(0.0, TAU, ALPHA)) == math.inf


def test_step_keeps_a_running_minimum_and_a_running_intersection() -> None:
    rng = np.random.default_rng(3)
    xa = np.cumsum(rng.binomial(400, 0.02, size=60))
    xb = np.cumsum(rng.binomial(400, 0.026, size=60))
    n = 400 * np.arange(1, 61)
    state = SequentialState()
    p_values, lows, highs = [], [], []
    for a, b, units in zip(xa, xb, n, strict=True):
        delta, var = difference(a, units, b, units)
        state = step(state, float(delta), float(var), tau=TAU, alpha=ALPHA)
        p_values.append(state.p_value)
        lows.append(state.ci_low)
        highs.append(state.ci_high)
    assert state.looks == 60
    assert all(later <= earlier for earlier, later in pairwise(p_values))
    assert all(later >= earlier for earlier, later in pairwise(lows))
    assert all(later <= earlier for earlier, later in pairwise(highs))
    delta, var = difference(xa, n, xb, n)
    assert p_values == pytest.approx(np.minimum.accumulate(look_p_value(delta, var, TAU)).tolist(), rel=1e-12)
    # Once p ≤ α the interval excludes 0, on the side of the estimate.
    for p, low, high in zip(p_values, lows, highs, strict=True):
        assert (p <= ALPHA) == (low > 0 or high < 0)


def test_an_empty_intersection_restarts_from_the_latest_interval() -> None:
    state = SequentialState(looks=3, p_value=0.01, ci_low=0.01, ci_high=0.02, delta=0.015)
    after = step(state, -0.05, 1e-6, tau=TAU, alpha=ALPHA)
    assert after.ci_reset
    assert after.ci_high < 0
    assert after.p_value <= 0.01


def test_aa_with_continuous_peeking_keeps_false_positives_at_alpha() -> None:
    """1 000 A/A experiments at 2 %, 100 looks up to 40 000 units per arm."""
    result = peeking(0.02, 0.02, runs=1000, looks=100, max_units=40_000, tau=TAU, alpha=ALPHA, seed=2026)
    fpr = result.msprt_rate()
    assert fpr <= ALPHA + 2 * standard_error(ALPHA, 1000)
    assert float(result.ci_miss.mean()) <= ALPHA + 2 * standard_error(ALPHA, 1000)
    # Negative control: the naive z-test peeked at in the same harness fails badly.
    assert result.naive_rate() > 0.20


def test_power_two_versus_two_and_a_half_percent_by_30_000_units() -> None:
    result = peeking(0.02, 0.025, runs=1000, looks=100, max_units=40_000, tau=TAU, alpha=ALPHA, seed=2027)
    assert result.msprt_rate(30_000, direction=+1) >= 0.8
    assert result.msprt_rate(30_000, direction=-1) <= 0.005
    assert float(result.ci_miss.mean()) <= ALPHA + 2 * standard_error(ALPHA, 1000)


def test_counting_only_matured_units_keeps_false_positives_at_alpha() -> None:
    result = delayed_labels(runs=1000, tau=TAU, alpha=ALPHA, seed=2028)
    assert result.matured_rate <= ALPHA
    # Negative control: counting scored units with the labels arrived so far flags a canary that is no different.
    assert result.naive_rate > ALPHA + 2 * standard_error(ALPHA, 1000)


def test_cluster_variance_is_the_delta_method_over_the_accounts() -> None:
    rng = np.random.default_rng(11)
    arms = []
    for rate in (0.03, 0.05):
        n = rng.geometric(0.2, size=300).astype(np.float64)
        y = rng.binomial(n.astype(np.int64), np.where(rng.random(300) < 0.1, 0.4, rate)).astype(np.float64)
        arms.append((n, y))
    sums = [(len(n), n.sum(), y.sum(), (n * n).sum(), (y * y).sum(), (n * y).sum()) for n, y in arms]
    delta, var = cluster_difference(sums[0], sums[1])
    (na, ya), (nb, yb) = arms
    ra, rb, pooled = ya.sum() / na.sum(), yb.sum() / nb.sum(), (ya.sum() + yb.sum()) / (na.sum() + nb.sum())

    def by_hand(n: np.ndarray, y: np.ndarray, rate: float) -> float:
        return float(len(n) / (len(n) - 1) * ((y - rate * n) ** 2).sum() / n.sum() ** 2)

    assert float(delta) == pytest.approx(rb - ra, rel=1e-12)
    unpooled = by_hand(na, ya, ra) + by_hand(nb, yb, rb)
    k = len(na) + len(nb)
    sigma2 = k / (k - 1) * (((ya - pooled * na) ** 2).sum() + ((yb - pooled * nb) ** 2).sum()) / k
    pooled_var = sigma2 * (len(na) / na.sum() ** 2 + len(nb) / nb.sum() ** 2)
    assert float(var) == pytest.approx(max(unpooled, pooled_var), rel=1e-9)
    # The accounts' correlation shows: well above the per-transaction variance.
    assert float(var) > 2 * float(difference(ya.sum(), na.sum(), yb.sum(), nb.sum())[1])


def test_cluster_variance_with_one_transaction_per_account_is_the_binomial_one() -> None:
    for xa, na, xb, nb in [(20, 1000, 30, 1000), (200, 10_000, 0, 120), (400, 40_000, 415, 40_000)]:
        delta, var = cluster_difference(
            independent(np.asarray(xa), np.asarray(na)), independent(np.asarray(xb), np.asarray(nb))
        )
        d0, v0 = difference(xa, na, xb, nb)
        assert float(delta) == pytest.approx(float(d0), rel=1e-12)
        # Both forms are the binomial ones times K/(K−1) (K: the arm's accounts, or both arms' for the pooled one).
        assert float(v0) <= float(var) <= float(v0) * max(na / (na - 1), nb / (nb - 1)) * (1 + 1e-12)
    _, v = cluster_difference(independent(np.asarray(0), np.asarray(100)), independent(np.asarray(0), np.asarray(100)))
    assert float(v) == 0.0


def test_clustered_aa_keeps_false_positives_at_alpha_only_with_the_cluster_robust_variance() -> None:
    """1 000 A/A experiments randomized by account: geometric transactions per account (mean 5), 10 % of accounts
    in a fraud burst (30 %), the rest at 0.5 %; 100 looks up to 4 000 accounts (~20 000 transactions) per arm."""
    result = clustered_peeking(runs=1000, tau=TAU, alpha=ALPHA, seed=2029)
    bound = ALPHA + 2 * standard_error(ALPHA, 1000)
    assert result.design_effect > 2, "the harness's accounts are correlated"
    assert result.robust_rate <= bound
    # Negative control: the per-transaction variance in the same harness loses the guarantee.
    assert result.naive_rate > bound
