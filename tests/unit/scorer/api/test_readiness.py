"""The API's `/readyz` answers from the model watcher's state: probes never ask the registry (MLflow) themselves, and
the registry is reported only when the watcher has not read it within API_REGISTRY_STALE_AFTER_S."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from scorer.api.app import Runtime, create_app
from scorer.api.metrics import ApiMetrics
from scorer.api.security import KeyChecker, RateLimiter
from scorer.api.settings import ApiSettings
from scorer.engine import ScoringEngine
from scorer.metrics import ScorerMetrics
from scorer.models import ModelCache, RuntimeOptions
from scorer.serving import Reloader, ServingBuilder
from scorer.settings import LiveVariant, ScorerSettings
from streamscore.features import FEATURE_NAMES
from streamscore.registry import ModelFiles, Registry, RegistrySettings, RegistryUnavailableError
from streamscore.thresholds import Thresholds
from tests.support.models import linear_weights, logistic_onnx
from tests.unit.scorer.test_engine import FakeFeatureClient

PROBES = 50


class CountingRegistry(Registry):
    """A real Registry interface over one version, counting every call a probe could make; `down` fails them all like
    an unreachable MLflow."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(RegistrySettings(tracking_uri="sqlite:///unused.db", cache_dir=tmp))
        self.path = tmp / "v1.onnx"
        self.path.write_bytes(logistic_onnx(*linear_weights(1)))
        self.calls: list[str] = []
        self.down = False

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if self.down:
            raise RegistryUnavailableError(self.settings.tracking_uri, "connection refused")

    def aliases(self) -> dict[str, str]:
        self._call("aliases")
        return {"champion": "1"}

    def files(self, version: str) -> ModelFiles:
        self._call("files")
        return ModelFiles(self.name, version, self.path, "sha", "fraud_v1", FEATURE_NAMES, "run")

    def tags(self, version: str) -> dict[str, str]:
        self._call("tags")
        return {}

    def thresholds(self, version: str) -> Thresholds:
        self._call("thresholds")
        return super().thresholds(version)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def runtime(registry: CountingRegistry, clock: Clock) -> Runtime:
    scorer = ScorerSettings(variants=[LiveVariant(name="champion", alias="champion", weight=1.0)])
    settings = ApiSettings(scorer=scorer, batching=False, audit=False, demo_ui=False, registry_stale_after_s=60.0)
    builder = ServingBuilder(scorer, registry, ModelCache(registry, RuntimeOptions(warmup_batch=8)))
    serving = builder.build(registry.aliases())
    features = FakeFeatureClient()
    return Runtime(
        settings=settings,
        engine=ScoringEngine(serving, features, attach_features=True),
        builder=builder,
        reloader=Reloader(builder, serving, ScorerMetrics(CollectorRegistry()), 3600.0, clock=clock),
        features=features,
        keys=KeyChecker({}),
        limiter=RateLimiter(1.0, 1),
        metrics=ApiMetrics(),
    )


def probe(rt: Runtime, times: int, path: str = "/readyz") -> list[httpx.Response]:
    app = create_app(rt.settings, runtime=rt)
    app.state.runtime = rt  # what the lifespan sets; not run here (it would start the watcher's thread)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return [await client.get(path) for _ in range(times)]

    return asyncio.run(run())


@pytest.fixture
def registry(tmp_path: Path) -> CountingRegistry:
    return CountingRegistry(tmp_path)


def test_probes_make_no_registry_calls(registry: CountingRegistry) -> None:
    clock = Clock()
    rt = runtime(registry, clock)
    before = list(registry.calls)
    responses = probe(rt, PROBES) + probe(rt, PROBES, "/healthz")
    assert registry.calls == before, "a readiness probe called the registry"
    assert {r.status_code for r in responses} == {200}
    assert responses[0].json() == {
        "status": "ok",
        "checks": {"models": "ok", "feature_store": "ok", "registry": "ok"},
    }
    # Still none while the registry is down and the watcher's last read is recent.
    registry.down = True
    clock.now += 59
    assert {r.status_code for r in probe(rt, PROBES)} == {200}
    assert registry.calls == before


def test_the_registry_is_reported_once_the_watcher_has_not_read_it_for_too_long(registry: CountingRegistry) -> None:
    clock = Clock()
    rt = runtime(registry, clock)
    registry.down = True
    clock.now += 30
    assert not rt.reloader.check()  # the watcher's poll fails: it keeps its models and says why
    clock.now += 31
    (response,) = probe(rt, 1)
    assert response.status_code == 503
    body: dict[str, Any] = response.json()
    assert body["status"] == "unavailable" and body["checks"]["models"] == "ok"
    assert body["checks"]["registry"].startswith("not read for 61 s (API_REGISTRY_STALE_AFTER_S=60): ")
    assert "connection refused" in body["checks"]["registry"]
    # The watcher's next successful poll makes the API ready again.
    registry.down = False
    rt.reloader.check()
    assert probe(rt, 1)[0].status_code == 200
    assert rt.reloader.registry_aliases == {"champion": "1"}


def test_a_stale_bound_within_one_poll_is_refused() -> None:
    refused = r"API_REGISTRY_STALE_AFTER_S \(5\) must exceed SCORER_RELOAD_INTERVAL_S \(10\)"
    with pytest.raises(ValueError, match=refused):
        ApiSettings(registry_stale_after_s=5.0, scorer=ScorerSettings(reload_interval_s=10.0))
