"""A tiny deterministic OpenAI-compatible chat server for tests, run by uvicorn in a background thread.

It checks every request body against the official `openai` package's request schema (422 when it does not
match), answers from `ANSWERS` or by echoing, reports usage and (when asked) logprobs, validates its own reply
against `openai`'s `ChatCompletion` model, and plays faults from a per-test script: "500", "429", "408", "400",
"401", "413", "garbage" (a 200 that is not a completion), "html" (a 200 that is not JSON) and "sleep:SECONDS" (then
answer). The bodies of the HTTP statuses and "html" carry `LEAK`, a stand-in for an upstream's internal details.

With `"stream": true` it sends the same reply as server-sent `ChatCompletionChunk`s (validated too): the role, one
chunk per word, the tool call in two fragments, the finish reason, the usage when `stream_options` asks for it, then
`data: [DONE]`. Stream faults: "drip:SECONDS" (wait that long before each chunk after the role), "cut:N" (drop the
connection after N chunks after the role), "stall:N" (send nothing more after N chunks after the role) and "junk:N"
(after N chunks after the role, an event that is not JSON and carries `LEAK`, and the end of the stream).
"""

import asyncio
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from pydantic import TypeAdapter, ValidationError

ANSWERS = {"What is the capital of France?": "Paris"}
TOKEN_LOGPROB = -0.25  # every answer token's log-probability, so tests know the confidence to expect
LEAK = "Traceback at db-7.internal, tenant acme"  # in failure bodies: must reach the log, never a client
STATUSES = ("500", "429", "408", "400", "401", "413")  # the faults that are an error status with that code
SCHEMAS = {stream: TypeAdapter(params) for stream, params in ((False, CompletionCreateParamsNonStreaming),
                                                             (True, CompletionCreateParamsStreaming))}
REQUEST_KEYS = {key for params in (CompletionCreateParamsNonStreaming, CompletionCreateParamsStreaming)
                for key in params.__required_keys__ | params.__optional_keys__}


class State:
    """What the server saw (bodies, headers) and the faults it still has to play, one per request."""

    def __init__(self) -> None:
        self.faults: deque[str] = deque()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def reset(self, *faults: str) -> None:
        self.faults, self.bodies, self.headers = deque(faults), [], []


def schema_error(body: Any) -> str | None:
    """Why `body` is not a valid chat-completions request (streaming or not), or None when it is."""
    if not isinstance(body, dict):
        return "body is not an object"
    if unknown := set(body) - REQUEST_KEYS:
        return f"unknown fields {sorted(unknown)}"
    try:
        list(SCHEMAS[body.get("stream") is True].validate_python(body)["messages"])  # messages validate lazily
    except ValidationError as err:
        return str(err).splitlines()[0]
    return None


def completion(body: dict[str, Any]) -> dict[str, Any]:
    """The reply to a valid request: a tool call when tools were sent, else the canned answer or an echo."""
    question = body["messages"][-1]["content"]
    message: dict[str, Any] = {"role": "assistant", "content": ANSWERS.get(question, f"echo: {question}")}
    if body.get("tools"):
        call = {"id": "call_1", "type": "function",
                "function": {"name": body["tools"][0]["function"]["name"], "arguments": "{}"}}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
    words, finish = (message["content"] or "").split(), "tool_calls" if body.get("tools") else "stop"
    if body.get("max_tokens") and len(words) > body["max_tokens"]:  # cut at the limit, as a model would be
        words, finish = words[:body["max_tokens"]], "length"
        message["content"] = " ".join(words)
    logprobs = ({"content": [{"token": w, "logprob": TOKEN_LOGPROB, "bytes": None, "top_logprobs": []}
                             for w in words], "refusal": None} if body.get("logprobs") else None)
    prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
             "choices": [{"index": 0, "message": message, "logprobs": logprobs,
                          "finish_reason": finish}],
             "usage": {"prompt_tokens": prompt, "completion_tokens": len(words),
                       "total_tokens": prompt + len(words)}}
    ChatCompletion.model_validate(reply)
    return reply


def chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The reply to a valid streaming request, as the chunks OpenAI would stream (see the module docstring)."""
    whole = completion(body)
    choice = whole["choices"][0]
    message, logprobs = choice["message"], choice["logprobs"]

    def chunk(delta: dict[str, Any], token: dict[str, Any] | None = None, finish: str | None = None) -> dict:
        return {"id": whole["id"], "object": "chat.completion.chunk", "created": 0, "model": whole["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                             "logprobs": {"content": [token], "refusal": None} if token else None}]}

    words = re.findall(r"\s*\S+", message["content"] or "")
    tokens = logprobs["content"] if logprobs else [None] * len(words)
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": word}, token) for word, token in zip(words, tokens, strict=True)]
    for index, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        out.append(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function", "function": {
            "name": call["function"]["name"], "arguments": arguments[:1]}}]}))
        out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[1:]}}]}))
    out.append(chunk({}, finish=choice["finish_reason"]))
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append({**chunk({}), "choices": [], "usage": whole["usage"]})
    for each in out:
        ChatCompletionChunk.model_validate(each)
    return out


class Cut(Exception):
    """Raised inside a streamed reply to drop the connection mid-way, as a crashed upstream would."""


async def events(parts: list[dict[str, Any]], fault: str) -> AsyncIterator[str]:
    """`parts` as server-sent events, then `data: [DONE]`, with the stream fault `fault` played."""
    kind, _, value = fault.partition(":")
    for sent, part in enumerate(parts):
        if sent and kind == "drip":
            await asyncio.sleep(float(value))
        if kind in ("cut", "stall", "junk") and sent == int(value) + 1:
            if kind == "cut":
                raise Cut(f"dropped after {value} chunk(s)")
            if kind == "junk":
                yield f"data: <html>{LEAK}</html>\n\n"
                return
            await asyncio.sleep(3600)
        yield f"data: {json.dumps(part)}\n\n"
    yield "data: [DONE]\n\n"


def create_app(state: State) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> JSONResponse | StreamingResponse:
        body = await request.json()
        state.bodies.append(body)
        state.headers.append(dict(request.headers))
        fault = state.faults.popleft() if state.faults else "ok"
        if fault.startswith("sleep:"):
            await asyncio.sleep(float(fault.removeprefix("sleep:")))
        if fault in STATUSES:
            return JSONResponse({"error": {"message": f"injected {fault}: {LEAK}"}}, status_code=int(fault),
                                headers={"retry-after": "0"} if fault == "429" else None)
        if fault == "garbage":
            return JSONResponse({"hello": "world"})
        if fault == "html":
            return HTMLResponse(f"<html><pre>{LEAK}</pre></html>")
        if error := schema_error(body):
            return JSONResponse({"error": {"message": error}}, status_code=422)
        if body.get("stream"):
            return StreamingResponse(events(chunks(body), fault), media_type="text/event-stream")
        return JSONResponse(completion(body))

    return app


class Server:
    """uvicorn serving `app` on a free loopback port in a daemon thread; a context manager that stops it cleanly."""

    def __init__(self, app: FastAPI) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/v1"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("fake LLM server did not start within 10 s")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()
