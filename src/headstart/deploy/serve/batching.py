"""Micro-batching: items of concurrent requests share one forward pass in a single inference thread.

Requests are decoded in parallel, then their items join one queue. When a batch fails, its items run again one
at a time, so an item that breaks the forward pass fails only its own request. One worker task takes everything queued (up to
``max_batch`` items, waiting at most ``window_s`` for requests still being decoded) and runs it as one batch in the
inference thread, so requests arriving together share a forward pass without changing any result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["MicroBatcher"]


class MicroBatcher:
    """Queue decoded items from concurrent requests and run them together in one inference thread.

    ``run`` maps a list of decoded items to probabilities (n, k). A batch is dispatched as soon as the worker is
    free; it waits up to ``window_s`` only while other requests are still being decoded (``expecting()`` > 0), so a
    lone request never waits and requests arriving together share a forward pass.
    """

    def __init__(self, run: Callable[[list[Any]], np.ndarray], *, max_batch: int, window_s: float,
                 expecting: Callable[[], int] = lambda: 0, on_batch: Callable[[int], None] | None = None) -> None:
        self.run, self.max_batch, self.window_s, self.expecting = run, max_batch, window_s, expecting
        self.on_batch = on_batch
        self.retried_batches = 0
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headstart-inference")
        self.batches = 0
        self.items = 0
        self.busy = False  # a forward pass is running
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work())

    def failed(self) -> bool:
        """True when the worker task has ended (it only ends on a bug); /health then reports it."""
        return self._task is not None and self._task.done()

    async def drain(self, seconds: float) -> None:
        """Wait (at most ``seconds``) until no item is queued or in a forward pass: graceful shutdown."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (not self.queue.empty() or self.busy) and loop.time() < deadline and not self.failed():
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, decoded: Sequence[Any]) -> np.ndarray:
        """Probabilities for ``decoded`` items (rows in order), computed in batches shared with other requests."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in decoded]
        for item, future in zip(decoded, futures):
            self.queue.put_nowait((item, future))
        rows = await asyncio.gather(*futures)
        return np.stack(rows)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.window_s
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or self.expecting() == 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except (TimeoutError, asyncio.TimeoutError):
                    break
            live = [(item, future) for item, future in batch if not future.done()]  # timed-out requests drop out
            if not live:
                continue
            self.busy = True
            try:
                await self._run_batch(loop, live)
            finally:
                self.busy = False

    async def _run_batch(self, loop: asyncio.AbstractEventLoop,
                         live: list[tuple[Any, asyncio.Future[np.ndarray]]]) -> None:
        try:
            probabilities = await loop.run_in_executor(self.executor, self.run, [item for item, _ in live])
        except Exception as error:  # noqa: BLE001 - one bad item must not fail the others: each alone
            if len(live) > 1:
                await self._one_by_one(live)
            elif not live[0][1].done():
                live[0][1].set_exception(error)
            return
        self._answered(live, probabilities)

    def _answered(self, live: list[tuple[Any, asyncio.Future[np.ndarray]]], probabilities: np.ndarray) -> None:
        self.batches += 1
        self.items += len(live)
        if self.on_batch is not None:
            self.on_batch(len(live))
        for row, (_, future) in zip(probabilities, live):
            if not future.done():
                future.set_result(row)

    async def _one_by_one(self, live: list[tuple[Any, asyncio.Future[np.ndarray]]]) -> None:
        """After a failed batch: run each item alone, so only the item that fails gets the error."""
        loop = asyncio.get_running_loop()
        self.retried_batches += 1
        for item, future in live:
            if future.done():
                continue
            try:
                row = await loop.run_in_executor(self.executor, self.run, [item])
            except Exception as error:  # noqa: BLE001 - this item's own failure
                if not future.done():
                    future.set_exception(error)
                continue
            self._answered([(item, future)], row)
