"""Request limits: a per-caller token bucket (429) and a request-body size limit (413) applied before routing."""

import time
from collections import OrderedDict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mor.serve.asgi import HttpMiddleware
from mor.serve.errors import error_response
from mor.serve.settings import RateLimit

MAX_CALLERS = 100_000  # buckets kept; the least recently seen are dropped (a dropped bucket refills in full)


class RateLimiter:
    """One token bucket per caller: `burst` requests at once, refilled at `requests_per_s`; None: unlimited."""

    def __init__(self, default: RateLimit | None, clock=time.monotonic) -> None:
        self.default, self.clock = default, clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, caller: str, limit: RateLimit | None = None) -> float:
        """Spend one token of `caller`'s bucket: 0 when allowed, else the seconds until a token is back."""
        limit = limit or self.default
        if limit is None:
            return 0.0
        now = self.clock()
        tokens, last = self.buckets.pop(caller, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - last) * limit.requests_per_s)
        allowed = tokens >= 1
        self.buckets[caller] = (tokens - allowed, now)
        if len(self.buckets) > MAX_CALLERS:
            self.buckets.popitem(last=False)
        return 0.0 if allowed else (1 - tokens) / limit.requests_per_s


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
