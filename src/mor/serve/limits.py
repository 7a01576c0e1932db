"""Request limits: a per-caller token bucket (429) and a request-body size limit (413) applied before routing.

The buckets live in this process, or in a SQLite file that the worker processes of `mor serve --workers N` share,
so that a caller gets the configured rate from all of them together, not N times it.
"""

import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mor.errors import MorError
from mor.serve.asgi import HttpMiddleware
from mor.serve.errors import error_response
from mor.serve.settings import RateLimit

log = logging.getLogger("mor.serve")
MAX_CALLERS = 100_000  # buckets kept; the least recently seen are dropped (a dropped bucket refills in full)
PRUNE_EVERY = 1_000  # shared buckets: every this many takes, the rows of buckets full again are deleted


def spend(bucket: tuple[float, float] | None, now: float, limit: RateLimit) -> tuple[float, float]:
    """One request against a bucket (tokens, time of its last request; None: full): the tokens left after it, and
    0 when it is allowed, else the seconds until a token is back. A clock that went back (a reboot) refills it."""
    tokens, last = bucket if bucket is not None and bucket[1] <= now else (float(limit.burst), now)
    tokens = min(float(limit.burst), tokens + (now - last) * limit.requests_per_s)
    if tokens >= 1:
        return tokens - 1, 0.0
    return tokens, (1 - tokens) / limit.requests_per_s


class RateLimiter:
    """One token bucket per caller, in this process: `burst` requests at once, refilled at `requests_per_s`;
    None: unlimited."""

    def __init__(self, default: RateLimit | None, clock=time.monotonic) -> None:
        self.default, self.clock = default, clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, caller: str, limit: RateLimit | None = None) -> float:
        """Spend one token of `caller`'s bucket: 0 when allowed, else the seconds until a token is back."""
        return self._with(caller, limit, self._take)

    def wait(self, caller: str, limit: RateLimit | None = None) -> float:
        """What `take` would answer now, spending nothing: 0 when `caller`'s bucket holds a token, else the seconds
        until it does."""
        return self._with(caller, limit, self._wait)

    def _with(self, caller: str, limit: RateLimit | None, use: Callable[[str, RateLimit], float]) -> float:
        """`use(caller, limit)` under the limit that applies (`limit`, else the default); 0 when none does."""
        limit = limit or self.default
        return 0.0 if limit is None else use(caller, limit)

    def _wait(self, caller: str, limit: RateLimit) -> float:
        return spend(self.buckets.get(caller), self.clock(), limit)[1]

    def _take(self, caller: str, limit: RateLimit) -> float:
        now = self.clock()
        tokens, wait = spend(self.buckets.pop(caller, None), now, limit)
        self.buckets[caller] = (tokens, now)
        if len(self.buckets) > MAX_CALLERS:
            self.buckets.popitem(last=False)
        return wait

    def close(self) -> None:
        """Release what the buckets hold (nothing for buckets in memory)."""


class SharedRateLimiter(RateLimiter):
    """The buckets in a SQLite file that several processes on one machine share; each take is one transaction, each
    wait one read.

    The clock must be the same in every process: `time.monotonic` is the system-wide CLOCK_MONOTONIC on Linux and
    macOS. Should the file fail (full disk, a lock held too long), the request is counted in this process's own
    buckets instead, with a warning: limits then hold per process, as they would without sharing.
    """

    def __init__(self, path: str | Path, default: RateLimit | None, clock=time.monotonic) -> None:
        super().__init__(default, clock)
        self.path, self._takes = Path(path), 0
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, timeout=5.0, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")  # buckets are worthless after a crash: no waiting on disk
            self._db.execute("CREATE TABLE IF NOT EXISTS buckets (caller TEXT PRIMARY KEY, tokens REAL NOT NULL, "
                             "last REAL NOT NULL, full_at REAL NOT NULL)")
        except sqlite3.Error as err:
            raise MorError(f"rate limits: cannot use {path} as the shared SQLite file ({err}); set "
                           f"MOR_RATE_LIMITS to a writable file, or unset it") from None

    def _take(self, caller: str, limit: RateLimit) -> float:
        return self._shared(caller, limit, self._take_shared, super()._take)

    def _wait(self, caller: str, limit: RateLimit) -> float:
        return self._shared(caller, limit, self._wait_shared, super()._wait)

    def _shared(self, caller: str, limit: RateLimit, shared: Callable[[str, RateLimit], float],
                here: Callable[[str, RateLimit], float]) -> float:
        """`shared(caller, limit)` on the file; should the file fail, `here` on this process's buckets, warned."""
        try:
            return shared(caller, limit)
        except sqlite3.Error as err:
            log.warning("rate limits: the shared file %s failed (%s); counting in this process", self.path, err)
            return here(caller, limit)

    def _wait_shared(self, caller: str, limit: RateLimit) -> float:
        bucket = self._bucket(caller)
        return spend(bucket, self.clock(), limit)[1]  # the clock read after the row: never earlier than its time

    def _take_shared(self, caller: str, limit: RateLimit) -> float:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            now = self.clock()  # read holding the lock: the time saved by a process before is never later than now
            tokens, wait = spend(self._bucket(caller), now, limit)
            full_at = now + (limit.burst - tokens) / limit.requests_per_s
            self._db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?)", (caller, tokens, now, full_at))
            self._takes += 1
            if self._takes % PRUNE_EVERY == 0:
                self._db.execute("DELETE FROM buckets WHERE full_at <= ?", (now,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.rollback()
            raise
        return wait

    def _bucket(self, caller: str) -> tuple[float, float] | None:
        """`caller`'s saved bucket (tokens, time of its last request), or None when it has none (it is full)."""
        return self._db.execute("SELECT tokens, last FROM buckets WHERE caller = ?", (caller,)).fetchone()

    def close(self) -> None:
        self._db.close()


class BodyLimit(HttpMiddleware):
    """ASGI middleware: refuses a body over `max_bytes` with 413, by its Content-Length or while reading it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(scope, receive, send, length.isdigit())
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, True)
                return
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, too_large: bool) -> None:
        response = (error_response(413, f"request body over the limit of {self.max_bytes} bytes; send less",
                                   code="body_too_large") if too_large else
                    error_response(400, "Content-Length: not a number of bytes", param="Content-Length"))
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the already-read body once, then the client's own messages (e.g. disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
