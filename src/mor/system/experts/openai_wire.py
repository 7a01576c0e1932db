"""The parts of OpenAI's chat-completions format the HTTP expert reads: whole completions and streamed chunks.

Other fields are ignored, and usage and its token counts may be absent or null (unknown), so the replies of any
OpenAI-compatible server validate.
"""

import logging
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from mor.system.experts.errors import ExpertError

log = logging.getLogger("mor.system")
WITHHELD = "its reply is in the server log"


class TokenLogprob(BaseModel):
    logprob: float


class Logprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class Message(BaseModel):
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class Choice(BaseModel):
    message: Message
    finish_reason: str | None = None
    logprobs: Logprobs | None = None


class Usage(BaseModel):
    """Token counts as the server reported them; None where it did not."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Completion(BaseModel):
    """A whole chat completion."""

    model: str = ""
    choices: list[Choice] = Field(min_length=1)
    usage: Usage | None = None


class FunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A fragment of one tool call; `index` says which call it continues."""

    index: int
    id: str | None = None
    type: str | None = None
    function: FunctionDelta | None = None


class ChunkDelta(BaseModel):
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    delta: ChunkDelta = ChunkDelta()
    finish_reason: str | None = None
    logprobs: Logprobs | None = None


class Chunk(BaseModel):
    """One server-sent event of a streamed completion; the usage comes in a last chunk without choices. A server
    whose generation fails mid-stream (OpenAI, vLLM) sends an event with an `error` instead."""

    model: str = ""
    choices: list[ChunkChoice] = []
    usage: Usage | None = None
    error: Any = None


Part = TypeVar("Part", Completion, Chunk)
NOUNS = {Completion: "chat completion", Chunk: "chat completion chunk"}


def parse(kind: type[Part], data: Any, where: str) -> Part:
    """`data` read as `kind`, or an ExpertError naming `where` it came from and the first field that does not fit."""
    try:
        return kind.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        raise ExpertError(f"{where} sent an invalid {NOUNS[kind]} ({'.'.join(map(str, first['loc']))}: "
                          f"{first['msg']}); is it OpenAI-compatible?") from None


def snippet(text: str, limit: int = 200) -> str:
    """`text` on one line, cut to `limit` characters, for error messages and the log."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "…"


def withheld(where: str, what: str, text: str) -> str:
    """Log `text`, what an upstream sent with failure `what`, and return the note that stands for it in error
    messages: its body may hold tracebacks, internal hosts or other tenants' details, so only operators see it."""
    log.warning("%s: %s; it sent: %s", where, what, snippet(text, 500))
    return WITHHELD
