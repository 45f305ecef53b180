"""The Faust workers' event loop (`streamscore.faust_apps.use_event_loop`): the worker and the app it runs share the
chosen loop, and a loop outside the list is a clear error."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import faust
import pytest

from streamscore.errors import ConfigError
from streamscore.faust_apps import running_loop_name, use_event_loop


@pytest.fixture(autouse=True)
def _restore_policy() -> Iterator[None]:
    policy = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(policy)


@pytest.mark.parametrize("name", ["uvloop", "asyncio"])
def test_the_worker_and_its_app_run_on_the_chosen_loop(name: str) -> None:
    app = faust.App(f"loop-{name}", broker="kafka://127.0.0.1:1", web_enabled=False)
    app.loop  # noqa: B018 - a loop resolved before the choice (as another test or import may have done) is replaced
    loop = app.loop = use_event_loop(name)
    worker = faust.Worker(app, loop=loop, quiet=True)
    try:
        assert running_loop_name(worker.loop) == name
        assert app.loop is worker.loop is loop
        assert loop.run_until_complete(_running()) is loop
    finally:
        loop.close()


async def _running() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_an_unknown_loop_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"MONITOR_EVENT_LOOP: unknown event loop 'tokio'\. use one of uvloop"):
        use_event_loop("tokio", "MONITOR_EVENT_LOOP")
