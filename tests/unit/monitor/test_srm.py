"""Sample-ratio mismatch: scipy's χ², the 50.5/49.5 split, the false-alarm rate under the configured split."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from monitor.srm import srm


def test_p_value_equals_scipy_chisquare() -> None:
    result = srm({"champion": 9_130, "challenger": 870}, {"champion": 0.9, "challenger": 0.1})
    expected = stats.chisquare([9_130, 870], [9_000, 1_000])
    assert result.statistic == float(expected.statistic)
    assert result.p_value == float(expected.pvalue)
    assert result.alarm
    three = srm({"a": 3_400, "b": 3_300, "c": 3_250}, {"a": 1, "b": 1, "c": 1}, alpha=0.001)
    assert three.p_value == float(stats.chisquare([3_400, 3_300, 3_250]).pvalue)
    assert three.expected_share == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


def test_a_half_percent_imbalance_is_caught_at_a_million_units_not_at_100_000() -> None:
    split = {"champion": 0.5, "challenger": 0.5}
    big = srm({"champion": 505_000, "challenger": 495_000}, split)
    small = srm({"champion": 50_500, "challenger": 49_500}, split)
    assert big.alarm
    assert big.p_value < 1e-20
    assert not small.alarm
    assert 0.001 < small.p_value < 0.01


def test_false_alarms_under_the_configured_split_match_alpha() -> None:
    rng = np.random.default_rng(11)
    runs = 100_000
    counts = rng.multinomial(20_000, [0.9, 0.1], size=runs)
    p = stats.chisquare(counts, [18_000, 2_000], axis=1).pvalue
    alarms = np.array([srm({"a": int(a), "b": int(b)}, {"a": 0.9, "b": 0.1}).alarm for a, b in counts[:300]])
    assert alarms.tolist() == (p[:300] < 0.001).tolist()
    rate = float((p < 0.001).mean())
    assert rate <= 0.001 + 2 * np.sqrt(0.001 * 0.999 / runs)


def test_unexpected_and_zero_weight_variants_raise_the_alarm() -> None:
    extra = srm({"champion": 900, "challenger": 100, "ghost": 3}, {"champion": 0.9, "challenger": 0.1})
    assert extra.unexpected == ["ghost"]
    assert extra.alarm
    zero = srm({"champion": 990, "challenger": 10}, {"champion": 1.0, "challenger": 0.0})
    assert zero.alarm
    assert zero.statistic is None
    assert zero.p_value == 0.0
    empty = srm({}, {"champion": 0.9, "challenger": 0.1})
    assert (empty.p_value, empty.alarm) == (1.0, False)
    assert empty.observed == {"champion": 0, "challenger": 0}
