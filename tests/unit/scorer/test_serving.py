"""ServingBuilder and Reloader over an in-memory registry: every variant decides with its own version's operating
point (or the override, or the defaults), an explicit version gets the same, and re-tagging a served version changes
its thresholds between batches like an alias move, with the same loaded models."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from scorer.metrics import ScorerMetrics
from scorer.models import ModelCache, RuntimeOptions
from scorer.serving import NoModelError, Reloader, ServingBuilder
from scorer.settings import LiveVariant, ScorerSettings
from streamscore.features import FEATURE_NAMES
from streamscore.registry import ModelFiles, Registry, RegistrySettings
from streamscore.thresholds import DEFAULT_THRESHOLDS, Thresholds, ThresholdTagError, threshold_tags
from tests.support.models import linear_weights, logistic_onnx


class FakeRegistry(Registry):
    """A real Registry interface over dicts: versions' files, tags and the aliases."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(RegistrySettings(tracking_uri="sqlite:///unused.db", cache_dir=tmp))
        self.tmp = tmp
        self.alias_map: dict[str, str] = {}
        self.version_tags: dict[str, dict[str, str]] = {}

    def add(self, version: str, tags: dict[str, str]) -> None:
        path = self.tmp / f"v{version}.onnx"
        path.write_bytes(logistic_onnx(*linear_weights(int(version))))
        self.version_tags[version] = tags

    def aliases(self) -> dict[str, str]:
        return dict(self.alias_map)

    def files(self, version: str) -> ModelFiles:
        return ModelFiles(self.name, version, self.tmp / f"v{version}.onnx", "sha", "fraud_v1", FEATURE_NAMES, "run")

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.version_tags[version])


def settings(**overrides: object) -> ScorerSettings:
    variants = [
        LiveVariant(name="champion", alias="champion", weight=0.9),
        LiveVariant(name="challenger", alias="challenger", weight=0.1),
    ]
    return ScorerSettings(variants=variants, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def registry(tmp_path: Path) -> FakeRegistry:
    reg = FakeRegistry(tmp_path)
    reg.add("1", threshold_tags(0.2, 0.6, "objective"))
    reg.add("2", threshold_tags(0.5, None, "objective"))
    reg.add("3", {})  # registered before operating points were recorded
    reg.alias_map = {"champion": "1", "challenger": "2"}
    return reg


def builder(registry: FakeRegistry, **overrides: object) -> ServingBuilder:
    return ServingBuilder(settings(**overrides), registry, ModelCache(registry, RuntimeOptions(warmup_batch=8)))


def test_each_variant_gets_its_versions_thresholds_an_override_all_and_old_versions_the_defaults(
    registry: FakeRegistry,
) -> None:
    own = builder(registry)
    serving = own.build(registry.aliases())
    assert serving.thresholds == {"champion": Thresholds(0.2, 0.6, "model"), "challenger": Thresholds(0.5, None)}
    assert own.thresholds("3") == DEFAULT_THRESHOLDS  # an explicit ?version= of an old version
    overridden = builder(registry, review_threshold=0.4, decline_threshold=0.8)
    served = overridden.build(registry.aliases()).thresholds
    assert set(served.values()) == {Thresholds(0.4, 0.8, "override")}
    assert overridden.thresholds("3") == Thresholds(0.4, 0.8, "override")


def test_override_needs_both_settings() -> None:
    with pytest.raises(ValueError, match="set both or neither"):
        settings(decline_threshold=0.9)
    with pytest.raises(ValueError, match="must not exceed"):
        settings(review_threshold=0.9, decline_threshold=0.5)


def test_a_version_with_broken_threshold_tags_is_not_served(registry: FakeRegistry) -> None:
    registry.version_tags["2"] = {"decline_threshold": "0.9"}
    errors: list[Exception] = []
    serving = builder(registry).build(registry.aliases(), on_failure=lambda v, version, exc: errors.append(exc))
    assert set(serving.models) == {"champion"} and isinstance(errors[0], ThresholdTagError)
    registry.alias_map = {"challenger": "2"}
    with pytest.raises(NoModelError):
        builder(registry).build(registry.aliases())


def test_re_tagging_a_served_version_swaps_its_thresholds_between_batches(registry: FakeRegistry) -> None:
    own = builder(registry)
    serving = own.build(registry.aliases())
    metrics = ScorerMetrics(CollectorRegistry())
    reloader = Reloader(own, serving, metrics, 60.0)
    for variant in ("champion", "challenger"):  # every configured variant's reloads exported from the start
        assert metrics.registry.get_sample_value("streamscore_scorer_model_swaps_total", {"variant": variant}) == 0
    assert not reloader.check() and reloader.take() is None  # nothing moved
    registry.version_tags["1"] = threshold_tags(0.25, 0.75, "set by a promotion step")
    assert reloader.check()
    swapped = reloader.take()
    assert swapped is not None
    assert swapped.thresholds["champion"] == Thresholds(0.25, 0.75) and swapped.thresholds["challenger"] == Thresholds(
        0.5, None
    )
    assert swapped.models == serving.models, "the same loaded sessions: only the operating point changed"
    # A broken re-tag keeps the thresholds in force.
    registry.version_tags["1"] = {"review_threshold": "x", "decline_threshold": "0.9"}
    assert not reloader.check() and reloader.take() is None
    # An alias move brings the new version's own thresholds.
    registry.alias_map["challenger"] = "3"
    registry.version_tags["1"] = threshold_tags(0.25, 0.75, "fixed")
    assert reloader.check()
    moved = reloader.take()
    assert moved is not None and moved.thresholds["challenger"] == DEFAULT_THRESHOLDS
    assert moved.versions() == {"champion": "1", "challenger": "3"}
    # With an override, tags are not even read.
    fixed = builder(registry, review_threshold=0.1, decline_threshold=0.2)
    pinned = Reloader(fixed, fixed.build(registry.aliases()), ScorerMetrics(CollectorRegistry()), 60.0)
    registry.version_tags["1"] = threshold_tags(0.3, 0.4, "again")
    assert not pinned.check()
