"""The sample-ratio check's account sample (monitor/sampling.py): bounded, exactly the accounts above its level, and
— validated by seeded simulation through the scorer's real router — a sample whose χ² keeps its null distribution
under the configured split and still sees a broken one. The negative control samples by the router's own hash and
must be caught by the same harness."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import stats

from monitor.sampling import AccountSample, account_level
from monitor.srm import srm
from scorer.routing import Router, bucket

SPLIT = {"champion": 0.9, "challenger": 0.1}


def accounts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"acct-{rng.getrandbits(48):012x}" for _ in range(n)]


def test_levels_follow_the_geometric_law() -> None:
    levels = np.array([account_level(a) for a in accounts(200_000)])
    for level in range(1, 8):
        share = float((levels >= level).mean())
        expected = 2.0**-level
        assert share == pytest.approx(expected, abs=4 * np.sqrt(expected * (1 - expected) / levels.size))


def test_the_sample_is_every_account_at_or_above_its_level_within_capacity_in_any_order() -> None:
    population = accounts(5_000, seed=1)
    # Accounts come back (a heavy-tailed activity): only the first score of each may enter.
    rng = random.Random(2)
    stream = [rng.choice(population[: rng.randrange(1, len(population) + 1)]) for _ in range(20_000)]
    orders = [stream, list(reversed(stream))]
    for order in orders:
        sample = AccountSample(capacity=300)
        for i, account in enumerate(order):
            sample.offer(account, "champion" if i % 2 else "challenger", float(i))
            assert len(sample) <= 300
        seen = set(order)
        assert sample.level >= 1
        assert set(sample.accounts) == {a for a in seen if account_level(a) >= sample.level}
        assert len({a for a in seen if account_level(a) >= sample.level - 1}) > 300, "the level is the lowest that fits"
        # An account keeps the variant and time of its first score.
        positions = {a: i for i, a in reversed(list(enumerate(order)))}
        assert all(entry.t == float(positions[a]) for a, entry in sample.accounts.items())


def test_an_account_below_the_level_never_enters_and_a_recovered_one_below_it_is_refused() -> None:
    sample = AccountSample(capacity=10, level=3)
    low = next(a for a in accounts(1_000, seed=3) if account_level(a) < 3)
    high = next(a for a in accounts(1_000, seed=3) if account_level(a) >= 3)
    assert sample.offer(low, "champion", 0.0) == (None, {})
    entry, left = sample.offer(high, "champion", 0.0)
    assert entry is not None and left == {}
    assert sample.offer(high, "challenger", 1.0) == (None, {}), "an account enters once, on its first variant"
    fresh = AccountSample(capacity=10, level=3)
    assert not fresh.restore(low, entry)
    assert fresh.restore(high, entry)
    with pytest.raises(ValueError, match="at least 1"):
        AccountSample(capacity=0)


def _kept(levels: np.ndarray, capacity: int) -> np.ndarray:
    """What an `AccountSample` of `capacity` keeps of accounts with these levels: those at or above the lowest level
    that fits (the previous test shows it is exactly that set)."""
    level = 0
    while int((levels >= level).sum()) > capacity:
        level += 1
    return levels >= level


def _variants(population: list[str], salt: str) -> np.ndarray:
    """The scorer's routing of each account under `salt`: True for the challenger (the split's last 10 % of
    buckets), vectorised over `scorer.routing.bucket` (the router itself is checked against it below)."""
    return np.array([bucket(a, salt) for a in population]) >= 9_000


def _counts(challenger: np.ndarray) -> dict[str, int]:
    return {"champion": int((~challenger).sum()), "challenger": int(challenger.sum())}


def test_simulated_sampled_counts_keep_the_chi_square_null_and_see_a_broken_split() -> None:
    # 200 experiments (salts) over the same 8 000 accounts, each sampled down to at most 1 500.
    population = accounts(8_000, seed=4)
    levels = np.array([account_level(a) for a in population])
    kept = _kept(levels, 1_500)
    assert 500 <= kept.sum() <= 1_500, "sampled well below the population, not emptied"
    router = Router("exp-0", list(SPLIT.items()))
    assert (_variants(population, "exp-0")).tolist() == [router.route(a).live == "challenger" for a in population]
    sample = AccountSample(1_500)
    for account in population:
        sample.offer(account, router.route(account).live, 0.0)
    assert set(sample.accounts) == {a for a, k in zip(population, kept, strict=True) if k}
    assert _counts(_variants(population, "exp-0")[kept]) == {
        name: sum(e.variant == name for e in sample.accounts.values()) for name in SPLIT
    }

    p_values = [srm(_counts(_variants(population, f"exp-{i}")[kept]), SPLIT).p_value for i in range(200)]
    # Under the split the p-values are uniform (χ² is a large-sample test; ~1 000 accounts is plenty for 90/10).
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
    assert sum(p < 0.001 for p in p_values) <= 2

    # A broken split: the challenger loses 40 % of its accounts (a variant crashing on some inputs) — seen in most
    # sampled experiments even at this small size.
    rng = np.random.default_rng(5)
    broken = []
    for i in range(60):
        challenger = _variants(population, f"exp-b{i}")
        present = ~(challenger & (rng.random(len(population)) < 0.4))
        kept_here = _kept(levels[present], 1_500)
        broken.append(srm(_counts(challenger[present][kept_here]), SPLIT).alarm)
    assert np.mean(broken) > 0.8


def test_negative_control_a_sample_tied_to_the_routers_hash_breaks_the_null() -> None:
    # Keeping accounts by their *routing* bucket looks as random as our level, but it is not independent of the
    # variant (the challenger owns buckets [9 000, 10 000)): the same harness must reject it.
    population = accounts(8_000, seed=4)
    p_values = []
    for i in range(60):
        buckets = np.array([bucket(a, f"exp-{i}") for a in population])
        tied = np.where(buckets >= 9_000, buckets % 7 < 3, buckets % 7 < 2)
        p_values.append(srm(_counts((buckets >= 9_000)[tied]), SPLIT).p_value)
    assert stats.kstest(p_values, "uniform").pvalue < 1e-6
