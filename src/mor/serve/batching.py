"""Dynamic micro-batching: concurrent submissions are gathered into one call of a batch function.

When the worker is free, the first waiting item opens a batch; the batch closes when it holds `max_batch` items or
`max_wait_s` after it opened, then runs in a worker thread while the next one fills. The wait counts from the
opening, not from the first item's arrival: under steady load the callers of the batch just answered send their next
requests in that wait, and counting from arrival (their predecessors queued during the run are overdue at once)
halved the inputs per forward pass in `mor bench serve` (64 → 32) and cost 28 % of its requests per second. One
batch runs at a time, so `max_batch=1` is the same service without batching. A part of a batch can fail alone: the
batch function puts an exception in place of the results of the items it could not do, and only their callers get
it. Should the worker ever stop, its callers get an error instead of waiting forever.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

from mor.errors import first_line

Item, Result = TypeVar("Item"), TypeVar("Result")
log = logging.getLogger("mor.serve")


class Waiting(NamedTuple):
    """A submitted item and the future its caller awaits."""

    item: object
    future: asyncio.Future


class MicroBatcher(Generic[Item, Result]):
    """`await submit(item)` → `run(batch)[i]` for the batch the item joined; `run` must return one result per item,
    or an exception that this item's caller gets (an exception `run` raises goes to every caller in the batch).
    `clock` (seconds) times the waits; tests hold it still."""

    def __init__(self, run: Callable[[list[Item]], Sequence[Result | Exception]], max_batch: int,
                 max_wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.run, self.max_batch, self.max_wait_s, self.clock = run, max_batch, max_wait_s, clock
        self.waiting: deque[Waiting] = deque()
        self.batch: list[Waiting] = []  # the batch being run
        self.arrived: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None

    def start(self) -> None:
        """Start the worker in the running event loop."""
        self.arrived = asyncio.Event()
        self.worker = asyncio.create_task(self._work(), name="mor-micro-batcher")
        self.worker.add_done_callback(self._ended)

    async def stop(self) -> None:
        """Stop the worker; items still waiting are cancelled."""
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)

    async def submit(self, item: Item) -> Result:
        """The item's result, computed in a batch with whatever else was submitted meanwhile."""
        if self.worker is None or self.worker.done():
            raise RuntimeError("batcher: its worker is not running (stopped, or failed: see the server log); "
                               "restart the service")
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(Waiting(item, future))
        self.arrived.set()
        return await future

    async def _work(self) -> None:
        while True:
            while not self.waiting:
                await self._arrival(None)
            deadline = self.clock() + self.max_wait_s  # the batch opens
            while len(self.waiting) < self.max_batch and await self._arrival(deadline - self.clock()):
                pass
            batch = [self.waiting.popleft() for _ in range(min(self.max_batch, len(self.waiting)))]
            self.batch = [entry for entry in batch if not entry.future.done()]  # skip callers that gave up
            if self.batch:
                await self._run(self.batch)

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

    async def _run(self, batch: list[Waiting]) -> None:
        """Run `batch` and hand each caller still waiting its result or error; the worker goes on either way."""
        results = await asyncio.to_thread(self._results, [entry.item for entry in batch])
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():  # done: the caller gave up
                _hand(entry.future, result)

    def _results(self, items: list[Item]) -> Sequence[Result | Exception]:
        """`run(items)`, one result or error per item (run in the worker thread, so that no error `run` raises,
        StopIteration included, has to cross into the event loop's futures, which cannot all carry it)."""
        try:
            results = self.run(items)
        except Exception as err:  # the whole batch failed: each of its callers gets the error
            return [err] * len(items)
        if len(results) != len(items):
            error = RuntimeError(f"batcher: the batch function gave {len(results)} results for {len(items)} items; "
                                 f"it must return one per item")
            return [error] * len(items)
        return results

    def _ended(self, worker: asyncio.Task) -> None:
        """Cancel (when stopped) or fail (when the worker died) every caller still waiting, so none waits forever."""
        error = None if worker.cancelled() else worker.exception()
        if error is not None:
            log.error("batcher: the worker died", exc_info=error)
        pending = [entry.future for entry in [*self.batch, *self.waiting] if not entry.future.done()]
        self.waiting.clear()
        for future in pending:
            if error is None:
                future.cancel()
            else:
                future.set_exception(RuntimeError(f"batcher: the worker died ({type(error).__name__}: "
                                                  f"{first_line(error)}); restart the service"))


def _hand(future: asyncio.Future, result: object) -> None:
    """Give `future` its result or error; an error a future cannot carry (StopIteration) becomes a RuntimeError."""
    try:
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)
    except Exception as err:
        log.error("batcher: cannot hand a result of type %s to its caller: %s", type(result).__name__, err)
        future.set_exception(RuntimeError(f"batcher: the model gave {type(result).__name__}, which cannot be "
                                          f"passed on ({first_line(err)}); see the server log"))
