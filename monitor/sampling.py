"""The accounts of an experiment the sample-ratio check counts, in memory that does not grow with them.

The check counts the unit the scorer randomizes: each account once, on the variant it was first seen on
(`monitor.srm`). Keeping every account an experiment ever saw grows without bound, so one partition keeps at most
`capacity` accounts per experiment by *adaptive distinct sampling* (Wegman's adaptive sampling, in Flajolet 1990;
Gibbons, "Distinct sampling", VLDB 2001):

- an account's *level* is the number of leading zero bits of a keyed 64-bit hash of its id, so a level of at least
  `l` has probability 2⁻ˡ;
- the sample holds every account ever seen whose level is at least the sample's level `L` (0 at first: every
  account), with the variant and event time of its first score;
- when it holds more than `capacity`, `L` rises by one and the accounts below it leave.

So the sample is *every* account seen whose hash passes a threshold: a uniform sample of the distinct accounts at
rate 2⁻ᴸ, decided by a hash keyed apart from the router's (`scorer.routing` keys blake2b with the experiment's salt),
so it is independent of the variant an account was routed to. Under the configured split each sampled account's
first-seen variant is still an independent draw from the split, and the χ² of the sampled counts has the null
distribution of the full count — with fewer units, so less power: at the default capacity a partition keeps 20 000
accounts per experiment, 120 000 over six partitions, enough to see a 1 % imbalance (simulated in
tests/unit/monitor/test_sampling.py). Partitions that sampled at different levels still add up: each account's
variant is drawn from the split whatever its partition's rate.

Why not a sketch (HyperLogLog per variant): its counts are estimates with ~1 % error, the size of the imbalance the
check must see, and a χ² of estimates is not a test. Why not expire accounts like the A/B clusters: an account seen
again after expiry would be counted twice, and repeat counts follow an account's activity, not the split (the false
alarms the module docstring of `monitor.srm` warns of).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SAMPLE_KEY = b"streamscore-monitor-srm-sample"
"""The hash key of the sampling levels: not a salt any experiment routes with."""
MAX_LEVEL = 64


def account_level(account: str) -> int:
    """Leading zero bits of the account's keyed 64-bit hash: P(level ≥ l) = 2⁻ˡ."""
    digest = hashlib.blake2b(account.encode(), digest_size=8, key=SAMPLE_KEY).digest()
    return MAX_LEVEL - int.from_bytes(digest, "big").bit_length()


@dataclass(slots=True)
class FirstSeen:
    """A sampled account: the variant of its first score, that score's event time, and whether the sample-ratio
    check counts it yet (once the time is behind both clocks: `PartitionState._count_accounts`)."""

    variant: str
    t: float
    counted: bool = False


class AccountSample:
    """One experiment's sampled accounts on one partition (module docstring)."""

    def __init__(self, capacity: int, level: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"the account sample's capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.level = level
        self.accounts: dict[str, FirstSeen] = {}

    def __len__(self) -> int:
        return len(self.accounts)

    def get(self, account: str) -> FirstSeen | None:
        return self.accounts.get(account)

    def offer(self, account: str, variant: str, t: float) -> tuple[FirstSeen | None, dict[str, FirstSeen]]:
        """An account's score: the account's new entry (None: already sampled, or below the level), and the accounts
        that left because the level rose (possibly this one)."""
        if account in self.accounts or account_level(account) < self.level:
            return None, {}
        entry = self.accounts[account] = FirstSeen(variant, t)
        return entry, self.fit()

    def restore(self, account: str, entry: FirstSeen) -> bool:
        """A recovered account; False (and not kept) when it is below the recovered level: a crash came between
        the checkpoint that raised the level and the one that deleted its records."""
        if account_level(account) < self.level:
            return False
        self.accounts[account] = entry
        return True

    def fit(self) -> dict[str, FirstSeen]:
        """Raise the level until the sample fits its capacity; the accounts that left (also after a recovery with a
        smaller capacity)."""
        left: dict[str, FirstSeen] = {}
        while len(self.accounts) > self.capacity and self.level < MAX_LEVEL:
            self.level += 1
            leaving = [a for a in self.accounts if account_level(a) < self.level]
            for account in leaving:
                left[account] = self.accounts.pop(account)
        return left
