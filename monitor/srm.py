"""Sample-ratio mismatch: do the live variants' unit counts match the configured split?

A mismatch (say 50.5 % / 49.5 % where 50 / 50 was configured) means units are lost or duplicated on one side —
a routing bug, a variant that crashes on some inputs, a join that drops labels — and then no comparison of the
variants can be trusted, whatever its p-value. Pearson's χ² goodness of fit of the counts against the split
(`scipy.stats.chisquare`), alarm below a small level (0.001) since the check runs at every look.

Count the unit the split randomizes: the scorer routes accounts, so the counts to test are the accounts first
seen per variant; transaction counts vary with the accounts' activity and would raise false alarms.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats


class SrmResult(BaseModel):
    """The sample-ratio check at one look."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    observed: dict[str, int] = Field(description="Units per live variant of the split")
    expected_share: dict[str, float] = Field(description="The configured split, normalised to 1")
    statistic: float | None = Field(ge=0, description="None when a variant weighted 0 has units")
    p_value: float = Field(ge=0, le=1)
    alpha: float
    unexpected: list[str] = Field(default_factory=list, description="Variants with units but not in the split")
    alarm: bool = Field(description="p-value below alpha, or units in a variant outside the split")


def srm(observed: Mapping[str, int], split: Mapping[str, float], alpha: float = 0.001) -> SrmResult:
    """χ² of the counts of the split's variants (absent = 0) against `split` (weights, normalised here)."""
    names = list(split)
    total_weight = float(sum(split.values()))
    shares = np.asarray([split[v] / total_weight for v in names], dtype=np.float64)
    counts = np.asarray([int(observed.get(v, 0)) for v in names], dtype=np.int64)
    unexpected = sorted(v for v, n in observed.items() if v not in split and n > 0)
    n = int(counts.sum())
    weighted = shares > 0
    statistic: float | None
    if np.any(counts[~weighted] > 0):
        # Units in a variant weighted 0: a mismatch no χ² can size (its expected count is 0).
        statistic, p_value = None, 0.0
    elif n == 0 or weighted.sum() < 2:
        statistic, p_value = 0.0, 1.0
    else:
        result = stats.chisquare(counts[weighted], shares[weighted] * n)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    return SrmResult(
        observed={v: int(c) for v, c in zip(names, counts, strict=True)},
        expected_share={v: float(s) for v, s in zip(names, shares, strict=True)},
        statistic=statistic,
        p_value=p_value,
        alpha=alpha,
        unexpected=unexpected,
        alarm=bool(p_value < alpha or unexpected),
    )
