"""Multiple-testing thresholds against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.correction import threshold, thresholds, window_alpha


def test_bonferroni_splits_alpha_evenly() -> None:
    assert threshold([0.5, 0.01, 0.2, 0.003], 0.05, "bonferroni") == pytest.approx(0.0125)


def test_benjamini_hochberg_is_step_up() -> None:
    # sorted p against k·α/m = 0.01, 0.02, 0.03, 0.04, 0.05
    assert threshold([0.9, 0.008, 0.041, 0.001, 0.039], 0.05, "bh") == pytest.approx(0.02)
    # 0.025 > 0.02 fails at rank 2, but 0.028 ≤ 0.03 passes at rank 3: all three are rejected
    assert threshold([0.001, 0.025, 0.028, 0.9, 0.95], 0.05, "bh") == pytest.approx(0.03)
    # nothing passes: the threshold is α/m, below every p-value
    cut = threshold([0.02, 0.5, 0.7], 0.05, "bh")
    assert cut == pytest.approx(0.05 / 3)
    assert min([0.02, 0.5, 0.7]) > cut
    assert threshold([], 0.05, "bh") == 0.05


def test_vectorized_thresholds_equal_the_scalar_ones() -> None:
    rng = np.random.default_rng(1)
    p = rng.random((200, 7)) ** 3
    for method in ("bh", "bonferroni"):
        batch = thresholds(p, 0.1, method)
        assert batch.tolist() == [threshold(row.tolist(), 0.1, method) for row in p]


def test_false_alarm_budget() -> None:
    assert window_alpha(100) == 0.01
    with pytest.raises(ValueError):
        window_alpha(0.5)
    with pytest.raises(ValueError, match="unknown correction"):
        thresholds([0.1], 0.05, "holm")  # type: ignore[arg-type]
