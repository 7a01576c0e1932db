"""An expert behind any OpenAI-compatible `/v1/chat/completions` endpoint, called with httpx (no `openai` package).

Each attempt has a hard deadline; timeouts, connection errors, 429 and 5xx are retried with exponential backoff
(a Retry-After header is honoured up to one attempt's timeout); other 4xx fail at once, since sending the same
request again cannot help. The API key is read from the environment variable the config names, never from the
config itself.
"""

import asyncio
import os
from typing import Any

import httpx
from pydantic import BaseModel, Field, ValidationError

from mor.errors import check
from mor.system.experts.base import Expert, ExpertInfo
from mor.system.experts.confidence import from_logprobs
from mor.system.experts.errors import ExpertError
from mor.system.request import Answer, Cost, Request

# Confidence when the server returns no logprobs: a middling prior that says "unjudged", below what a
# verified tool answer (1.0) earns and above a guess.
DEFAULT_CONFIDENCE = 0.6


class _TokenLogprob(BaseModel):
    logprob: float


class _Logprobs(BaseModel):
    content: list[_TokenLogprob] | None = None


class _Message(BaseModel):
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _Choice(BaseModel):
    message: _Message
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class _Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Completion(BaseModel):
    """The parts of an OpenAI chat completion this adapter reads; other fields are ignored."""

    model: str = ""
    choices: list[_Choice] = Field(min_length=1)
    usage: _Usage = _Usage()


class OpenAIChatExpert(Expert):
    """A chat model served at `base_url` (the part before `/chat/completions`, e.g. `http://host:8000/v1`).

    `timeout_s` bounds each attempt (None: `info.timeout_s`); `retries` more attempts follow a retryable failure,
    the n-th after `backoff_s`·2ⁿ⁻¹ seconds. Prices are money per 1000 tokens. With `logprobs` the server is asked
    for token log-probabilities and confidence is their geometric-mean probability; without them (or when the
    server sends none) it is `default_confidence`. Pass `client` to share one httpx.AsyncClient among experts
    (it is then not closed by `aclose`).
    """

    def __init__(self, info: ExpertInfo, base_url: str, model: str, *, api_key_env: str | None = None,
                 timeout_s: float | None = None, retries: int = 2, backoff_s: float = 0.5, temperature: float = 0.0,
                 max_tokens: int | None = None, price_in: float = 0.0, price_out: float = 0.0, logprobs: bool = True,
                 default_confidence: float = DEFAULT_CONFIDENCE, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(info)
        where = f"expert {info.name}"
        check(base_url.startswith(("http://", "https://")),
              f"{where}: base_url must start with http:// or https://, got {base_url!r}")
        check(retries >= 0 and backoff_s >= 0, f"{where}: retries and backoff_s must be ≥ 0")
        check(price_in >= 0 and price_out >= 0, f"{where}: price_in and price_out must be ≥ 0")
        check(0 <= default_confidence <= 1, f"{where}: default_confidence must be in [0, 1]")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.retries, self.backoff_s = model, retries, backoff_s
        self.timeout_s = info.timeout_s if timeout_s is None else timeout_s
        check(self.timeout_s > 0, f"{where}: timeout_s must be > 0, got {self.timeout_s}")
        self.temperature, self.max_tokens, self.logprobs = temperature, max_tokens, logprobs
        self.price_in, self.price_out, self.default_confidence = price_in, price_out, default_confidence
        self._headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            check(bool(key), f"{where}: environment variable {api_key_env} (api_key_env) is not set; "
                             f"export the API key in it")
            self._headers["Authorization"] = f"Bearer {key}"
        self._client, self._owns_client = client, client is None

    def body(self, request: Request) -> dict[str, Any]:
        """The JSON body of the chat-completions call for `request` (OpenAI schema)."""
        body: dict[str, Any] = {"model": self.model, "messages": list(request.messages),
                                "temperature": self.temperature}
        if request.tools:
            body["tools"] = list(request.tools)
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.logprobs:
            body["logprobs"] = True
        return body

    async def _answer(self, request: Request) -> Answer:
        data, attempts = await self._post(self.body(request))
        try:
            completion = _Completion.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            raise ExpertError(f"expert {self.name}: {self.url} sent an invalid chat completion "
                              f"({'.'.join(map(str, first['loc']))}: {first['msg']}); is it OpenAI-compatible?"
                              ) from None
        choice, usage = completion.choices[0], completion.usage
        tokens = (choice.logprobs.content or []) if choice.logprobs else []
        details: dict[str, Any] = {"model": completion.model, "finish_reason": choice.finish_reason,
                                   "attempts": attempts}
        if choice.message.tool_calls:
            details["tool_calls"] = choice.message.tool_calls
        money = (usage.prompt_tokens * self.price_in + usage.completion_tokens * self.price_out) / 1000
        return Answer(expert=self.name, text=choice.message.content,
                      confidence=from_logprobs([t.logprob for t in tokens], self.default_confidence),
                      cost=Cost(tokens_in=usage.prompt_tokens, tokens_out=usage.completion_tokens, money=money),
                      details=details)

    async def _post(self, body: dict[str, Any]) -> tuple[Any, int]:
        """POST `body` with retries; the parsed JSON reply and the number of attempts it took."""
        client = self._http()
        for attempt in range(1, self.retries + 2):
            delay = self.backoff_s * 2 ** (attempt - 1)
            try:
                async with asyncio.timeout(self.timeout_s):
                    response = await client.post(self.url, json=body, headers=self._headers)
            except (TimeoutError, httpx.TimeoutException):
                reason = f"timed out after {self.timeout_s:g} s"
            except httpx.TransportError as err:
                reason = f"connection failed ({type(err).__name__}: {_snippet(str(err))})"
            else:
                if response.is_success:
                    return self._json(response), attempt
                reason = f"HTTP {response.status_code}: {_snippet(response.text)}"
                if response.status_code != 429 and response.status_code < 500:
                    raise ExpertError(f"expert {self.name}: POST {self.url} failed: {reason}; fix the request, "
                                      f"model name or API key")
                delay = max(delay, min(_retry_after(response), self.timeout_s))
            if attempt <= self.retries:
                await asyncio.sleep(delay)
        raise ExpertError(f"expert {self.name}: POST {self.url} failed after {self.retries + 1} attempt(s): "
                          f"{reason}; check the server, or raise timeout_s or retries")

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ExpertError(f"expert {self.name}: {self.url} replied with non-JSON "
                              f"({_snippet(response.text)}); is it an OpenAI-compatible endpoint?") from None

    def _http(self) -> httpx.AsyncClient:
        """The client, created on first use (inside the running event loop) and reused for every call."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None


def _retry_after(response: httpx.Response) -> float:
    """Seconds the server asks the client to wait (Retry-After in seconds), 0 when absent or not a number."""
    try:
        return max(0.0, float(response.headers.get("retry-after", 0)))
    except ValueError:
        return 0.0


def _snippet(text: str, limit: int = 200) -> str:
    """`text` on one line, cut to `limit` characters, for error messages."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "…"
