"""A tiny deterministic OpenAI-compatible chat server for tests, run by uvicorn in a background thread.

It checks every request body against the official `openai` package's request schema (422 when it does not
match), answers from `ANSWERS` or by echoing, reports usage and (when asked) logprobs, validates its own reply
against `openai`'s `ChatCompletion` model, and plays faults from a per-test script: "500", "429", "400",
"garbage" (a 200 that is not a completion) and "sleep:SECONDS" (then answer).
"""

import asyncio
import socket
import threading
import time
from collections import deque
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from openai.types.chat import ChatCompletion
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter, ValidationError

ANSWERS = {"What is the capital of France?": "Paris"}
TOKEN_LOGPROB = -0.25  # every answer token's log-probability, so tests know the confidence to expect
Params = CompletionCreateParamsNonStreaming
REQUEST_SCHEMA, REQUEST_KEYS = TypeAdapter(Params), Params.__required_keys__ | Params.__optional_keys__


class State:
    """What the server saw (bodies, headers) and the faults it still has to play, one per request."""

    def __init__(self) -> None:
        self.faults: deque[str] = deque()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def reset(self, *faults: str) -> None:
        self.faults, self.bodies, self.headers = deque(faults), [], []


def schema_error(body: Any) -> str | None:
    """Why `body` is not a valid non-streaming chat-completions request, or None when it is."""
    if not isinstance(body, dict):
        return "body is not an object"
    if unknown := set(body) - REQUEST_KEYS:
        return f"unknown fields {sorted(unknown)}"
    try:
        list(REQUEST_SCHEMA.validate_python(body)["messages"])  # messages validate lazily, when iterated
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
    words = (message["content"] or "").split()
    logprobs = ({"content": [{"token": w, "logprob": TOKEN_LOGPROB, "bytes": None, "top_logprobs": []}
                             for w in words], "refusal": None} if body.get("logprobs") else None)
    prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
             "choices": [{"index": 0, "message": message, "logprobs": logprobs,
                          "finish_reason": "tool_calls" if body.get("tools") else "stop"}],
             "usage": {"prompt_tokens": prompt, "completion_tokens": len(words),
                       "total_tokens": prompt + len(words)}}
    ChatCompletion.model_validate(reply)
    return reply


def create_app(state: State) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        state.bodies.append(body)
        state.headers.append(dict(request.headers))
        fault = state.faults.popleft() if state.faults else "ok"
        if fault.startswith("sleep:"):
            await asyncio.sleep(float(fault.removeprefix("sleep:")))
        if fault in ("500", "429", "400"):
            return JSONResponse({"error": {"message": f"injected {fault}"}}, status_code=int(fault),
                                headers={"retry-after": "0"} if fault == "429" else None)
        if fault == "garbage":
            return JSONResponse({"hello": "world"})
        if error := schema_error(body):
            return JSONResponse({"error": {"message": error}}, status_code=422)
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
