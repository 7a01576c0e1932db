"""The across-model router: scores every expert for a request and selects some, load-aware, with a fallback.

An expert's score adds, with configurable weights: the trained head's probability for the labels the expert
declares as capabilities, its self-assessment hints, a bonus for tool-capable experts when the request carries
a `tools` array, its success rate from feedback, and minus its current load. Top-k or all above a threshold are
selected; below `min_confidence` the default expert answers. The head and the hints read the last user message.
"""

import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mor.errors import ConfigError, check
from mor.system.decision import Decision, ExpertScore
from mor.system.experts.base import ExpertInfo
from mor.system.head import LabelHead
from mor.system.request import Request
from mor.system.stats import ExpertStats


class AllInCooldown(ConfigError):
    """Every expert is in cooldown and no default is configured: none can answer until a cooldown ends."""


@dataclass
class RouterWeights:
    """How much each signal counts in an expert's score."""

    head: float = 1.0
    hints: float = 0.2
    tools: float = 2.0
    feedback: float = 0.3
    load: float = 0.3


@dataclass
class Selection:
    """Which experts to pick: the best `top_k`, or (when `threshold` is set) all with score ≥ it, at least one."""

    top_k: int = 1
    threshold: float | None = None
    min_confidence: float = 0.0
    default: str | None = None

    def __post_init__(self) -> None:
        check(self.top_k >= 1, f"router.top_k must be ≥ 1, got {self.top_k}")
        check(0 <= self.min_confidence <= 1, f"router.min_confidence must be in [0, 1], got {self.min_confidence}")
        check(self.threshold is None or math.isfinite(self.threshold),
              f"router.threshold must be a finite number, got {self.threshold}; set a number or leave it unset")


class SystemRouter:
    """Routes requests among `experts`; `head` may be None (then hints, tools, feedback and load decide)."""

    def __init__(self, experts: list[ExpertInfo], head: LabelHead | None = None,
                 weights: RouterWeights | None = None, selection: Selection | None = None, seed: int = 0) -> None:
        self.head, self.weights, self.selection = head, weights or RouterWeights(), selection or Selection()
        self.experts: dict[str, ExpertInfo] = {}
        for info in experts:
            self.add(info)
        self._rng = random.Random(seed)

    def add(self, info: ExpertInfo) -> None:
        """Register an expert (at run time too); its capabilities name the head's labels it serves."""
        check(info.name not in self.experts, f"expert {info.name!r} is registered already; remove it first")
        self.experts[info.name] = info

    def remove(self, name: str) -> None:
        check(name in self.experts, f"expert {name!r}: no such expert; registered: {', '.join(self.experts)}")
        del self.experts[name]

    def label_probabilities(self, requests: list[Request]) -> np.ndarray:
        """(n, labels) head probabilities of each request's last user message (a system prompt or earlier turns
        would pull every request towards the same labels)."""
        return self.head.proba([r.question for r in requests])

    def route(self, request: Request, stats: Mapping[str, ExpertStats] | None = None) -> Decision:
        """Score every expert for `request` and select; `stats` supplies feedback, load and cooldowns."""
        start = time.perf_counter()
        check(bool(self.experts), "router: no experts registered; add at least one to the config's experts")
        labels = {}
        if self.head is not None:
            labels = dict(zip(self.head.labels, self.label_probabilities([request])[0].tolist(), strict=True))
        scores = sorted((self._score(info, request, labels, (stats or {}).get(info.name))
                         for info in self.experts.values()), key=lambda s: (-s.total, -s.probability))
        decision = self._select(scores, labels)
        decision.latency_s = time.perf_counter() - start
        return decision

    def _score(self, info: ExpertInfo, request: Request, labels: dict[str, float],
               stats: ExpertStats | None) -> ExpertScore:
        w, stats = self.weights, stats or ExpertStats()
        probability = min(1.0, sum(labels.get(c, 0.0) for c in info.capabilities)) if labels else 0.0
        hints = info.hints.score(request.question)
        tools = 1.0 if request.tools and "tool" in info.capabilities else 0.0
        feedback = stats.success_rate - 0.5
        load = stats.in_flight / info.max_concurrency
        total = w.head * probability + w.hints * hints + w.tools * tools + w.feedback * feedback - w.load * load
        return ExpertScore(info.name, probability, hints, tools, feedback, load, total, stats.available())

    def _select(self, scores: list[ExpertScore], labels: dict[str, float]) -> Decision:
        sel = self.selection
        ready = [s for s in scores if s.available]  # a busy expert queues; its load already lowers its score
        if not ready:
            return self._fallback(scores, labels, "every expert is in cooldown", AllInCooldown)
        ready = self._shuffle_ties(ready)
        if sel.threshold is not None:
            chosen = [s for s in ready if s.total >= sel.threshold] or ready[:1]
        else:
            chosen = ready[:sel.top_k]
        sure = chosen[0].probability if labels else 1.0  # the head's probability that the chosen expert fits
        default_ready = any(s.name == sel.default and s.available for s in scores)  # else the others are better
        if sure < sel.min_confidence and not chosen[0].tools and default_ready:  # carrying tools is a strong signal
            return self._fallback(scores, labels, f"the head's probability for {chosen[0].name}, {sure:.2f}, is "
                                                  f"below min_confidence {sel.min_confidence}")
        names = [s.name for s in chosen]  # listed first: a tie broken at random shows who won it
        return Decision(names, sorted(scores, key=lambda s: s.name not in names), labels)

    def _shuffle_ties(self, ready: list[ExpertScore]) -> list[ExpertScore]:
        """Experts with the same score in random order, so equal experts share the traffic."""
        keys = {id(s): self._rng.random() for s in ready}
        return sorted(ready, key=lambda s: (-round(s.total, 9), keys[id(s)]))

    def _fallback(self, scores: list[ExpertScore], labels: dict[str, float], reason: str,
                  error: type[ConfigError] = ConfigError) -> Decision:
        default = self.selection.default
        if default is None or default not in self.experts:
            raise error(f"router: {reason} and no default expert is configured; set router.default")
        return Decision([default], scores, labels, fallback=True, reason=reason)
