"""Worker threads for experts' blocking work: a pool of the expert's own, and a record of each call's threads.

A timeout stops the wait for a thread, not the thread: it runs on. In a pool of its own, sized by the expert's
`max_concurrency`, an expert's leftover threads can neither exceed its limit nor starve other experts or asyncio's
shared default executor; and since the threads a call starts are recorded in its `Threads`, the system can keep the
call's concurrency slot until they have really ended.
"""

import asyncio
import contextvars
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

Result = TypeVar("Result")

_RECORDING: contextvars.ContextVar["Threads | None"] = contextvars.ContextVar("mor_expert_threads", default=None)


class Threads:
    """The threads one expert call started, so that what waits for their end can be run once they have ended."""

    def __init__(self) -> None:
        self.futures: list[Future] = []

    def when_done(self, callback: Callable[[], object]) -> None:
        """Run `callback` once every recorded thread has ended: now when none runs, else later on the running loop
        (never, if that loop is closed first: whatever the callback frees belongs to that loop)."""
        running = [f for f in self.futures if not f.done()]  # a job still queued counts as running
        if not running:
            callback()
            return
        ended = asyncio.gather(*(asyncio.wrap_future(f) for f in running), return_exceptions=True)
        ended.add_done_callback(lambda _: callback())


@contextmanager
def recording(threads: Threads) -> Iterator[None]:
    """Record in `threads` every thread that expert code run inside this block (in this task) starts."""
    token = _RECORDING.set(threads)
    try:
        yield
    finally:
        _RECORDING.reset(token)


class Workers:
    """A pool of at most `size` threads for one expert's blocking work, named after the expert."""

    def __init__(self, name: str, size: int) -> None:
        self._pool = ThreadPoolExecutor(size, thread_name_prefix=f"mor-expert-{name}")

    async def run(self, fn: Callable[..., Result], *args: Any) -> Result:
        """`fn(*args)` on a pool thread, with this context's variables (as asyncio.to_thread does), recorded in the
        call being recorded; cancelling the wait drops the job if it has not started, else the thread runs on."""
        future = self._pool.submit(contextvars.copy_context().run, fn, *args)
        if (threads := _RECORDING.get()) is not None:
            threads.futures.append(future)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Take no more work and drop the jobs not started; running threads end on their own."""
        self._pool.shutdown(wait=False, cancel_futures=True)
