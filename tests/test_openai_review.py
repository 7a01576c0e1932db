"""OpenAIChatExpert against replies real servers send but the fake server does not play: an error event mid-stream,
a completion with no content, null or missing usage; and the settings it checks when made (base_url, API key) or
must honour whatever the client (a shared client's timeout)."""

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from fake_llm_server import LEAK, Server
from mor.errors import ConfigError
from mor.system import ExpertInfo, Request
from mor.system.experts.errors import ExpertError, RequestError
from mor.system.experts.openai_chat import OpenAIChatExpert

USAGE = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
FAILED = {"error": {"message": f"CUDA out of memory: {LEAK}", "type": "InternalServerError", "code": 500}}


def completion(content: str | None = "Paris", finish: str = "stop", **extra: Any) -> dict[str, Any]:
    """A whole chat completion, with usage unless `extra` replaces or drops it (usage=...)."""
    reply = {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "usage": USAGE,
             "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}]}
    return {**reply, **extra}


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    """One streamed chunk carrying `content` and/or `finish`."""
    delta = {} if content is None else {"content": content}
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class Scripted:
    """A real HTTP server that sends the replies queued in `replies`, one per request: a dict as a JSON body, a list
    as server-sent events (dicts as JSON, strings as they are)."""

    def __init__(self) -> None:
        self.replies: deque[dict | list] = deque()
        app = FastAPI()

        @app.post("/v1/chat/completions", response_model=None)
        async def chat() -> JSONResponse | StreamingResponse:
            reply = self.replies.popleft()
            if isinstance(reply, dict):
                return JSONResponse(reply)
            events = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in reply]
            return StreamingResponse(iter(events), media_type="text/event-stream")

        self.server = Server(app)
        self.url = self.server.url


@pytest.fixture(scope="module")
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    with server.server:
        yield server


def expert(url: str, **options: Any) -> OpenAIChatExpert:
    options = {"retries": 0, "timeout_s": 2.0, **options}
    return OpenAIChatExpert(ExpertInfo("llm"), url, "m", **options)


def answered(llm: OpenAIChatExpert, *streams: bool) -> Any:
    """The Answer to one request per entry of `streams` (streamed where True; one whole request when none), then close
    the client; one Answer for one request, else their list. Never waits more than 10 s."""
    async def go():
        try:
            return [[piece async for piece in llm.stream(Request.of("q"))][-1] if stream
                    else await llm.answer(Request.of("q")) for stream in streams or (False,)]
        finally:
            await llm.aclose()
    answers = asyncio.run(asyncio.wait_for(go(), timeout=10))
    return answers[0] if len(answers) == 1 else answers


def failure(llm: OpenAIChatExpert, stream: bool = False) -> str:
    """The one-line ExpertError one request raises."""
    with pytest.raises(ExpertError) as caught:
        answered(llm, stream)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("expert llm: "), message
    return message


@pytest.mark.parametrize("events", [[chunk("The answer is"), FAILED, "[DONE]"], [FAILED, "[DONE]"]],
                         ids=["after a delta", "as the only event"])
def test_an_error_event_in_the_stream_is_an_expert_error_that_logs_what_it_said(scripted, caplog, events):
    scripted.replies.append(events)
    with caplog.at_level(logging.WARNING, logger="mor.system"):
        message = failure(expert(scripted.url), stream=True)
    assert f"{scripted.url}/chat/completions sent an error event after {len(events) - 2} delta(s)" in message
    assert LEAK not in message and "its reply is in the server log" in message
    assert any(LEAK in r.getMessage() for r in caplog.records if r.name == "mor.system")


@pytest.mark.parametrize(("reply", "stream", "finish"), [
    (completion(None, "content_filter"), False, "content_filter"), (completion("", "length"), False, "length"),
    ([chunk(""), chunk(finish="content_filter"), "[DONE]"], True, "content_filter"),
], ids=["filtered", "out of tokens", "streamed"])
def test_a_reply_with_neither_text_nor_tool_calls_is_an_expert_error(scripted, reply, stream, finish):
    """An error the system falls back from; a filter's refusal is the request's (RequestError), not the expert's."""
    scripted.replies.append(reply)
    with pytest.raises(ExpertError) as caught:
        answered(expert(scripted.url), stream)
    assert f"expert llm: the endpoint returned no content (finish_reason {finish})" in str(caught.value)
    assert isinstance(caught.value, RequestError) == (finish == "content_filter")


@pytest.mark.parametrize(("usage", "tokens"), [(None, (0, 0)), ({"prompt_tokens": 3, "completion_tokens": None},
                                                                  (3, 0))], ids=["usage null", "a null count"])
def test_null_usage_or_null_counts_are_unknown_not_invalid(scripted, usage, tokens):
    scripted.replies.append(completion(usage=usage))
    answer = answered(expert(scripted.url, price_in=1000.0))
    assert answer.text == "Paris" and (answer.cost.tokens_in, answer.cost.tokens_out) == tokens
    assert answer.cost.money == pytest.approx(tokens[0]) and answer.details["usage"] == "missing"


