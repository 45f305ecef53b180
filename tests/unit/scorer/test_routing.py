"""Traffic splitting: shares within statistical tolerance, sticky per account, canary growth only moves
accounts into the canary, shadow drawn independently."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from scorer.routing import BUCKETS, Router, bucket

ACCOUNTS = [f"acc-{i:06d}" for i in range(50_000)]


def within(observed: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(observed - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_buckets_are_uniform_and_salted() -> None:
    counts = Counter(bucket(a, "exp-1") * 10 // BUCKETS for a in ACCOUNTS)
    assert all(within(counts[d], len(ACCOUNTS), 0.1) for d in range(10))
    same = sum(bucket(a, "exp-1") == bucket(a, "exp-2") for a in ACCOUNTS[:5000])
    assert same < 20, "another salt reshuffles the accounts"


def test_split_shares_and_stickiness() -> None:
    router = Router("exp-1", [("challenger", 10), ("champion", 90)])
    routes = [router.live_variant(a) for a in ACCOUNTS]
    share = Counter(routes)
    assert within(share["challenger"], len(ACCOUNTS), 0.10)
    assert routes == [Router("exp-1", [("challenger", 10), ("champion", 90)]).live_variant(a) for a in ACCOUNTS]


def test_growing_the_canary_only_moves_accounts_into_it() -> None:
    small = Router("exp-1", [("challenger", 5), ("champion", 95)])
    large = Router("exp-1", [("challenger", 10), ("champion", 90)])
    moved = Counter((small.live_variant(a), large.live_variant(a)) for a in ACCOUNTS)
    assert moved[("challenger", "champion")] == 0
    assert within(moved[("champion", "challenger")], len(ACCOUNTS), 0.05)


def test_shadow_is_independent_of_the_live_split() -> None:
    router = Router("exp-1", [("challenger", 50), ("champion", 50)], shadows=[("shadow", 0.2)])
    routes = [router.route(a) for a in ACCOUNTS]
    shadowed = [r for r in routes if r.shadows == ("shadow",)]
    assert within(len(shadowed), len(ACCOUNTS), 0.2)
    assert within(sum(r.live == "champion" for r in shadowed), len(shadowed), 0.5)


@pytest.mark.parametrize(
    ("weights", "shadows", "message"),
    [
        ([], [], "at least one"),
        ([("a", 1), ("a", 1)], [], "unique"),
        ([("a", -1), ("b", 2)], [], ">= 0"),
        ([("a", 1)], [("s", 1.5)], "shadow"),
    ],
)
def test_invalid_splits_are_refused(
    weights: list[tuple[str, float]], shadows: list[tuple[str, float]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Router("x", weights, shadows)


def test_zero_weight_variant_gets_nothing() -> None:
    router = Router("exp-1", [("challenger", 0), ("champion", 1)])
    assert {router.live_variant(a) for a in ACCOUNTS[:5000]} == {"champion"}
