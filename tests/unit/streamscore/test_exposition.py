"""Every service's `/metrics` text has no `*_created` series: the scorer's MetricsServer, the feature processor's and
the monitor's Faust page, the API's route. prometheus_client exports them by default, and the switch is process-wide:
each test turns them back on first, so that only the service's own set-up can take them away."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from monitor.app import create_app as create_monitor
from monitor.metrics import MonitorMetrics
from scorer.api.app import create_app as create_api
from scorer.health import MetricsServer
from scorer.metrics import ScorerMetrics
from stream_processors.accounts.pushing import MemorySink
from stream_processors.app import create_app as create_processor
from stream_processors.metrics import FeatureMetrics
from tests.unit.monitor.test_app import settings as monitor_settings
from tests.unit.scorer.api.test_readiness import Clock, CountingRegistry, runtime
from tests.unit.stream_processors.test_app import settings as processor_settings


@pytest.fixture(autouse=True)
def created_series_on() -> Iterator[None]:
    prometheus_client.enable_created_metrics()  # type: ignore[no-untyped-call]
    probe = CollectorRegistry()
    Counter("probe", "a counter", registry=probe)
    assert b"probe_created" in generate_latest(probe), "the test could not fail: _created series are off already"
    yield
    prometheus_client.enable_created_metrics()  # type: ignore[no-untyped-call]  # the default, for later tests


def assert_no_created(text: str, expected: str) -> None:
    assert expected in text, "not the service's metrics"
    created = [line for line in text.splitlines() if "_created" in line]
    assert not created, created[:5]


def test_the_scorer_serves_no_created_series() -> None:
    metrics = ScorerMetrics(CollectorRegistry())
    metrics.model_swaps.labels(variant="champion").inc()
    server = MetricsServer(metrics.registry, {}, "127.0.0.1", 0).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.stop()
    assert_no_created(text, "streamscore_scorer_model_swaps_total")


def faust_page(app: Any, path: str) -> str:
    """What the Faust worker's web server answers on `path` (the page's view, called as aiohttp would)."""
    response = asyncio.run(app.web.views[path].get(object()))
    return bytes(response.body).decode()


def test_the_feature_processor_serves_no_created_series() -> None:
    processor = create_processor(processor_settings(), sink=MemorySink(), metrics=FeatureMetrics(CollectorRegistry()))
    assert_no_created(faust_page(processor.app, "/metrics"), "streamscore_features_push_batches_total")


def test_the_monitor_serves_no_created_series() -> None:
    monitor = create_monitor(monitor_settings(), loader=lambda version: {}, metrics=MonitorMetrics(CollectorRegistry()))
    assert_no_created(faust_page(monitor.app, "/metrics"), "streamscore_monitor_records_total")


def test_the_api_serves_no_created_series(tmp_path: Path) -> None:
    rt = runtime(CountingRegistry(tmp_path), Clock())
    settings = rt.settings.model_copy(update={"metrics_require_key": False})
    app = create_api(settings, runtime=rt)
    app.state.runtime = rt

    async def scrape() -> str:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            await client.get("/livez")  # a request counted: the counters have a labelled series
            return (await client.get("/metrics")).text

    assert_no_created(asyncio.run(scrape()), 'streamscore_api_requests_total{route="/livez",status="200"}')
