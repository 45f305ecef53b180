"""Metrics against hand-computed tiny cases and against scikit-learn on seeded random data with ties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    average_precision,
    best_single_rule,
    choose_operating_point,
    decision_metrics,
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


def test_operating_point_by_hand_ties_decide_together() -> None:
    # 10 legitimate rows, 4 fraud. Decline may take 1 legitimate row (FPR <= 0.1), review 3 (<= 0.3).
    y = [1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    s = [0.99, 0.9, 0.9, 0.8, 0.7, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.05]
    point = choose_operating_point(y, s, decline_max_fpr=0.1, review_max_fpr=0.3)
    # >= 0.8 declines one legitimate row (0.9); 0.7 would add two more at once (a tie): not allowed for decline,
    # allowed for review (3 of 10); 0.6 adds a fraud only: still 3 of 10, the lowest allowed threshold.
    assert (point.decline, point.review) == (0.8, 0.6)
    m = decision_metrics(y, s, [100, 50, 1, 10, 1, 1, 40, 1, 1, 1, 1, 1, 1, 1], review=0.6, decline=0.8)
    assert m.declined == 4 and m.decline_rate == pytest.approx(4 / 14)
    assert m.decline_precision == pytest.approx(3 / 4) and m.decline_recall == pytest.approx(3 / 4)
    assert m.decline_fpr == pytest.approx(0.1)
    assert m.decline_amount_recall == pytest.approx(160 / 200)
    assert m.review_rate == pytest.approx(3 / 14)
    assert m.flagged_recall == 1.0 and m.flagged_fpr == pytest.approx(0.3)


def test_no_threshold_meets_the_objective_turns_the_band_off() -> None:
    # The top score is shared by half of the legitimate rows: every threshold declines at least 50 % of them.
    y, s = [1, 0, 0, 1, 0, 0], [1.0, 1.0, 1.0, 0.2, 0.1, 0.1]
    point = choose_operating_point(y, s, decline_max_fpr=0.1, review_max_fpr=0.5)
    # Review may take half of them: the top run, and 0.2 (a fraud only) on top of it.
    assert point.decline is None and point.review == 0.2
    m = decision_metrics(y, s, [1.0] * 6, review=None, decline=None)
    assert (m.declined, m.decline_rate, m.decline_precision, m.decline_recall, m.flagged_fpr) == (0, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="decline_max_fpr <= review_max_fpr"):
        choose_operating_point(y, s, decline_max_fpr=0.2, review_max_fpr=0.1)


@pytest.mark.parametrize("seed", [0, 1])
def test_operating_point_equals_scikit_learns_roc_curve(seed: int) -> None:
    """The decline threshold is sklearn's lowest `roc_curve` threshold with FPR <= target, and applying it gives
    sklearn's own precision and recall (ties: rounded scores)."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y = (rng.random(20_000) < 0.02).astype(int)
    s = np.round(np.clip(0.3 * y + rng.normal(0.3, 0.12, 20_000), 0, 1), 3)
    point = choose_operating_point(y, s, decline_max_fpr=0.005, review_max_fpr=0.02)
    fpr, _, thresholds = sklearn_metrics.roc_curve(y, s, drop_intermediate=False)
    for target, chosen in ((0.005, point.decline), (0.02, point.review)):
        assert chosen == thresholds[fpr <= target].min()
    amounts = rng.uniform(1, 500, y.size)
    m = decision_metrics(y, s, amounts, review=point.review, decline=point.decline)
    assert point.decline is not None
    declined = (s >= point.decline).astype(int)
    assert m.decline_precision == pytest.approx(sklearn_metrics.precision_score(y, declined), abs=1e-12)
    assert m.decline_recall == pytest.approx(sklearn_metrics.recall_score(y, declined), abs=1e-12)
    assert m.decline_fpr <= 0.005
    assert m.decline_amount_recall == pytest.approx(amounts[(y == 1) & (declined == 1)].sum() / amounts[y == 1].sum())
