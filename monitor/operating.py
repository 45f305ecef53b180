"""Each variant's operating point, for `streamscore report`: the thresholds its scores were decided with (every
Score carries them), the version's own operating point and what that point did on the test split (the version's
registry tags, written by training: `test_decline_rate`, `test_decline_recall`, ...).

Pure: scores and a tag lookup in, views out (monitor.reader reads the scores, the CLI passes the registry). No
`training` import: the tag names are the registry's contract (`streamscore.thresholds`, docs/models.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from streamscore.contracts import Score, ThresholdSource
from streamscore.thresholds import Thresholds, ThresholdTagError, from_tags

TEST_FIGURES = (
    "test_decline_rate",
    "test_decline_precision",
    "test_decline_recall",
    "test_decline_fpr",
    "test_decline_amount_recall",
)
"""The version tags (and run metrics) of the operating point on the test split, as training records them."""


@dataclass(frozen=True)
class OperatingPointView:
    """What decided a variant's latest scores, and what that operating point did on its version's test split."""

    variant: str
    version: str
    shadow: bool
    review: float | None
    decline: float | None
    source: ThresholdSource | None
    """From the scores; None: scores written before thresholds were recorded."""
    own: Thresholds | None = None
    """The version's own operating point (its tags); None when the registry could not say."""
    test: dict[str, float] = field(default_factory=dict)
    """`TEST_FIGURES` present in the version's tags, by name without the `test_` prefix."""
    problem: str = ""
    """Why the registry part is missing, if it is."""


def latest_by_variant(scores: Iterable[tuple[Score, bool]]) -> dict[str, tuple[Score, bool]]:
    """The latest score (by scored time) of each variant, with whether it came from the shadow topic."""
    latest: dict[str, tuple[Score, bool]] = {}
    for score, shadow in scores:
        seen = latest.get(score.variant)
        if seen is None or score.scored_time >= seen[0].scored_time:
            latest[score.variant] = (score, shadow)
    return latest


def operating_points(
    latest: Mapping[str, tuple[Score, bool]], tags_of: Callable[[str], Mapping[str, str]] | None
) -> list[OperatingPointView]:
    """A view per variant, live before shadow, by name. `tags_of(version)`: the version's registry tags (None: no
    registry; an exception: its message goes into the view)."""
    views = []
    for name, (score, shadow) in sorted(latest.items(), key=lambda item: (item[1][1], item[0])):
        own: Thresholds | None = None
        test: dict[str, float] = {}
        problem = ""
        if tags_of is not None:
            try:
                tags = tags_of(score.model_version)
                own = from_tags(tags)
                test = {key.removeprefix("test_"): float(tags[key]) for key in TEST_FIGURES if key in tags}
            except ThresholdTagError as exc:
                problem = str(exc)
            except Exception as exc:  # noqa: BLE001 - MLflow raises many types; the report shows what it has
                problem = f"registry: {type(exc).__name__}: {exc}"
        views.append(
            OperatingPointView(
                variant=name,
                version=score.model_version,
                shadow=shadow,
                review=score.review_threshold,
                decline=score.decline_threshold,
                source=score.thresholds,
                own=own,
                test=test,
                problem=problem[:300],
            )
        )
    return views
