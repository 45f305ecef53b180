"""The Faust workers' event loop (`streamscore.faust_apps.use_event_loop`): the worker and the app it runs share the
chosen loop, and a loop outside the list is a clear error."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import faust
import pytest

from streamscore.errors import ConfigError
from streamscore.faust_apps import faust_app, running_loop_name, use_event_loop
from streamscore.settings import KafkaSettings


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


def _app(app_id: str, loop: asyncio.AbstractEventLoop | None) -> Any:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    return faust_app(app_id, kafka, client="t", partitions=1, web_port=1, web_bind="127.0.0.1", loop=loop)


def _suspended_hand_over(app: faust.App, queue: object, loop: asyncio.AbstractEventLoop) -> None:
    """A record handed to a stream's queue while the flow is suspended (a rebalance) waits for the resume."""

    async def scenario() -> None:
        app.flow_control.suspend()
        put = asyncio.ensure_future(queue.put("record"))  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)
        if put.done():
            put.result()  # raises what ended it early
        assert not put.done()
        app.flow_control.resume()
        await asyncio.wait_for(put, 2.0)

    loop.run_until_complete(scenario())


@pytest.mark.parametrize("name", ["uvloop", "asyncio"])
def test_a_record_handed_over_during_a_rebalance_waits_on_the_apps_own_loop(name: str) -> None:
    loop = use_event_loop(name)
    app = _app("loop-made", loop)
    queue = app.channel().queue  # made while the service is built, as the agents' are
    try:
        _suspended_hand_over(app, queue, app.loop)
    finally:
        loop.close()


def test_negative_control_a_loop_chosen_after_the_app_was_made_breaks_the_hand_over() -> None:
    # What the services did before: the app made on the default loop, the worker's loop set when it starts.
    app = _app("loop-late", None)
    queue = app.channel().queue
    loop = app.loop = use_event_loop("uvloop")
    try:
        with pytest.raises(RuntimeError, match="attached to a different loop"):
            _suspended_hand_over(app, queue, loop)
    finally:
        loop.close()
