"""Adaptive micro-batching of concurrent requests (MLServer's shape): each request waits on a future; a batch
closes when it holds `max_batch_size` requests or `max_queue_delay_ms` after its first one, whichever comes
first; the engine scores it in one call on a worker thread (the event loop keeps accepting requests), and the
results — or the exception — go back to every future."""

from __future__ import annotations

import asyncio
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


@dataclass(slots=True)
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]
    queued: float


class AdaptiveBatcher(Generic[In, Out]):
    """`await batcher.submit(item)` → the result of `work([.., item, ..])` for that item.

    `work` maps a batch to one result per item (an Exception instance fails only that item); an exception
    raised by `work` fails the whole batch. `on_batch(size, queue_seconds)` observes each batch."""

    def __init__(
        self,
        work: Callable[[Sequence[In]], Sequence[Out | BaseException]],
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        on_batch: Callable[[int, float], None] | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.work = work
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_queue_delay_ms / 1000.0
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[In, Out]] = asyncio.Queue()
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="adaptive-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the server is shutting down"))
        if self._own_executor:
            self._executor.shutdown(wait=True)

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(item, future, time.monotonic()))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = first.queued + self.max_delay_s
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # Take what is already waiting without blocking: it costs nothing and fills the batch.
                    while len(batch) < self.max_batch_size and not self._queue.empty():
                        batch.append(self._queue.get_nowait())
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = [p for p in batch if not p.future.cancelled()]
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live), time.monotonic() - first.queued)
            try:
                results = await loop.run_in_executor(self._executor, self.work, [p.item for p in live])
            except Exception as exc:  # noqa: BLE001 - the batch's failure is every request's answer
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, result in zip(live, results, strict=True):
                if p.future.done():
                    continue
                if isinstance(result, BaseException):
                    p.future.set_exception(result)
                else:
                    p.future.set_result(result)
