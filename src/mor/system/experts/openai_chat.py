"""An expert behind any OpenAI-compatible `/v1/chat/completions` endpoint, called with httpx (no `openai` package).

Each attempt has a hard deadline; timeouts, connection errors, 408, 409, 429 and 5xx are retried with exponential
backoff, as the official `openai` client retries them (a Retry-After header, in seconds or as an HTTP date, is
honoured up to one attempt's timeout); other 4xx fail at once, since sending the same
request again cannot help. Of those, 400, 413 and 422 say the request does not fit the endpoint (longer than the
model's context, malformed messages or tools): they raise a RequestError, which the system does not count against
the expert's health. The whole call's bound, `deadline_s`, covers every attempt and every wait between them,
so a system that bounds the call by it leaves room for the retries. A streamed call (`stream`) is an attempt up to
its first delta, retried the same way; after that the server may take up to the timeout between chunks, and a
failure ends the stream; so does an error event. A reply with neither text nor tool calls (filtered, or out of
tokens) is an ExpertError too, so the system falls back. A reply without usage is priced from what it reported and
marked `details["usage"] = "missing"`. The API key is read from the environment variable the config names, never from
the config itself; base_url and the key are checked when the expert is made.
"""

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, TypeVar

import httpx

from mor.errors import check
from mor.redact import redact, remember
from mor.system.experts.base import Expert, ExpertInfo
from mor.system.experts.confidence import from_logprobs
from mor.system.experts.errors import EndpointRefusal, ExpertError, RequestError
from mor.system.experts.openai_stream import StreamedCompletion
from mor.system.experts.openai_wire import Completion, Usage, parse, snippet, withheld
from mor.system.request import Answer, Cost, Delta, Request

# Confidence when the server returns no logprobs: a middling prior that says "unjudged", below what a
# verified tool answer (1.0) earns and above a guess.
DEFAULT_CONFIDENCE = 0.6
# Statuses that blame the request (malformed, too large, past the model's context), not the endpoint.
REQUEST_STATUSES = frozenset({400, 413, 422})
# Statuses below 500 that ask to try again: request timeout, conflict (a lock), too many requests.
RETRY_STATUSES = frozenset({408, 409, 429})
Result = TypeVar("Result")
log = logging.getLogger("mor.system")


class _Retryable(Exception):
    """A failed response worth sending again, and how long the server asked to wait first."""

    def __init__(self, reason: str, wait_s: float) -> None:
        super().__init__(reason)
        self.wait_s = wait_s