def test_missing_usage_is_marked_on_each_answer_and_warned_once_per_expert(scripted, caplog):
    without = completion()
    del without["usage"]
    scripted.replies.extend([without, [chunk("Paris", "stop"), "[DONE]"], completion(), without])
    llm = expert(scripted.url, price_out=2.0)
    with caplog.at_level(logging.WARNING, logger="mor.system"):
        answers = answered(llm, False, True, False)
        later = answered(expert(scripted.url))
    assert [a.details.get("usage") for a in [*answers, later]] == ["missing", "missing", None, "missing"]
    assert [(a.cost.tokens_out, a.cost.money) for a in answers] == [(0, 0.0), (0, 0.0), (1, pytest.approx(0.002))]
    warned = [r.getMessage() for r in caplog.records if "did not report its token usage" in r.getMessage()]
    assert len(warned) == 2 and all(m.startswith("expert llm: ") for m in warned)


@pytest.mark.parametrize(("fault", "stream"), [("sleep:0.5", False), ("drip:0.3", True)], ids=["answer", "stream"])
def test_timeout_s_wins_over_a_shared_clients_shorter_timeout(llm_server, fault, stream):
    llm_server.state.reset(fault)

    async def go():
        async with httpx.AsyncClient(timeout=0.1) as client:
            llm = OpenAIChatExpert(ExpertInfo("llm"), llm_server.url, "tiny-model", retries=0, timeout_s=2.0,
                                   client=client)
            if stream:
                return [piece async for piece in llm.stream(Request.of("What is the capital of France?"))][-1]
            return await llm.answer(Request.of("What is the capital of France?"))
    assert asyncio.run(asyncio.wait_for(go(), timeout=10)).text == "Paris"


def test_an_api_key_read_with_its_newline_is_stripped(llm_server, monkeypatch):
    llm_server.state.reset()
    monkeypatch.setenv("MOR_REVIEW_KEY", "  sk-review-0123456789\r\n")
    assert answered(expert(llm_server.url, api_key_env="MOR_REVIEW_KEY")).text.startswith("echo")
    assert llm_server.state.headers[0]["authorization"] == "Bearer sk-review-0123456789"


@pytest.mark.parametrize("key", ["sk-review 0123456789", "sk-review\n0123456789", "sk-review\x1b0123456789",
                                 "sk-review…0123456789"])
def test_an_api_key_with_whitespace_or_control_characters_inside_is_refused_unquoted(monkeypatch, key):
    monkeypatch.setenv("MOR_REVIEW_KEY", key)
    with pytest.raises(ConfigError, match="MOR_REVIEW_KEY") as caught:
        expert("http://localhost:8000/v1", api_key_env="MOR_REVIEW_KEY")
    message = str(caught.value)
    assert "\n" not in message and "0123456789" not in message and "set it to the key alone" in message


def test_a_request_httpx_cannot_send_fails_at_once_without_the_key(llm_server):
    """A header h11 refuses fails the same way every time: retrying it (here for 10 s of backoff) cannot help."""
    async def go():
        async with httpx.AsyncClient(headers={"authorization": "Bearer sk-review-0123456789\n"}) as client:
            llm = OpenAIChatExpert(ExpertInfo("llm"), llm_server.url, "m", retries=2, backoff_s=5.0, client=client)
            return await llm.answer(Request.of("q"))
    start = time.perf_counter()
    with pytest.raises(ExpertError, match="could not be sent \\(LocalProtocolError") as caught:
        asyncio.run(asyncio.wait_for(go(), timeout=3))
    assert time.perf_counter() - start < 2 and "0123456789" not in str(caught.value)


@pytest.mark.parametrize(("url", "problem"), [
    ("http://localhost:99999/v1", "has port 99999, outside 0-65535"), ("http://localhost:-1/v1", "has port -1"),
    ("http://localhost:port/v1", "is not a URL"), ("http:// localhost:8000/v1", "holds whitespace"),
    ("https://api.example.com/v1 ", "holds whitespace"), ("http://", "names no host"),
    ("ftp://files.example.com/v1", "must start with http:// or https://"),
])
def test_a_base_url_that_cannot_work_is_refused_when_the_expert_is_made(url, problem):
    with pytest.raises(ConfigError) as caught:
        expert(url)
    message = str(caught.value)
    assert message.startswith(f"expert llm: base_url {problem}") and repr(url) in message and "\n" not in message
    assert "e.g. http://localhost:8000/v1" in message


@pytest.mark.parametrize("url", ["http://[::1]:8000/v1", "https://api.example.com/v1/", "http://localhost:0/v1"])
def test_a_usable_base_url_is_kept(url):
    assert expert(url).url == url.rstrip("/") + "/chat/completions"
