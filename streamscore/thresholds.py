"""A model version's operating point: the score thresholds that turn its probability into a decision.

Training chooses them per version on the validation split (docs/models.md, "Operating point") and records them as
version tags in the registry; the scorer and the API read them when they resolve an alias or a version, so moving an
alias — or re-tagging a version, as a promotion step may — changes the thresholds between two batches, like a model
swap. The tags are the source of truth because a tag can be changed after registration; the run's
`operating_point.json` artifact keeps what training chose and why.

A threshold of None is a band that is off: no score reaches it. Training records that when no threshold meets the
objective on the validation split (sklearn's `roc_curve` puts that point at threshold +inf: nothing flagged); it is
written `off` in a tag and `null` in a Score. A version registered before operating points were recorded has no tags:
it falls back to `DEFAULT_REVIEW` / `DEFAULT_DECLINE` (the single global pair every model used before) and its scores
say `thresholds: "default"`.

Here, in the shared layer, so the scorer, the monitor and training agree on the tags without importing one another.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from streamscore.contracts import Decision, ThresholdSource
from streamscore.errors import StreamscoreError

DEFAULT_REVIEW = 0.3
"""Review threshold of a version registered without an operating point (the former global SCORER_REVIEW_THRESHOLD)."""
DEFAULT_DECLINE = 0.7
"""Decline threshold of a version registered without an operating point (the former SCORER_DECLINE_THRESHOLD)."""
REVIEW_TAG = "review_threshold"
DECLINE_TAG = "decline_threshold"
OBJECTIVE_TAG = "operating_point"
"""Version tag: in words, how the thresholds were chosen (e.g. the FPR objective on the validation split)."""
OFF = "off"
"""A threshold tag's value for a band that is off (None)."""
OPERATING_POINT_FILE = "operating_point.json"
"""Artifact of the training run, beside model.onnx: thresholds, objective and the validation and test figures."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Decision from the score: decline ≥ `decline`, review ≥ `review`, approve below; None = that band is off.
    `source` says where the pair came from (it travels in every Score)."""

    review: float | None
    decline: float | None
    source: ThresholdSource = "model"

    def __post_init__(self) -> None:
        review = math.inf if self.review is None else self.review
        decline = math.inf if self.decline is None else self.decline
        for value in (self.review, self.decline):
            if value is not None and not (isinstance(value, float | int) and 0.0 <= value <= 1.0):
                raise ValueError(f"a threshold must be a number in [0, 1] or None (off), got {value!r}")
        if not review <= decline:
            raise ValueError(
                f"thresholds must satisfy review <= decline (None = off, above every score), got review "
                f"{self.review}, decline {self.decline}"
            )

    def decide(self, score: float) -> Decision:
        decline = self.decline
        if decline is not None and score >= decline:
            return "decline"
        review = self.review
        if review is not None and score >= review:
            return "review"
        return "approve"


DEFAULT_THRESHOLDS = Thresholds(DEFAULT_REVIEW, DEFAULT_DECLINE, "default")


class ThresholdTagError(StreamscoreError):
    """A version's threshold tags cannot be read (a hand-edited tag, say): the version cannot be served."""

    http_status = 503

    def __init__(self, problem: str) -> None:
        super().__init__(
            f"operating point tags: {problem} (tags {REVIEW_TAG!r} and {DECLINE_TAG!r}: a number or {OFF!r})"
        )


def format_threshold(value: float | None) -> str:
    """A threshold as a tag value: `repr` (round-trips exactly: a threshold is some validation row's float32 score,
    and a decision compares a score with it) or `off`."""
    return OFF if value is None else repr(float(value))


def parse_threshold(text: str) -> float | None:
    if text.strip().lower() == OFF:
        return None
    try:
        return float(text)
    except ValueError:
        raise ThresholdTagError(f"{text[:40]!r} is neither a number nor {OFF!r}") from None


def threshold_tags(review: float | None, decline: float | None, objective: str) -> dict[str, str]:
    """The version tags that record an operating point."""
    return {REVIEW_TAG: format_threshold(review), DECLINE_TAG: format_threshold(decline), OBJECTIVE_TAG: objective}


def from_tags(tags: Mapping[str, str]) -> Thresholds:
    """A version's thresholds from its tags: source `model` when both threshold tags are there, the documented
    defaults (source `default`) when neither is. ThresholdTagError when only one is, or one is unreadable or out of
    order: serving such a version with guessed thresholds would decide wrongly without anyone noticing."""
    review, decline = tags.get(REVIEW_TAG), tags.get(DECLINE_TAG)
    if review is None and decline is None:
        return DEFAULT_THRESHOLDS
    if review is None or decline is None:
        missing = REVIEW_TAG if review is None else DECLINE_TAG
        raise ThresholdTagError(f"the version has one threshold tag but no {missing!r}")
    try:
        return Thresholds(parse_threshold(review), parse_threshold(decline), "model")
    except ValueError as exc:
        raise ThresholdTagError(str(exc)) from None


def describe(thresholds: Thresholds) -> str:
    """E.g. `review ≥ 0.41, decline ≥ 0.83 (the version's own)`."""

    def band(name: str, value: float | None) -> str:
        return f"no {name}" if value is None else f"{name} ≥ {value:.4g}"

    source = {"model": "the version's own", "override": "override", "default": "defaults"}[thresholds.source]
    return f"{band('review', thresholds.review)}, {band('decline', thresholds.decline)} ({source})"
