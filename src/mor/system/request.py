"""What a system is asked and what an expert gives back: `Request`, `Answer` (whole, or `Delta` by `Delta` as it is
made) and its `Cost`."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from mor.errors import ConfigError, check

MAX_REQUEST_CHARS = 200_000


@dataclass(frozen=True)
class Request:
    """A chat-style request: OpenAI-format messages, plus the `tools` array when the caller sent one."""

    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        check(len(self.messages) > 0, "request: no messages; send at least one {'role': 'user', 'content': ...}")
        for i, message in enumerate(self.messages):
            check(isinstance(message, dict) and isinstance(message.get("role"), str),
                  f"request.messages[{i}]: expected an object with a 'role' string and 'content', got {message!r:.80}")
        for i, tool in enumerate(self.tools):
            check(isinstance(tool, dict), f"request.tools[{i}]: expected an OpenAI tool object, got {tool!r:.80}")
        check(bool(self.text.strip()), "request: every message is empty; put the question in a message's 'content'")
        check(len(self.text) <= MAX_REQUEST_CHARS,
              f"request: {len(self.text)} characters, more than the limit of {MAX_REQUEST_CHARS}; shorten it")

    @classmethod
    def of(cls, query: "str | Request", tools: list[dict[str, Any]] | None = None) -> "Request":
        """A request from a plain question (one user message), or the request itself."""
        if isinstance(query, Request):
            return query
        check(isinstance(query, str), f"request: expected a string or Request, got {type(query).__name__}")
        return cls(messages=({"role": "user", "content": query},), tools=tuple(tools or ()))

    @cached_property
    def text(self) -> str:
        """The text content of all messages, in order (list-of-parts content keeps its text parts)."""
        return "\n".join(_content_text(m.get("content")) for m in self.messages)

    @cached_property
    def text_messages(self) -> tuple[dict[str, Any], ...]:
        """The messages with each content as its text (parts joined), for chat templates that take strings."""
        return tuple({**m, "content": _content_text(m.get("content"))} for m in self.messages)

    @cached_property
    def question(self) -> str:
        """The last user message with text (else the last message with text): what the router reads and a
        single-turn expert (math, retrieval) answers."""
        texts = [(m.get("role"), _content_text(m.get("content"))) for m in self.messages]
        said = [text for _, text in texts if text.strip()]
        return ([text for role, text in texts if role == "user" and text.strip()] or said)[-1]


def as_tools(tools: Iterable[Any] | None, functions: Iterable[Any] | None = None) -> tuple[dict[str, Any], ...]:
    """The tools a request offers: its `tools` array, then each entry of a legacy `functions` array (OpenAI's
    function calling before tools) as a function tool, so that either one counts as carrying tools."""
    legacy = list(functions or ())
    for i, function in enumerate(legacy):
        check(isinstance(function, dict), f"request.functions[{i}]: expected an OpenAI function object "
                                          f"({{'name': …, 'parameters': …}}), got {function!r:.80}")
    return (*(tools or ()), *({"type": "function", "function": function} for function in legacy))


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        for part in content:
            check(isinstance(part, dict) and isinstance(part.get("text", ""), str),
                  f"request: a content part must be an object whose 'text' is a string, like {{'type': 'text', "
                  f"'text': …}}, got {part!r:.80}")
        return " ".join(part.get("text", "") for part in content)
    raise ConfigError(f"request: message content must be a string or a list of parts, got {type(content).__name__}")


@dataclass
class Cost:
    """What one answer cost: tokens, wall time and money (0 where the expert is unpriced)."""

    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    money: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.tokens_in + other.tokens_in, self.tokens_out + other.tokens_out,
                    self.latency_s + other.latency_s, self.money + other.money)


@dataclass
class Answer:
    """One expert's answer: text for chat experts, value for predictors, a confidence in [0, 1] and its cost."""

    expert: str
    text: str | None = None
    value: Any = None
    confidence: float = 0.5
    cost: Cost = field(default_factory=Cost)
    steps: int = 1
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def content(self) -> str:
        """The answer as text, whatever its kind: what a chat client shows."""
        return self.text if self.text is not None else ("" if self.value is None else str(self.value))


@dataclass
class Delta:
    """A piece of an answer as a streaming expert makes it: new text, and tool-call fragments in OpenAI's streaming
    form (each with the `index` of the call it continues)."""

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
