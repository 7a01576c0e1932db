"""Blocking work in a child process that a time limit can kill.

A thread cannot be stopped: a computation that outlives its limit (SymPy on a 38-character equation can run for
hours) would keep its core and its concurrency slot until it ends by itself, and a few such questions would shut an
expert down. A child process is killed at the limit instead. Children are forked from a small server process that has
imported the expert's modules once (multiprocessing's "forkserver"), not from this threaded one, so starting one costs
milliseconds. POSIX only: the wait watches the pipe with the event loop's `add_reader`.

As with any multiprocessing start method but fork, each child imports the script that started it again (as
`__mp_main__`), so a script's top-level code must sit under `if __name__ == "__main__":`. A script without that guard
would run a second time in every child, calling experts and recording feedback; the child stops it at its first
sandboxed call instead, and the parent's call fails with a message that says so.
"""

import asyncio
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from mor.errors import first_line

Result = TypeVar("Result")
CONTEXT = multiprocessing.get_context("forkserver")
CHILD = "mor-sandbox"  # the children's process name, which they have while they import the parent's script
UNGUARDED = 86  # a child's exit code when the parent's script ran again in it
GUARD = ("the script ran again inside the worker process that runs this expert, which imports it as multiprocessing "
         "does; put the script's top-level code under `if __name__ == \"__main__\":`")


def preload(modules: Sequence[str]) -> None:
    """Have the fork server import `modules` once, before its first child (later calls after it started do not)."""
    CONTEXT.set_forkserver_preload(list(modules))


async def run_killable(fn: Callable[..., Result], *args: Any, timeout_s: float) -> Result:
    """`fn(*args)` in a child process: its result or its exception, or TimeoutError once `timeout_s` have passed, the
    child killed. `fn`, its arguments, result and exceptions travel by pickle."""
    if multiprocessing.current_process().name == CHILD:  # importing the parent's unguarded script: stop here
        print(f"mor: {GUARD}", file=sys.stderr, flush=True)
        os._exit(UNGUARDED)  # at once: multiprocessing would turn SystemExit into exit code 1
    receive, send = CONTEXT.Pipe(duplex=False)
    child = CONTEXT.Process(target=_run, args=(send, fn, args), daemon=True, name=CHILD)
    try:
        await asyncio.to_thread(child.start)  # the first start launches the fork server: not on the event loop
        send.close()
        await asyncio.wait_for(_readable(receive), timeout_s)
        ok, value = receive.recv()
    except EOFError:  # the child died without a word (killed from outside, out of memory, an unguarded script)
        await asyncio.to_thread(child.join)
        if child.exitcode == UNGUARDED:
            raise RuntimeError(GUARD) from None
        raise RuntimeError(f"the worker process ended without an answer (exit code {child.exitcode})") from None
    finally:
        if child.is_alive():
            child.kill()
        if child.pid is not None:
            await asyncio.to_thread(child.join)
        send.close()
        receive.close()
    if not ok:
        raise value
    return value


async def _readable(connection: Connection) -> None:
    """Wait until `connection` has data or its writer closed it."""
    loop, fd = asyncio.get_running_loop(), connection.fileno()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _run(send: Connection, fn: Callable[..., Any], args: tuple) -> None:
    """In the child: send (True, result) or (False, exception)."""
    try:
        send.send((True, fn(*args)))
    except Exception as err:
        try:
            send.send((False, err))
        except Exception:  # an exception pickle cannot carry: its type and first line
            send.send((False, RuntimeError(f"{type(err).__name__}: {first_line(err)}")))
