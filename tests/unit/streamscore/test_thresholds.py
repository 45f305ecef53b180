"""Operating-point tags: written by training, read by the scorer and the monitor (exact round trip, off bands,
versions without tags, broken tags)."""

from __future__ import annotations

import numpy as np
import pytest

from streamscore.thresholds import (
    DEFAULT_THRESHOLDS,
    Thresholds,
    ThresholdTagError,
    describe,
    from_tags,
    threshold_tags,
)


def test_tags_round_trip_exactly_and_off_is_none() -> None:
    # A threshold is some row's float32 score: the tag must give back the very same float.
    for value in np.asarray([0.83, 1e-7, 0.999999, 1.0, 0.0], dtype=np.float32).tolist():
        tags = threshold_tags(value / 2, value, "objective")
        assert from_tags(tags) == Thresholds(value / 2, value, "model")
    off = from_tags(threshold_tags(0.4, None, "no decline threshold met the objective"))
    assert (off.review, off.decline, off.source) == (0.4, None, "model")
    assert threshold_tags(None, None, "x")["decline_threshold"] == "off"


def test_a_version_without_tags_gets_the_documented_defaults_and_says_so() -> None:
    assert from_tags({"sha256": "abc"}) == DEFAULT_THRESHOLDS
    assert (DEFAULT_THRESHOLDS.review, DEFAULT_THRESHOLDS.decline, DEFAULT_THRESHOLDS.source) == (0.3, 0.7, "default")


@pytest.mark.parametrize(
    "tags",
    [
        {"review_threshold": "0.3"},
        {"decline_threshold": "0.7"},
        {"review_threshold": "high", "decline_threshold": "0.7"},
        {"review_threshold": "0.8", "decline_threshold": "0.7"},
        {"review_threshold": "0.3", "decline_threshold": "1.5"},
        {"review_threshold": "off", "decline_threshold": "0.7"},
    ],
)
def test_broken_tags_are_refused_not_guessed(tags: dict[str, str]) -> None:
    with pytest.raises(ThresholdTagError, match="operating point tags"):
        from_tags(tags)


def test_described_in_words() -> None:
    assert describe(Thresholds(0.41, 0.83)) == "review ≥ 0.41, decline ≥ 0.83 (the version's own)"
    assert describe(Thresholds(0.5, None, "override")) == "review ≥ 0.5, no decline (override)"
