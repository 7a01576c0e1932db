"""The `Expert` contract: a name, what it is good at, what it costs, and `async answer(request) -> Answer` (or
`stream(request)`, its deltas as they are made and then the Answer), within `deadline_s`; blocking work runs on the
expert's own threads (`in_thread`)."""

import abc
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mor.errors import ConfigError, check
from mor.system.experts.threads import Workers
from mor.system.request import Answer, Cost, Delta, Request

Result = TypeVar("Result")


@dataclass
class Hints:
    """An expert's self-assessment: keywords, regex patterns and example requests that signal a fit."""

    keywords: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._keywords = [k.lower() for k in self.keywords]
        self._examples = [words for e in self.examples if (words := _words(e))]
        self._patterns = []
        for p in self.patterns:
            try:
                self._patterns.append(re.compile(p, re.IGNORECASE))
            except re.error as e:
                raise ConfigError(f"hints.patterns: {p!r} is not a valid regular expression ({e}); "
                                  f"fix or remove it") from e

    def score(self, text: str) -> float:
        """Fraction of signal found in `text`: 1 if a pattern matches, else the larger of the share of keywords
        present (twice it, at most 1) and the word overlap (Jaccard) with the closest example request."""
        if any(p.search(text) for p in self._patterns):
            return 1.0
        lowered = text.lower()
        keywords = min(1.0, 2 * sum(k in lowered for k in self._keywords) / len(self._keywords)) if self._keywords \
            else 0.0
        words = _words(lowered)
        return max([keywords, *(len(words & e) / len(words | e) for e in self._examples)])


def _words(text: str) -> set[str]:
    """The distinct lower-case words of `text`."""
    return set(re.findall(r"\w+", text.lower()))


@dataclass
class ExpertInfo:
    """What the router and the operators know about an expert before calling it."""

    name: str
    description: str = ""
    capabilities: list[str] = field(default_factory=list)
    cost_per_call: float = 0.0
    max_concurrency: int = 4
    timeout_s: float = 30.0
    hints: Hints = field(default_factory=Hints)

    def __post_init__(self) -> None:
        check(bool(re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name or "")),
              f"expert name {self.name!r}: use letters, digits, '_', '-' or '.'")
        check(self.max_concurrency >= 1, f"expert {self.name}: max_concurrency must be ≥ 1, got {self.max_concurrency}")
        check(self.timeout_s > 0, f"expert {self.name}: timeout_s must be > 0, got {self.timeout_s}")
        twice = sorted({c for c in self.capabilities if self.capabilities.count(c) > 1})
        check(not twice, f"expert {self.name}: capabilities list {', '.join(twice)} more than once, which would add "
                         f"the head's probability for it again; list each once")


class Expert(abc.ABC):
    """Base of every adapter: subclasses implement `_answer`; `answer` adds timing and turns failures into errors."""

    _workers: Workers | None = None

    def __init__(self, info: ExpertInfo) -> None:
        self.info = info

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def deadline_s(self) -> float:
        """The longest a whole call may take, every attempt included: the system's bound on it. One attempt here;
        an adapter that retries extends it."""
        return self.info.timeout_s

    async def in_thread(self, fn: Callable[..., Result], *args: Any) -> Result:
        """`fn(*args)` on this expert's own threads, at most `max_concurrency` at once, so that blocking work a
        timeout left running can neither exceed the limit nor starve other experts (see `threads`)."""
        if self._workers is None:
            self._workers = Workers(self.name, self.info.max_concurrency)
        return await self._workers.run(fn, *args)

    async def answer(self, request: Request) -> Answer:
        """Answer `request`; latency is measured here so every adapter reports it the same way."""
        start = time.perf_counter()
        return self._priced(await self._answer(request), start)

    async def stream(self, request: Request) -> AsyncIterator[Delta | Answer]:
        """Answer `request` piece by piece: its deltas as they are made, then the whole Answer. An adapter that
        cannot stream gives the whole Answer only."""
        yield await self.answer(request)

    def _priced(self, answer: Answer, start: float) -> Answer:
        """`answer` with the latency since `start` and the declared price per call added to its cost."""
        answer.cost = answer.cost + Cost(latency_s=time.perf_counter() - start, money=self.info.cost_per_call)
        return answer

    @abc.abstractmethod
    async def _answer(self, request: Request) -> Answer:
        """The adapter's own call; raise on failure (the system records it and falls back)."""

    async def aclose(self) -> None:
        """Release the worker threads; adapters that hold connections or models extend it."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None
