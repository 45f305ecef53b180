"""The Faust edge's own logic that needs no broker: reference loading shared by the warm-up and the agents."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from monitor.agents import Runtime, Topics
from monitor.app_settings import MonitorAppSettings
from monitor.metrics import MonitorMetrics
from monitor.references import ReferenceBook
from tests.support.monitoring import draw_features, model_scores, reference_document


def test_concurrent_requests_for_a_reference_load_it_once_and_one_at_a_time() -> None:
    """The start-up warm-up and the records agent ask for the same versions at once; two downloads into the same
    cache folder read each other's half-written file (seen: a truncated reference.json), so loads are serialized
    and a version loaded meanwhile is not loaded again."""
    x = draw_features(np.random.default_rng(1), 500)
    document = reference_document(x, model_scores(x))
    calls: list[str] = []
    running = [0, 0]
    guard = threading.Lock()

    def loader(version: str) -> Mapping[str, Any]:
        with guard:
            running[0] += 1
            running[1] = max(running[1], running[0])
        calls.append(version)
        time.sleep(0.05)
        with guard:
            running[0] -= 1
        return document

    runtime = Runtime(
        app=None,
        settings=MonitorAppSettings(),
        partitions=6,
        state_table=None,
        merge_table=None,
        topics=Topics(None, None, None, None, None, {}),
        book=ReferenceBook(loader),
        metrics=MonitorMetrics(CollectorRegistry()),
    )

    async def both() -> None:
        await asyncio.gather(runtime.ensure_references({"1", "2"}), runtime.ensure_references({"2", "1"}))

    asyncio.run(both())
    assert sorted(calls) == ["1", "2"], "each version loaded once"
    assert running[1] == 1, "never two loads at the same time"
    assert runtime.book.features("1") is not None
