"""POST /v1/chat/completions: the OpenAI chat API over the routing system, whole or streamed as server-sent events.

A streamed reply starts once its first delta (or the whole answer) is there, so a failure before any content gets
the error status and body a whole reply would. It sends the role, then the answer: passed through delta by delta
as the chosen expert makes it where the system can stream (see `MoRSystem.stream`), else the whole answer cut into
word-sized chunks; then a last chunk with the finish reason and the `mor` extension, the usage chunk when asked
for, and `data: [DONE]`. A failure after that sends an error event before `data: [DONE]` instead (counted in
`mor_stream_errors_total`).
"""

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from mor.errors import MorError
from mor.serve.auth import Caller
from mor.serve.errors import ApiError, documented, error_body, internal_error
from mor.serve.metrics import Metrics
from mor.serve.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    Delta,
    FinishReason,
    RouteRequest,
    Usage,
)
from mor.serve.service import ServiceDep
from mor.serve.views import extension
from mor.system.reply import Reply
from mor.system.request import Delta as SystemDelta
from mor.system.request import Request, as_tools

log = logging.getLogger("mor.serve")
router = APIRouter(tags=["chat"])
PATH = "/v1/chat/completions"
CHUNK_CHARS = 24  # about this many characters per streamed chunk
Part = SystemDelta | Reply  # what the service streams: deltas, then the reply
# A streamed reply, as server-sent events: each `data` is a ChatCompletionChunk's JSON, the last one `[DONE]`.
EVENT = {"type": "object", "required": ["data"],
         "properties": {"data": {"type": "string", "description": "a ChatCompletionChunk as JSON, or [DONE]"},
                        "event": {"type": "string"}}}
STREAM = {"description": "The completion, or with `stream: true` its chunks as server-sent events",
          "content": {"text/event-stream": {"schema": EVENT}}}


def to_request(body: ChatRequest | RouteRequest) -> Request:
    """The system's request (a legacy `functions` array read as tools), or a 400 saying what is wrong with it."""
    try:
        return Request(messages=tuple(m.as_dict() for m in body.messages),
                       tools=as_tools([t.model_dump(exclude_none=True) for t in body.tools or ()],
                                      [f.model_dump(exclude_none=True) for f in body.functions or ()]))
    except MorError as err:
        raise ApiError(400, str(err), param="messages") from None


@router.post(PATH, response_model=ChatCompletion,
             responses={200: STREAM, **documented(400, 401, 404, 413, 429, 502, 503)})
async def chat_completions(body: ChatRequest, caller: Caller,
                           service: ServiceDep) -> ChatCompletion | StreamingResponse:
    """Answer the conversation with the routed, reflected experts; `mor` in the reply says how."""
    system = service.chat_system(body.model)
    request = to_request(body)
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        parts = service.stream(system, request)
        first = await anext(parts)  # before the response starts: a failure here is a plain error response
        chunks = _stream(_resumed(first, parts), body.model, completion_id, created, usage)
        return StreamingResponse(_ended(chunks, completion_id, service.metrics), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    reply = await service.ask(system, request)
    calls = _tool_calls(reply)
    message = AssistantMessage(content=reply.answer.content or (None if calls else ""), tool_calls=calls)
    return ChatCompletion(id=completion_id, created=created, model=body.model, usage=_usage(reply),
                          mor=extension(reply), choices=[Choice(index=0, message=message,
                                                                finish_reason=finish_reason(reply, calls))])


def finish_reason(reply: Reply, calls: list | None) -> FinishReason:
    """Why the answer ended: its tool calls, else the upstream model's own reason where it is one a client acts on
    ("length": cut at its token limit; "content_filter"), else "stop"."""
    upstream = reply.answer.details.get("finish_reason")
    return "tool_calls" if calls else upstream if upstream in ("length", "content_filter") else "stop"


async def _resumed(first: Part, rest: AsyncIterator[Part]) -> AsyncIterator[Part]:
    """`first`, then the rest of the parts it was taken from."""
    yield first
    async for part in rest:
        yield part


async def _stream(parts: AsyncIterator[Part], model: str, completion_id: str, created: int,
                  usage: bool) -> AsyncIterator[str]:
    """The reply as server-sent events, all but the closing `data: [DONE]` (`_ended` adds it, or an error and it)."""
    def event(choices: list[ChunkChoice], **extra) -> str:
        chunk = ChatCompletionChunk(id=completion_id, created=created, model=model, choices=choices, **extra)
        return f"data: {chunk.model_dump_json()}\n\n"

    yield event([ChunkChoice(delta=Delta(role="assistant", content=""))])
    passed = False
    async for part in parts:
        if isinstance(part, Reply):
            reply = part
        else:
            passed = True
            yield event([ChunkChoice(delta=Delta(content=part.text or None, tool_calls=part.tool_calls or None))])
    calls = _tool_calls(reply)
    if not passed:
        for piece in pieces(reply.answer.content):
            yield event([ChunkChoice(delta=Delta(content=piece))])
        if calls:
            yield event([ChunkChoice(delta=Delta(tool_calls=[{"index": i, **c} for i, c in enumerate(calls)]))])
    yield event([ChunkChoice(delta=Delta(), finish_reason=finish_reason(reply, calls))], mor=extension(reply))
    if usage:
        yield event([], usage=_usage(reply))


async def _ended(chunks: AsyncIterator[str], completion_id: str, metrics: Metrics) -> AsyncIterator[str]:
    """`chunks`, then `data: [DONE]`; a failure on the way (its 200 already sent) ends them with an error event, the
    body a whole reply would have got: an ApiError's own, else a 500's, with the traceback in the server log; it is
    counted by its code, as the request's status no longer can."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as err:
        if not isinstance(err, ApiError):
            log.exception("chat completion %s: the stream failed", completion_id)
            err = internal_error()
        metrics.stream_errors.labels(PATH, err.code or str(err.status)).inc()
        yield f"data: {error_body(err).model_dump_json()}\n\n"
    yield "data: [DONE]\n\n"


def pieces(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """`text` cut between words into pieces of about `size` characters; joined, they give `text` back."""
    out, current = [], ""
    for word in re.split(r"(?<=\s)(?=\S)", text):
        current += word
        if len(current) >= size:
            out.append(current)
            current = ""
    return [*out, current] if current else out


def _usage(reply: Reply) -> Usage:
    cost = reply.cost
    return Usage(prompt_tokens=cost.tokens_in, completion_tokens=cost.tokens_out,
                 total_tokens=cost.tokens_in + cost.tokens_out)


def _tool_calls(reply: Reply) -> list[dict] | None:
    """Tool calls an LLM expert asked for, passed on to the client to run."""
    calls = reply.answer.details.get("tool_calls")
    return [dict(c) for c in calls] if calls else None
