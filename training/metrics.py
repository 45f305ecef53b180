"""Evaluation metrics of a fraud score, in numpy (equal to scikit-learn's definitions), and the single-rule
baseline a model has to beat.

Every function takes binary labels `y` (0/1 or bool) and scores `s` (higher = more likely fraud). Ties are
treated as sklearn does: all rows sharing a score enter the decision at the same threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

ECE_BINS = 10
TARGET_FPR = 0.01


def _inputs(y: ArrayLike, s: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    labels = np.asarray(y, dtype=np.float64).ravel()
    scores = np.asarray(s, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.shape[0]} vs {scores.shape[0]}")
    if labels.size == 0:
        raise ValueError("no rows to evaluate")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 or 1")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return labels, scores


def _curve(labels: NDArray[np.float64], scores: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
    """Cumulative true and false positives at each distinct threshold, highest score first, and the thresholds."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    # The last row of each run of equal scores: a threshold admits the whole run at once.
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_labels.size - 1]
    tps = np.cumsum(sorted_labels)[last]
    fps = (last + 1) - tps
    return tps, fps, sorted_scores[last]


def average_precision(y: ArrayLike, s: ArrayLike) -> float:
    """PR-AUC as average precision: sum over thresholds of (R_n - R_{n-1}) * P_n (sklearn's definition).
    0.0 when there is no positive."""
    labels, scores = _inputs(y, s)
    positives = labels.sum()
    if positives == 0:
        return 0.0
    tps, fps, _ = _curve(labels, scores)
    precision = tps / (tps + fps)
    recall = tps / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y: ArrayLike, s: ArrayLike) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties counting 1/2."""
    labels, scores = _inputs(y, s)
    positives = labels.sum()
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("ROC-AUC needs both classes")
    tps, fps, _ = _curve(labels, scores)
    tpr = np.r_[0.0, tps / positives]
    fpr = np.r_[0.0, fps / negatives]
    return float(np.trapezoid(tpr, fpr))


@dataclass(frozen=True, slots=True)
class RecallAtFpr:
    recall: float
    threshold: float
    """Decline when score >= threshold; +inf when no threshold keeps the false-positive rate low enough."""
    fpr: float
    """The false-positive rate actually reached (<= the target)."""


def recall_at_fpr(y: ArrayLike, s: ArrayLike, target_fpr: float = TARGET_FPR) -> RecallAtFpr:
    """The best recall of a rule `score >= t` whose false-positive rate is at most `target_fpr`."""
    labels, scores = _inputs(y, s)
    positives = labels.sum()
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("recall at a false-positive rate needs both classes")
    tps, fps, thresholds = _curve(labels, scores)
    allowed = np.flatnonzero(fps / negatives <= target_fpr)
    if allowed.size == 0:
        return RecallAtFpr(recall=0.0, threshold=float("inf"), fpr=0.0)
    best = allowed[-1]  # cumulative counts only grow: the lowest allowed threshold has the most recall
    return RecallAtFpr(
        recall=float(tps[best] / positives), threshold=float(thresholds[best]), fpr=float(fps[best] / negatives)
    )


def expected_calibration_error(y: ArrayLike, p: ArrayLike, bins: int = ECE_BINS) -> float:
    """Sum over equal-width probability bins of (rows in bin / rows) * |fraud rate - mean score|. Bins are
    [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]; `p` must be probabilities."""
    labels, probs = _inputs(y, p)
    if probs.min() < 0.0 or probs.max() > 1.0:
        raise ValueError("calibration needs probabilities in [0, 1]")
    index = np.minimum((probs * bins).astype(np.int64), bins - 1)
    label_sums = np.bincount(index, weights=labels, minlength=bins)
    prob_sums = np.bincount(index, weights=probs, minlength=bins)
    return float(np.sum(np.abs(label_sums - prob_sums)) / labels.size)


@dataclass(frozen=True, slots=True)
class ScoreMetrics:
    pr_auc: float
    roc_auc: float
    recall_at_1pct_fpr: float
    ece: float
    rows: int
    positives: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}pr_auc": self.pr_auc,
            f"{prefix}roc_auc": self.roc_auc,
            f"{prefix}recall_at_1pct_fpr": self.recall_at_1pct_fpr,
            f"{prefix}ece": self.ece,
        }


def evaluate(y: ArrayLike, p: ArrayLike) -> ScoreMetrics:
    """The four figures we report for calibrated probabilities `p`."""
    labels, probs = _inputs(y, p)
    return ScoreMetrics(
        pr_auc=average_precision(labels, probs),
        roc_auc=roc_auc(labels, probs),
        recall_at_1pct_fpr=recall_at_fpr(labels, probs).recall,
        ece=expected_calibration_error(labels, probs),
        rows=int(labels.size),
        positives=int(labels.sum()),
    )


@dataclass(frozen=True, slots=True)
class RuleBaseline:
    rule: str
    """The feature, `-feature` when lower values mean fraud."""
    pr_auc: float


def best_single_rule(x: NDArray[np.floating], y: ArrayLike, names: Sequence[str]) -> RuleBaseline:
    """The strongest one-feature threshold rule: for each feature and its negation, the average precision of
    the raw feature as a score (every threshold at once); the best of them."""
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(f"x must be (rows, {len(names)}), got {x.shape}")
    best = RuleBaseline(rule="", pr_auc=-1.0)
    for j, name in enumerate(names):
        column = np.nan_to_num(np.asarray(x[:, j], dtype=np.float64), nan=0.0)
        for rule, scores in ((name, column), (f"-{name}", -column)):
            ap = average_precision(y, scores)
            if ap > best.pr_auc:
                best = RuleBaseline(rule=rule, pr_auc=ap)
    return best
