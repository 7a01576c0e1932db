"""Dynamic micro-batching: concurrent submissions are gathered into one call of a batch function.

The first waiting item opens a batch; the batch closes when it holds `max_batch` items or `max_wait_s` has
passed, then runs in a worker thread while the next one fills. One batch runs at a time, so `max_batch=1`
is the same service without batching. A part of a batch can fail alone: the batch function puts an exception in
place of the results of the items it could not do, and only their callers get it.
"""

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item, Result = TypeVar("Item"), TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    """`await submit(item)` → `run(batch)[i]` for the batch the item joined; `run` must return one result per item,
    or an exception that this item's caller gets (an exception `run` raises goes to every caller in the batch)."""

    def __init__(self, run: Callable[[list[Item]], Sequence[Result | Exception]], max_batch: int,
                 max_wait_s: float) -> None:
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.waiting: deque[tuple[Item, asyncio.Future]] = deque()
        self.arrived: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None

    def start(self) -> None:
        """Start the worker in the running event loop."""
        self.arrived = asyncio.Event()
        self.worker = asyncio.create_task(self._work(), name="mor-micro-batcher")

    async def stop(self) -> None:
        """Stop the worker; items still waiting are cancelled."""
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        while self.waiting:
            self.waiting.popleft()[1].cancel()

    async def submit(self, item: Item) -> Result:
        """The item's result, computed in a batch with whatever else was submitted meanwhile."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((item, future))
        self.arrived.set()
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.waiting:
                await self._arrival(None)
            deadline = loop.time() + self.max_wait_s
            while len(self.waiting) < self.max_batch and await self._arrival(deadline - loop.time()):
                pass
            batch = [self.waiting.popleft() for _ in range(min(self.max_batch, len(self.waiting)))]
            batch = [(item, future) for item, future in batch if not future.done()]  # skip callers that gave up
            if batch:
                await self._run(batch)

    async def _arrival(self, timeout: float | None) -> bool:
        """Wait for the next submission, at most `timeout` seconds (None: forever); False when none came."""
        if timeout is not None and timeout <= 0:
            return False
        self.arrived.clear()
        try:
            await asyncio.wait_for(self.arrived.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _run(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        """Run `batch` and hand each caller still waiting its result or error; the worker goes on either way."""
        try:
            results = await asyncio.to_thread(self.run, [item for item, _ in batch])
        except Exception as err:  # the whole batch failed: each of its callers gets the error
            results = [err] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller gave up
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
