"""The API's adaptive batcher: full batches go at once, a partial one after the delay, batches grow while the
engine is busy, failures reach exactly the requests they belong to, and stopping answers everyone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import pytest

from scorer.api.batching import AdaptiveBatcher, BatcherStoppedError


class Engine:
    """Doubles each item; records batch sizes; optionally holds the first batch until released."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        self.started.set()
        self.release.wait(10)
        return [ValueError(f"bad {i}") if i < 0 else 2 * i for i in items]


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_a_full_batch_goes_at_once_and_a_partial_one_after_the_delay() -> None:
    async def scenario() -> tuple[list[int], list[int], list[list[int]]]:
        engine = Engine()
        batcher: AdaptiveBatcher[int, int] = AdaptiveBatcher(engine, max_batch_size=4, max_queue_delay_ms=50)
        batcher.start()
        full = await asyncio.gather(*[batcher.submit(i) for i in range(4)])
        partial = await asyncio.gather(*[batcher.submit(i) for i in (10, 11)])
        await batcher.stop()
        return list(full), list(partial), engine.batches

    full, partial, batches = run(scenario())
    assert full == [0, 2, 4, 6] and partial == [20, 22]
    assert batches == [[0, 1, 2, 3], [10, 11]]


def test_requests_gather_while_the_engine_is_busy() -> None:
    """One batch in the engine at a time: what arrives meanwhile becomes the next batch, however long it waited."""

    async def scenario() -> list[list[int]]:
        engine = Engine(hold_first=True)
        batcher: AdaptiveBatcher[int, int] = AdaptiveBatcher(engine, max_batch_size=64, max_queue_delay_ms=0)
        batcher.start()
        first = batcher.submit(0)
        await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 10)
        rest = [batcher.submit(i) for i in range(1, 11)]
        await asyncio.sleep(0.05)
        assert batcher.waiting == 10  # the engine is busy: nothing dispatched, however overdue
        engine.release.set()
        assert await first == 0
        assert await asyncio.gather(*rest) == [2 * i for i in range(1, 11)]
        await batcher.stop()
        return engine.batches

    assert run(scenario()) == [[0], list(range(1, 11))]


def test_max_batch_size_splits_a_backlog() -> None:
    async def scenario() -> list[list[int]]:
        engine = Engine(hold_first=True)
        batcher: AdaptiveBatcher[int, int] = AdaptiveBatcher(engine, max_batch_size=3, max_queue_delay_ms=0)
        batcher.start()
        futures = [batcher.submit(0)]
        await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 10)
        futures += [batcher.submit(i) for i in range(1, 8)]
        engine.release.set()
        assert await asyncio.gather(*futures) == [2 * i for i in range(8)]
        await batcher.stop()
        return engine.batches

    assert run(scenario()) == [[0], [1, 2, 3], [4, 5, 6], [7]]


def test_an_item_failure_fails_that_request_and_an_engine_failure_the_batch() -> None:
    async def scenario() -> None:
        engine = Engine()
        batcher: AdaptiveBatcher[int, int] = AdaptiveBatcher(engine, max_batch_size=3, max_queue_delay_ms=1)
        batcher.start()
        results = await asyncio.gather(*[batcher.submit(i) for i in (1, -1, 2)], return_exceptions=True)
        assert results[0] == 2 and results[2] == 4
        assert isinstance(results[1], ValueError) and str(results[1]) == "bad -1"

        def broken(items: Sequence[int]) -> list[int]:
            raise ConnectionError("feature store down")

        batcher.work = broken
        failed = await asyncio.gather(*[batcher.submit(i) for i in (1, 2)], return_exceptions=True)
        assert all(isinstance(f, ConnectionError) for f in failed)

        batcher.work = lambda items: [1]  # a wrong number of results fails the batch, it does not hang it
        short = await asyncio.gather(*[batcher.submit(i) for i in (1, 2)], return_exceptions=True)
        assert all(isinstance(f, RuntimeError) and "1 results for 2 requests" in str(f) for f in short)
        await batcher.stop()

    run(scenario())


def test_a_cancelled_request_is_not_scored() -> None:
    async def scenario() -> list[list[int]]:
        engine = Engine()
        batcher: AdaptiveBatcher[int, int] = AdaptiveBatcher(engine, max_batch_size=8, max_queue_delay_ms=30)
        batcher.start()
        gone = batcher.submit(1)
        kept = batcher.submit(2)
        gone.cancel()  # the client disconnected
        assert await kept == 4
        await batcher.stop()
        return engine.batches

    assert run(scenario()) == [[2]]


def test_stop_fails_the_waiting_finishes_the_running_and_refuses_new_ones() -> None:
    async def scenario() -> None:
        engine = Engine(hold_first=True)
        batcher: AdaptiveBatcher[int, int] = AdaptiveBatcher(engine, max_batch_size=8, max_queue_delay_ms=0)
        batcher.start()
        running = batcher.submit(1)
        await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 10)
        waiting = batcher.submit(2)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherStoppedError):
            await waiting
        engine.release.set()
        await stopping
        assert await running == 2  # the batch in the engine was answered
        with pytest.raises(BatcherStoppedError):
            await batcher.submit(3)
        assert engine.batches == [[1]]

    run(scenario())
