"""A chat completion streamed as server-sent events: read event by event from an httpx response, each delta passed
on and folded into the whole completion (text, tool calls, logprobs, usage, finish reason). An error event (the
server's generation failed) ends the stream with an ExpertError, so a cut-short answer is never taken as whole."""

import json

import httpx

from mor.system.experts.errors import ExpertError
from mor.system.experts.openai_wire import (
    Choice,
    Chunk,
    Completion,
    Logprobs,
    Message,
    TokenLogprob,
    ToolCallDelta,
    Usage,
    parse,
    withheld,
)
from mor.system.request import Delta

DONE = "[DONE]"


class StreamedCompletion:
    """One streamed reply being read from `response`; `where` names its source in error messages."""

    def __init__(self, response: httpx.Response, where: str) -> None:
        self.response, self.where = response, where
        self.deltas = 0
        self._lines = response.aiter_lines()
        self._text: list[str] = []
        self._calls: dict[int, dict] = {}
        self._logprobs: list[float] = []
        self._usage: Usage | None = None
        self._model, self._finish = "", None

    async def next_delta(self) -> Delta | None:
        """The next delta that carries text or tool calls; None once the stream has ended with `data: [DONE]`. An
        error event raises an ExpertError; what it said goes to the log, not into the error."""
        while (data := await self._event()) != DONE:
            try:
                event = json.loads(data)
            except ValueError:
                failure = "sent an event that is not JSON"
                raise ExpertError(f"{self.where} {failure} ({withheld(self.where, failure, data)}); is it "
                                  f"OpenAI-compatible?") from None
            chunk = parse(Chunk, event, self.where)
            if chunk.error is not None:
                failure = f"sent an error event after {self.deltas} delta(s)"
                raise ExpertError(f"{self.where} {failure} ({withheld(self.where, failure, data)}): its answer was cut "
                                  f"short; check the server")
            if delta := self._fold(chunk):
                self.deltas += 1
                return delta
        return None

    async def _event(self) -> str:
        """The next server-sent event's data (its `data:` lines joined); comments and other fields are skipped."""
        data: list[str] = []
        async for line in self._lines:
            if line.startswith("data:"):
                data.append(line.removeprefix("data:").removeprefix(" "))
            elif not line and data:
                break
        if not data:
            raise ExpertError(f"{self.where}: the stream ended without data: {DONE} after {self.deltas} delta(s)")
        return "\n".join(data)

    def _fold(self, chunk: Chunk) -> Delta | None:
        """Add `chunk` to the whole; the delta to pass on, or None when it carries no text or tool call."""
        self._model = chunk.model or self._model
        self._usage = chunk.usage or self._usage
        if not chunk.choices:
            return None
        choice = chunk.choices[0]
        self._finish = choice.finish_reason or self._finish
        self._logprobs += [t.logprob for t in (choice.logprobs.content or [])] if choice.logprobs else []
        text, calls = choice.delta.content or "", choice.delta.tool_calls or []
        self._text.append(text)
        for call in calls:
            self._merge(call)
        return Delta(text, [c.model_dump(exclude_none=True) for c in calls]) if text or calls else None

    def _merge(self, call: ToolCallDelta) -> None:
        """Continue tool call `call.index`: its id and type once given, name and arguments appended."""
        whole = self._calls.setdefault(call.index, {"id": None, "type": "function",
                                                    "function": {"name": "", "arguments": ""}})
        whole["id"] = call.id or whole["id"]
        whole["type"] = call.type or whole["type"]
        if call.function:
            whole["function"]["name"] += call.function.name or ""
            whole["function"]["arguments"] += call.function.arguments or ""

    def whole(self) -> Completion:
        """Everything read so far as one completion, as a non-streaming call would have returned it."""
        calls = [self._calls[i] for i in sorted(self._calls)] or None
        text = "".join(self._text)
        message = Message(content=text if text or not calls else None, tool_calls=calls)
        logprobs = Logprobs(content=[TokenLogprob(logprob=p) for p in self._logprobs]) if self._logprobs else None
        return Completion(model=self._model, usage=self._usage,
                          choices=[Choice(message=message, finish_reason=self._finish, logprobs=logprobs)])
