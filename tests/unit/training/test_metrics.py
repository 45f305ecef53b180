"""Metrics against hand-computed tiny cases and against scikit-learn on seeded random data with ties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    average_precision,
    best_single_rule,
    evaluate,
    expected_calibration_error,
    recall_at_fpr,
    roc_auc,
)


def test_average_precision_by_hand() -> None:
    # Ranked: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-): precision 1 at recall 1/2, 2/3 at recall 1.
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert average_precision(y, s) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert average_precision([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert average_precision([0, 0, 0], [0.1, 0.2, 0.3]) == 0.0


def test_ties_enter_at_one_threshold() -> None:
    # One threshold admits all four rows: precision 1/2 at recall 1.
    assert average_precision([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # 0.9 (+) alone, then {0.5 (+), 0.5 (-)} together: 1 * 1/2 + 2/3 * 1/2.
    assert average_precision([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.5 + 1 / 3)


def test_roc_auc_by_hand() -> None:
    # Pairs (pos, neg): (0.35, 0.1) ok, (0.35, 0.4) wrong, (0.8, *) ok: 3 of 4.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.9, 0.1]) == 0.0
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1], [0.2, 0.3])


def test_recall_at_one_percent_fpr_by_hand() -> None:
    negatives = np.arange(200) / 200  # highest: 0.995, 0.99, 0.985, ...
    scores = np.r_[negatives, [0.999, 0.5, 0.1]]
    labels = np.r_[np.zeros(200), np.ones(3)]
    result = recall_at_fpr(labels, scores, 0.01)
    # Two false positives (0.995, 0.99) are 1 % of 200; at 0.99 one of three frauds is caught.
    assert result.recall == pytest.approx(1 / 3)
    assert result.threshold == 0.99
    assert result.fpr == 0.01
    assert recall_at_fpr([0, 1], [0.9, 0.1], 0.01).recall == 0.0


def test_expected_calibration_error_by_hand() -> None:
    # One row per bin: |0 - .1| + |1 - .9| + |1 - .8| + |0 - .3| over 4 rows.
    assert expected_calibration_error([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.3]) == pytest.approx(0.175)
    # Same bin [0.2, 0.3): rate 1/2, mean score 0.25.
    assert expected_calibration_error([0, 1], [0.2, 0.3 - 1e-9]) == pytest.approx(0.25, abs=1e-8)
    # 1.0 belongs to the last bin; a perfectly calibrated pair has no error.
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="probabilities"):
        expected_calibration_error([1, 0], [1.5, 0.0])


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        average_precision([1, 0], [math.nan, 0.1])
    with pytest.raises(ValueError, match="0 or 1"):
        average_precision([2, 0], [0.3, 0.1])
    with pytest.raises(ValueError, match="length"):
        roc_auc([1, 0, 1], [0.3, 0.1])


def test_best_single_rule_finds_the_feature_or_its_negation() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(2000) < 0.05).astype(np.float32)
    noise = rng.standard_normal((2000, 3))
    x = np.c_[noise[:, 0], noise[:, 1] - 3 * y, noise[:, 2] + 0.5 * y].astype(np.float32)
    best = best_single_rule(x, y, ["a", "b", "c"])
    assert best.rule == "-b"
    assert best.pr_auc == pytest.approx(average_precision(y, -x[:, 1]))
    assert best.pr_auc > average_precision(y, x[:, 2]) > average_precision(y, x[:, 0])


def test_evaluate_reports_the_four_figures() -> None:
    metrics = evaluate([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert metrics.as_dict("test_") == {
        "test_pr_auc": pytest.approx(5 / 6),
        "test_roc_auc": pytest.approx(0.75),
        "test_recall_at_1pct_fpr": 0.5,
        "test_ece": pytest.approx((0.1 + 0.4 + 0.65 + 0.2) / 4),  # one row per bin
    }
    assert (metrics.rows, metrics.positives) == (4, 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_scikit_learn(seed: int) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y = (rng.random(5000) < 0.03).astype(int)
    # Rounded scores: many ties, as a coarse rule or a saturated sigmoid gives.
    s = np.round(np.clip(0.2 * y + rng.normal(0.3, 0.15, 5000), 0, 1), 2)
    assert average_precision(y, s) == pytest.approx(sklearn_metrics.average_precision_score(y, s), abs=1e-12)
    assert roc_auc(y, s) == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = sklearn_metrics.roc_curve(y, s, drop_intermediate=False)
    assert recall_at_fpr(y, s, 0.01).recall == pytest.approx(tpr[fpr <= 0.01].max(), abs=1e-12)
    # ECE against an independent loop over the bins.
    edges = np.linspace(0, 1, 11)
    expected = 0.0
    for i in range(10):
        inside = (s >= edges[i]) & ((s < edges[i + 1]) if i < 9 else (s <= 1.0))
        if inside.any():
            expected += inside.mean() * abs(y[inside].mean() - s[inside].mean())
    assert expected_calibration_error(y, s) == pytest.approx(expected, abs=1e-12)