class OpenAIChatExpert(Expert):
    """A chat model served at `base_url` (the part before `/chat/completions`, e.g. `http://host:8000/v1`).

    `timeout_s` bounds each attempt (None: `info.timeout_s`); `retries` more attempts follow a retryable failure,
    the n-th after `backoff_s`·2ⁿ⁻¹ seconds. Prices are money per 1000 tokens. With `logprobs` the server is asked
    for token log-probabilities and confidence is their geometric-mean probability; without them (or when the
    server sends none) it is `default_confidence`. Pass `client` to share one httpx.AsyncClient among experts
    (it is then not closed by `aclose`, and `timeout_s` still bounds each request, whatever the client's own timeout);
    an own client is made in each event loop that uses the expert.
    """

    def __init__(self, info: ExpertInfo, base_url: str, model: str, *, api_key_env: str | None = None,
                 timeout_s: float | None = None, retries: int = 2, backoff_s: float = 0.5, temperature: float = 0.0,
                 max_tokens: int | None = None, price_in: float = 0.0, price_out: float = 0.0, logprobs: bool = True,
                 default_confidence: float = DEFAULT_CONFIDENCE, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(info)
        where = f"expert {info.name}"
        problem = _url_problem(base_url)
        check(problem is None, f"{where}: base_url {problem}, got {base_url!r}; write it as "
                               f"http(s)://host[:port]/path, e.g. http://localhost:8000/v1")
        check(retries >= 0 and backoff_s >= 0, f"{where}: retries and backoff_s must be ≥ 0")
        check(price_in >= 0 and price_out >= 0, f"{where}: price_in and price_out must be ≥ 0")
        check(0 <= default_confidence <= 1, f"{where}: default_confidence must be in [0, 1]")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._where = f"{where}: {self.url}"
        self.model, self.retries, self.backoff_s = model, retries, backoff_s
        self.timeout_s = info.timeout_s if timeout_s is None else timeout_s
        check(self.timeout_s > 0, f"{where}: timeout_s must be > 0, got {self.timeout_s}")
        self.temperature, self.max_tokens, self.logprobs = temperature, max_tokens, logprobs
        self.price_in, self.price_out, self.default_confidence = price_in, price_out, default_confidence
        self._headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env, "").strip()  # a key read from a file keeps its newline
            check(bool(key), f"{where}: environment variable {api_key_env} (api_key_env) is not set or empty; "
                             f"export the API key in it")
            check(all("!" <= c <= "~" for c in key), f"{where}: the API key in environment variable {api_key_env} "
                  f"(api_key_env) holds whitespace, control or non-ASCII characters; set it to the key alone")
            remember(key)
            self._headers["Authorization"] = f"Bearer {key}"
        self._client, self._owns_client = client, client is None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warned_usage = False

    @property
    def deadline_s(self) -> float:
        """Every attempt's timeout plus the longest wait before each retry: its backoff, or a Retry-After of up to
        one attempt's timeout."""
        waits = sum(max(self.backoff_s * 2 ** n, self.timeout_s) for n in range(self.retries))
        return self.timeout_s * (self.retries + 1) + waits

    def body(self, request: Request, stream: bool = False) -> dict[str, Any]:
        """The JSON body of the chat-completions call for `request` (OpenAI schema); `stream` asks for server-sent
        events with a last usage chunk."""
        body: dict[str, Any] = {"model": self.model, "messages": list(request.messages),
                                "temperature": self.temperature}
        if request.tools:
            body["tools"] = list(request.tools)
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.logprobs:
            body["logprobs"] = True
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    async def _answer(self, request: Request) -> Answer:
        completion, attempts = await self._retried(partial(self._post, self.body(request)))
        return self._made(completion, attempts)

    async def stream(self, request: Request) -> AsyncIterator[Delta | Answer]:
        """The answer as the server streams it: each text or tool-call delta, then the whole Answer. Failures before
        the first delta are retried like `answer`'s; after it, nothing can be taken back, so they raise at once."""
        start = time.perf_counter()
        (reply, delta), attempts = await self._retried(partial(self._open, self.body(request, stream=True)))
        try:
            while delta is not None:
                yield delta
                delta = await self._next(reply)
        finally:
            await reply.response.aclose()
        yield self._priced(self._made(reply.whole(), attempts), start)

    def _made(self, completion: Completion, attempts: int) -> Answer:
        """The Answer a completion gives: its text or tool calls, logprob confidence, tokens and money. A completion
        with neither text nor tool calls raises an ExpertError, so the system falls back (a RequestError when the
        endpoint's filter emptied it, which is no fault of the expert's)."""
        choice = completion.choices[0]
        if not (choice.message.content or "").strip() and not choice.message.tool_calls:
            filtered = choice.finish_reason == "content_filter"  # the request's doing, not the expert's health
            raise (RequestError if filtered else ExpertError)(
                f"expert {self.name}: the endpoint returned no content (finish_reason {choice.finish_reason}); "
                f"{'rephrase the request' if filtered else 'raise max_tokens if it ran out'}")
        tokens = (choice.logprobs.content or []) if choice.logprobs else []
        details: dict[str, Any] = {"model": completion.model, "finish_reason": choice.finish_reason,
                                   "attempts": attempts}
        if choice.message.tool_calls:
            details["tool_calls"] = choice.message.tool_calls
        return Answer(expert=self.name, text=choice.message.content,
                      confidence=from_logprobs([t.logprob for t in tokens], self.default_confidence),
                      cost=self._cost(completion.usage or Usage(), details), details=details)

    def _cost(self, usage: Usage, details: dict[str, Any]) -> Cost:
        """Tokens and money from the counts the server reported. When it left one out, the cost is unknown: what it
        did report is kept, `details["usage"]` says "missing", and the first time a warning is logged."""
        if usage.prompt_tokens is None or usage.completion_tokens is None:
            details["usage"] = "missing"
            if not self._warned_usage:
                self._warned_usage = True
                log.warning("%s: the endpoint did not report its token usage, so this expert's cost is unknown "
                            "(missing counts are taken as 0); have the server report usage", self._where)
        tokens_in, tokens_out = usage.prompt_tokens or 0, usage.completion_tokens or 0
        return Cost(tokens_in=tokens_in, tokens_out=tokens_out,
                    money=(tokens_in * self.price_in + tokens_out * self.price_out) / 1000)

    async def _retried(self, attempt: Callable[[], Awaitable[Result]]) -> tuple[Result, int]:
        """`attempt()`'s result and the number of attempts it took: each attempt has `timeout_s`; timeouts,
        connection errors, 408, 409, 429 and 5xx are retried with backoff, other errors raise at once."""
        for number in range(1, self.retries + 2):
            delay = self.backoff_s * 2 ** (number - 1)
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await attempt(), number
            except (TimeoutError, httpx.TimeoutException):
                reason = f"timed out after {self.timeout_s:g} s"
            except (httpx.LocalProtocolError, httpx.UnsupportedProtocol) as err:  # the same request fails the same way
                raise ExpertError(f"expert {self.name}: POST {self.url} could not be sent ({type(err).__name__}: "
                                  f"{snippet(redact(str(err)))}); check base_url and the client's headers") from None
            except httpx.TransportError as err:
                reason = f"connection failed ({type(err).__name__}: {snippet(str(err))})"
            except _Retryable as err:
                reason, delay = str(err), max(delay, err.wait_s)
            if number <= self.retries:
                await asyncio.sleep(delay)
        raise ExpertError(f"expert {self.name}: POST {self.url} failed after {self.retries + 1} attempt(s): "
                          f"{reason}; check the server, or raise timeout_s or retries")

    async def _post(self, body: dict[str, Any]) -> Completion:
        """One attempt at a whole completion."""
        response = await self._http().post(self.url, json=body, headers=self._headers, timeout=self.timeout_s)
        self._check(response)
        return parse(Completion, self._json(response), self._where)

    async def _open(self, body: dict[str, Any]) -> tuple[StreamedCompletion, Delta | None]:
        """One attempt at a streamed completion: the stream, read up to its first delta (None: it had none)."""
        client = self._http()
        request = client.build_request("POST", self.url, json=body, headers=self._headers, timeout=self.timeout_s)
        response = await client.send(request, stream=True)
        try:
            if not response.is_success:
                await response.aread()
            self._check(response)
            reply = StreamedCompletion(response, self._where)
            return reply, await reply.next_delta()
        except BaseException:
            await response.aclose()
            raise

    async def _next(self, reply: StreamedCompletion) -> Delta | None:
        """The stream's next delta, waiting at most `timeout_s` for it; deltas were passed on, so a failure now
        ends the answer."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await reply.next_delta()
        except TimeoutError:
            reason = f"nothing came for {self.timeout_s:g} s"
        except httpx.TransportError as err:
            reason = f"{type(err).__name__}: {snippet(str(err))}"
        raise ExpertError(f"expert {self.name}: the stream from {self.url} failed mid-way ({reason})")

    def _check(self, response: httpx.Response) -> None:
        """Raise for a failed response: `_Retryable` for 408, 409, 429 and 5xx; RequestError for 400, 413 and 422
        (this request does not fit the endpoint) and ExpertError for other 4xx, neither retried (sending the same
        request again cannot help). The reply's body is logged, never put in the error."""
        if response.is_success:
            return
        status = f"HTTP {response.status_code}"
        reason = f"{status} ({withheld(self._where, status, response.text)})"
        failed = f"expert {self.name}: POST {self.url} failed: {reason}"
        if response.status_code in REQUEST_STATUSES:
            raise EndpointRefusal(f"{failed}; the endpoint refused this request (too long for the model's context, or "
                               f"malformed messages or tools): shorten or fix the request")
        if response.status_code not in RETRY_STATUSES and response.status_code < 500:
            raise ExpertError(f"{failed}; check the model name, base_url and API key")
        raise _Retryable(reason, min(_retry_after(response), self.timeout_s))

    def _json(self, response: httpx.Response) -> Any:
        """The reply's JSON; what a reply that is not JSON holds goes to the log, not into the error."""
        try:
            return response.json()
        except ValueError:
            failure = "replied with non-JSON"
            raise ExpertError(f"{self._where} {failure} ({withheld(self._where, failure, response.text)}); is it "
                              f"an OpenAI-compatible endpoint?") from None

    def _http(self) -> httpx.AsyncClient:
        """The client. An own one is created on first use in each event loop, since its pooled connections belong
        to the loop that opened them; one left from an earlier loop is dropped, as it cannot be closed from here."""
        loop = asyncio.get_running_loop()
        if self._owns_client and self._loop is not loop:
            self._client, self._loop = httpx.AsyncClient(), loop
        return self._client

    async def aclose(self) -> None:
        """Close the own client (when made in this event loop; one from an earlier loop is dropped)."""
        if self._owns_client:
            client, loop, self._client, self._loop = self._client, self._loop, None, None
            if client is not None and loop is asyncio.get_running_loop():
                await client.aclose()
        await super().aclose()


def _url_problem(base_url: str) -> str | None:
    """What makes `base_url` unusable for HTTP requests, or None when nothing does: httpx would only find out per
    request, as a retried connection failure or a bare exception."""
    if any(c.isspace() or not c.isprintable() for c in base_url):
        return "holds whitespace or control characters"
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as err:
        return f"is not a URL ({err})"
    if url.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not url.host:
        return "names no host"
    if url.port is not None and not 0 <= url.port <= 65535:
        return f"has port {url.port}, outside 0-65535"
    return None


def _retry_after(response: httpx.Response) -> float:
    """Seconds the server asks the client to wait (Retry-After, in seconds or as an HTTP date); 0 when absent,
    past or unreadable."""
    value = response.headers.get("retry-after", "0")
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    when = when if when.tzinfo else when.replace(tzinfo=UTC)  # HTTP dates are in GMT
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
