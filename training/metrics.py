"""Evaluation metrics of a fraud score, in numpy (equal to scikit-learn's definitions), and the single-rule
baseline a model has to beat.

Every function takes binary labels `y` (0/1 or bool) and scores `s` (higher = more likely fraud). Ties are
treated as sklearn does: all rows sharing a score enter the decision at the same threshold.
"""

from __future__ import annotations

import math
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


# --- operating point -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """A version's decision thresholds, chosen on the validation split: decline at `score >= decline`, review at
    `score >= review` below that. None: no threshold meets that band's objective, the band is off (sklearn's
    `roc_curve` threshold +inf: nothing flagged, false-positive rate 0)."""

    review: float | None
    decline: float | None
    review_max_fpr: float
    decline_max_fpr: float

    @property
    def objective(self) -> str:
        """In words, for the version tag and the model card."""
        return (
            f"decline: largest recall with FPR <= {self.decline_max_fpr:g}; review: largest recall with FPR <= "
            f"{self.review_max_fpr:g} (validation split; ties decide together)"
        )


def choose_operating_point(
    y: ArrayLike, s: ArrayLike, *, decline_max_fpr: float, review_max_fpr: float
) -> OperatingPoint:
    """Each band's threshold: the lowest score `t` whose rule `score >= t` flags at most that share of the legitimate
    rows (`recall_at_fpr`: the most fraud for the allowed false positives). Rows sharing a score enter together, so a
    tie that would cross the limit keeps the whole run out; when even the top score's run crosses it, the band is off
    (None). Review's limit is at least decline's, so its threshold is at most decline's: review is the next band."""
    if not 0.0 <= decline_max_fpr <= review_max_fpr <= 1.0:
        raise ValueError(f"need 0 <= decline_max_fpr <= review_max_fpr <= 1, got {decline_max_fpr}, {review_max_fpr}")

    def threshold(target: float) -> float | None:
        t = recall_at_fpr(y, s, target).threshold
        return None if math.isinf(t) else t

    return OperatingPoint(
        review=threshold(review_max_fpr),
        decline=threshold(decline_max_fpr),
        review_max_fpr=review_max_fpr,
        decline_max_fpr=decline_max_fpr,
    )


@dataclass(frozen=True, slots=True)
class DecisionMetrics:
    """What an operating point does on a split: the model card's figures."""

    decline_rate: float
    """Share of all transactions declined."""
    decline_precision: float
    """Share of declines that were fraud; 0 when nothing is declined (sklearn's zero_division=0)."""
    decline_recall: float
    """Share of fraud declined."""
    decline_fpr: float
    """Share of legitimate transactions declined: good customers declined."""
    decline_amount_recall: float
    """Share of the fraud amount declined (amounts summed as they come, as the monitor does)."""
    review_rate: float
    """Share of all transactions sent to review (review band only, declines excluded)."""
    flagged_recall: float
    """Share of fraud reviewed or declined."""
    flagged_fpr: float
    """Share of legitimate transactions reviewed or declined."""
    declined: int
    rows: int
    positives: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}{name}": float(getattr(self, name))
            for name in (
                "decline_rate",
                "decline_precision",
                "decline_recall",
                "decline_fpr",
                "decline_amount_recall",
                "review_rate",
                "flagged_recall",
                "flagged_fpr",
            )
        }


def decision_metrics(
    y: ArrayLike, s: ArrayLike, amount: ArrayLike, *, review: float | None, decline: float | None
) -> DecisionMetrics:
    """The figures of the decisions `score >= decline` (decline) and `score >= review` (review or decline) on a split.
    A rate over an empty class is 0."""
    labels, scores = _inputs(y, s)
    amounts = np.asarray(amount, dtype=np.float64).ravel()
    if amounts.shape != labels.shape:
        raise ValueError(f"amounts and labels differ in length: {amounts.shape[0]} vs {labels.shape[0]}")
    fraud = labels == 1
    legit = ~fraud
    declined = scores >= decline if decline is not None else np.zeros_like(fraud)
    flagged = scores >= review if review is not None else np.zeros_like(fraud)
    flagged |= declined

    def share(part: NDArray[np.bool_], whole: NDArray[np.bool_]) -> float:
        n = int(whole.sum())
        return float((part & whole).sum() / n) if n else 0.0

    fraud_amount = float(amounts[fraud].sum())
    everyone = np.ones_like(fraud)
    return DecisionMetrics(
        decline_rate=share(declined, everyone),
        decline_precision=share(fraud, declined),
        decline_recall=share(declined, fraud),
        decline_fpr=share(declined, legit),
        decline_amount_recall=float(amounts[fraud & declined].sum() / fraud_amount) if fraud_amount > 0 else 0.0,
        review_rate=share(flagged & ~declined, everyone),
        flagged_recall=share(flagged, fraud),
        flagged_fpr=share(flagged, legit),
        declined=int(declined.sum()),
        rows=int(labels.size),
        positives=int(fraud.sum()),
    )
