"""Adaptive micro-batching of concurrent requests (Triton's dynamic batcher, MLServer's shape): each request waits
on a future; a batch is dispatched when it holds `max_batch_size` requests or `max_queue_delay_ms` after its first
one, whichever comes first, and only when the engine is free — while one batch is being scored the next one keeps
filling, so the batch size follows the load. The engine scores a batch in one call on its worker thread (the event
loop keeps serving requests), and the results — or the exception — go back to every future.

Everything but the engine call runs on the event loop, without a queue task or a timer per request: a request
costs one list append and one future, a batch one executor hand-off and one wake-up of the loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class BatcherStoppedError(RuntimeError):
    def __init__(self) -> None:
        super().__init__("the server is shutting down")


@dataclass(slots=True)
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]
    queued: float


class AdaptiveBatcher(Generic[In, Out]):
    """`await batcher.submit(item)` → the result of `work([.., item, ..])` for that item.

    `work` maps a batch to one result per item (an Exception instance fails only that item); an exception
    raised by `work` fails the whole batch. `on_batch(size, queue_seconds)` observes each batch as it is
    dispatched. At most one batch is in the engine at a time."""

    def __init__(
        self,
        work: Callable[[Sequence[In]], Sequence[Out | BaseException]],
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        on_batch: Callable[[int, float], None] | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.work = work
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_queue_delay_ms / 1000.0
        self.on_batch = on_batch
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[_Pending[In, Out]] = []
        self._in_flight: concurrent.futures.Future[Sequence[Out | BaseException]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def stop(self) -> None:
        """Refuse new requests, fail the waiting ones, let the batch in the engine finish and answer."""
        self._stopped = True
        self._cancel_timer()
        waiting, self._waiting = self._waiting, []
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(BatcherStoppedError())
        if self._in_flight is not None:
            await asyncio.wrap_future(self._in_flight)
            await asyncio.sleep(0)  # its results are delivered by a callback scheduled on this loop
        if self._own_executor:
            self._executor.shutdown(wait=True)

    def submit(self, item: In) -> asyncio.Future[Out]:
        """The future of `item`'s result (await it). A plain function, not a coroutine: the hot path awaits the
        future itself, one frame less per request."""
        if self._loop is None:
            raise RuntimeError("AdaptiveBatcher.start() was not called")
        future: asyncio.Future[Out] = self._loop.create_future()
        if self._stopped:
            future.set_exception(BatcherStoppedError())
            return future
        self._waiting.append(_Pending(item, future, time.monotonic()))
        if self._in_flight is None:
            self._dispatch_if_due()
        return future

    def _dispatch_if_due(self) -> None:
        """Dispatch the oldest requests if the engine is free and the batch is full or its first one waited long
        enough; otherwise make sure a timer will look again when it has."""
        if self._in_flight is not None or not self._waiting:
            return
        waited = time.monotonic() - self._waiting[0].queued
        if len(self._waiting) >= self.max_batch_size or waited >= self.max_delay_s:
            self._dispatch()
        elif self._timer is None:
            assert self._loop is not None
            self._timer = self._loop.call_later(self.max_delay_s - waited, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch_if_due()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _dispatch(self) -> None:
        self._cancel_timer()
        batch = self._waiting[: self.max_batch_size]
        del self._waiting[: self.max_batch_size]
        live = [p for p in batch if not p.future.done()]  # a client that went away cancelled its future
        if not live:
            self._dispatch_if_due()
            return
        if self.on_batch is not None:
            self.on_batch(len(live), time.monotonic() - live[0].queued)
        loop = self._loop
        assert loop is not None
        in_flight = self._executor.submit(self.work, [p.item for p in live])
        self._in_flight = in_flight

        def done(_: concurrent.futures.Future[Sequence[Out | BaseException]]) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(self._deliver, live, in_flight)

        in_flight.add_done_callback(done)

    def _deliver(
        self, live: list[_Pending[In, Out]], finished: concurrent.futures.Future[Sequence[Out | BaseException]]
    ) -> None:
        self._in_flight = None
        error = finished.exception()
        results: Sequence[Out | BaseException] = () if error is not None else finished.result()
        if error is None and len(results) != len(live):
            error = RuntimeError(f"the engine returned {len(results)} results for {len(live)} requests")
        if error is not None:
            for p in live:
                if not p.future.done():
                    p.future.set_exception(error)
        else:
            for p, result in zip(live, results, strict=True):
                if p.future.done():
                    continue
                if isinstance(result, BaseException):
                    p.future.set_exception(result)
                else:
                    p.future.set_result(result)
        if not self._stopped:
            self._dispatch_if_due()
