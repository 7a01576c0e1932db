"""`MoRSystem`: route a request to experts, call them with timeouts and fallbacks, reflect, integrate.

Each expert call holds one of the expert's `max_concurrency` slots, and the expert's `deadline_s` (every attempt
of a retrying adapter) bounds the wait for a slot and for the answer (for a stream, its first delta). A timeout
cannot stop a worker thread, so a call's slot stays taken until the threads it started have ended.

Reflection across models is escalation: while the integrated answer's confidence is below the reflection
threshold, the next-best expert is asked too and the answers are integrated again, up to `rounds` times (in
`sequential` mode the chain's result and the extra answers compete by confidence). An expert that refuses a request
it cannot read (an error with a true `request_error` attribute, such as `RequestError`) is passed over as after a
failure, but the refusal does not count towards its circuit breaker. When nothing needs the whole answer first (one
expert selected, no reflection rounds, `weighted` integration), `stream` passes the expert's deltas on as they are
made.
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, field

from mor.errors import check
from mor.system import integration
from mor.system.decision import Decision
from mor.system.experts.base import Expert
from mor.system.experts.threads import Threads, recording
from mor.system.reply import Reply, StreamBroken
from mor.system.request import Answer, Cost, Delta, Request
from mor.system.router import SystemRouter
from mor.system.stats import Breaker, ExpertStats
from mor.system.store import StateStore

log = logging.getLogger(__name__)


@dataclass
class Reflection:
    """Escalate to the next-best expert while confidence < `min_confidence`, at most `rounds` times."""

    rounds: int = 0
    min_confidence: float = 0.5

    def __post_init__(self) -> None:
        check(self.rounds >= 0, f"reflection.rounds must be ≥ 0, got {self.rounds}")


@dataclass
class Combine:
    """How answers are integrated; `synthesizer` is the expert an `ensemble` asks to fuse them."""

    mode: str = "weighted"
    synthesizer: str | None = None
    coefficients: dict[str, float] = field(default_factory=dict)
    intercept: float = 0.0

    def __post_init__(self) -> None:
        check(self.mode in integration.MODES,
              f"integration.mode: {self.mode!r} is not one of {', '.join(integration.MODES)}")
        check(self.mode != "ensemble" or self.synthesizer is not None,
              "integration.synthesizer: required for mode 'ensemble'; name the expert that fuses the answers")


class MoRSystem:
    """Experts + router + integration, with per-expert statistics (optionally persisted) and circuit breakers."""

    def __init__(self, experts: list[Expert], router: SystemRouter, combine: Combine | None = None,
                 reflection: Reflection | None = None, breaker: Breaker | None = None,
                 store: StateStore | None = None) -> None:
        self.router, self.combine = router, combine or Combine()
        self.reflection, self.breaker, self.store = reflection or Reflection(), breaker or Breaker(), store
        self.experts: dict[str, Expert] = {}
        self.stats: dict[str, ExpertStats] = store.load() if store else {}
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._holding: Counter[str] = Counter()  # calls in a slot now (a timed-out call's thread may hold one on)
        for expert in experts:
            self._attach(expert)
        missing = [name for name in self.router.experts if name not in self.experts]
        check(not missing, f"router: expert(s) {', '.join(missing)} have no adapter; give their experts or remove "
                           "them from the router")
        for field_name, name in (("router.default", self.router.selection.default),
                                 ("integration.synthesizer", self.combine.synthesizer)):
            check(name is None or name in self.experts, f"{field_name}: {name!r} is not an expert; "
                                                        f"experts are: {', '.join(self.experts)}")
        for name in self.combine.coefficients:  # a misspelt name would silently weigh its expert 0
            check(name in self.experts, f"integration.coefficients.{name}: no expert of that name; experts are: "
                                        f"{', '.join(self.experts)}")
        self._check_stacking()

    def _check_stacking(self) -> None:
        """Stacking coefficients apply only when exactly their experts answer: refuse settings under which they
        never would, rather than silently answer with a mean."""
        fitted, selection = len(self.combine.coefficients), self.router.selection
        if not fitted:
            return
        check(selection.threshold is not None or selection.top_k >= fitted,
              f"router.top_k: {selection.top_k} expert(s) answer, but integration.coefficients combine {fitted}; "
              f"set router.top_k to {fitted}")
        check(not self.reflection.rounds, f"reflection.rounds: {self.reflection.rounds}, but a stacking formula "
                                          "takes exactly the experts it was fitted on; set reflection.rounds to 0")

    def _attach(self, expert: Expert) -> None:
        if expert.name not in self.router.experts:
            self.router.add(expert.info)
        self.experts[expert.name] = expert
        self.stats.setdefault(expert.name, ExpertStats())

    def register(self, expert: Expert) -> None:
        """Add an expert while running; the router scores it from the next request on. One registered under the
        name of a removed one keeps its history (calls, feedback) but not its circuit breaker: it is a new adapter."""
        check(expert.name not in self.experts, f"expert {expert.name!r} is registered already; remove it first")
        self._attach(expert)
        self.stats[expert.name].close_breaker()

    def remove(self, name: str) -> Expert:
        """Take an expert out of routing; returns it so the caller can close it."""
        check(name in self.experts, f"expert {name!r}: no such expert; registered: {', '.join(self.experts)}")
        check(name not in (self.router.selection.default, self.combine.synthesizer),
              f"expert {name!r} is the default or synthesis expert; change the config before removing it")
        self.router.remove(name)
        self._limits.pop(name, None)
        return self.experts.pop(name)

    def route(self, query: str | Request) -> Decision:
        """The routing decision and its explanation, without calling any expert."""
        return self.router.route(Request.of(query), self.stats)

    async def ask(self, query: str | Request) -> Reply:
        """Answer `query`: route, call (with fallbacks), reflect while unsure, integrate."""
        request = Request.of(query)
        decision = self.router.route(request, self.stats)
        with self._reserved(decision) as reserved:
            return await self._answer(request, decision, reserved)

    async def stream(self, query: str | Request) -> AsyncIterator[Delta | Reply]:
        """Answer `query` as `ask` does, yielding the chosen expert's deltas as it makes them, then the Reply.

        Only when nothing needs the whole answer first: one expert selected, no reflection rounds, `weighted`
        integration; otherwise the Reply comes alone. An expert that fails before its first delta is replaced as in
        `ask`; one that fails after it raises StreamBroken.
        """
        request = Request.of(query)
        decision = self.router.route(request, self.stats)
        with self._reserved(decision) as reserved:
            if len(decision.selected) > 1 or self.reflection.rounds or self.combine.mode != "weighted":
                yield await self._answer(request, decision, reserved)
                return
            ranked = self._ranked(decision)
            async for piece in self._pieces(ranked[0], request, reserved, stream=True):
                if isinstance(piece, Delta):
                    yield piece
                else:
                    answer = piece
            answers = await self._replace_failed(request, [answer], ranked[1:])
            yield await self._reflect(request, decision, ranked, answers)

    @contextmanager
    def _reserved(self, decision: Decision) -> Iterator[set[str]]:
        """The selected experts, counted in their load before any await so concurrent requests see it; a call
        takes its expert's reservation over, and what no call took (cancelled before it began) is given back."""
        reserved = set(decision.selected)
        for name in reserved:
            self.stats[name].started()
        try:
            yield reserved
        finally:
            for name in reserved:
                self.stats[name].in_flight -= 1

    @staticmethod
    def _ranked(decision: Decision) -> list[str]:
        """The selected experts, then the other available ones best first: the order fallbacks are asked in."""
        return decision.selected + [s.name for s in decision.scores if s.name not in decision.selected and s.available]

    async def _answer(self, request: Request, decision: Decision, reserved: set[str]) -> Reply:
        ranked = self._ranked(decision)
        answers = await self._first_round(request, decision.selected, ranked, reserved)
        return await self._reflect(request, decision, ranked, answers)

    async def _reflect(self, request: Request, decision: Decision, ranked: list[str], answers: list[Answer]) -> Reply:
        """The first round's `answers` integrated, asking the next of `ranked` too while the result is unsure."""
        fallback = decision.fallback or not any(a.ok and a.expert in decision.selected for a in answers)
        syntheses: list[Answer] = []
        first = len(answers)  # the first round's answers; in `sequential` mode, the chain
        try:
            combined = await self._integrate(request, answers, syntheses, first)
        except integration.ExpertsFailed as err:
            err.decision = decision  # what was selected counts in the metrics even when nothing answered
            raise
        rounds = 0
        while combined.confidence < self.reflection.min_confidence and rounds < self.reflection.rounds:
            asked = {a.expert for a in answers}
            extra = next((n for n in ranked if n not in asked), None)
            if extra is None:
                break
            answers.append(await self._call(extra, request))
            combined = await self._integrate(request, answers, syntheses, first)
            rounds += 1
        return Reply(combined, decision, answers, rounds, fallback, syntheses)

    async def _first_round(self, request: Request, selected: list[str], ranked: list[str],
                           reserved: set[str]) -> list[Answer]:
        """The selected experts' answers; if all failed, the next-ranked experts one by one until one answers."""
        if self.combine.mode == "sequential":
            answers = [await self._call(selected[0], request, reserved)]
            for name in selected[1:]:
                previous = next((a for a in reversed(answers) if a.ok), None)
                chained = integration.chained_request(request, previous) if previous else None
                answers.append(await self._call(name, chained or request, reserved))
        else:
            answers = list(await asyncio.gather(*(self._call(n, request, reserved) for n in selected)))
        return await self._replace_failed(request, answers, ranked[len(selected):])

    async def _replace_failed(self, request: Request, answers: list[Answer], candidates: list[str]) -> list[Answer]:
        """`answers`; if all failed, with the `candidates`' answers one by one until one answers, then the default's."""
        for name in candidates:
            if any(a.ok for a in answers):
                break
            answers.append(await self._call(name, request))
        default = self.router.selection.default
        if not any(a.ok for a in answers) and default and default not in {a.expert for a in answers}:
            answers.append(await self._call(default, request))
        return answers

    async def _integrate(self, request: Request, answers: list[Answer], syntheses: list[Answer], first: int) -> Answer:
        """The answers combined by the configured mode, `first` of them from the first round (the rest from
        reflection); an ensemble's synthesis call is added to `syntheses`. An ensemble whose synthesis request cannot
        fit `MAX_REQUEST_CHARS` even with the answers cut, or whose synthesizer is in cooldown, is integrated
        `weighted`."""
        mode = self.combine.mode
        if mode == "voting":
            return integration.voting(answers)
        if mode == "stacking":
            return integration.stacking(answers, self.combine.coefficients, self.combine.intercept)
        if mode == "sequential":
            return integration.sequential(answers[:first], answers[first:])
        if mode == "ensemble" and sum(a.ok for a in answers) > 1 and self.stats[self.combine.synthesizer].available():
            synthesis = integration.synthesis_request(request, answers)
            if synthesis is not None:
                fused = await self._call(self.combine.synthesizer, synthesis)
                syntheses.append(fused)
                if fused.ok:
                    return integration.ensemble(fused, answers)
        return integration.weighted(answers)

    def _limit(self, name: str) -> asyncio.Semaphore:
        """The expert's concurrency limit in the running event loop (a new loop gets new semaphores)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._limits, self._holding = loop, {}, Counter()
        if name not in self._limits:
            self._limits[name] = asyncio.Semaphore(self.experts[name].info.max_concurrency)
        return self._limits[name]

    @asynccontextmanager
    async def _slot(self, name: str, threads: Threads) -> AsyncIterator[None]:
        """One of the expert's concurrency slots, held until the call ends and every thread it started has too."""
        limit = self._limit(name)
        await limit.acquire()
        self._holding[name] += 1
        try:
            yield
        finally:
            self._holding[name] -= 1
            threads.when_done(limit.release)

    async def _call(self, name: str, request: Request, reserved: set[str] | None = None) -> Answer:
        """One expert's whole answer; a failure becomes an Answer with `error` (see `_pieces`)."""
        async with aclosing(self._pieces(name, request, reserved, stream=False)) as pieces:
            return await anext(pieces)

    async def _pieces(self, name: str, request: Request, reserved: set[str] | None,
                      stream: bool) -> AsyncIterator[Delta | Answer]:
        """One expert call in one of its slots: its deltas (with `stream`), then its Answer.

        The expert's deadline bounds the wait for a slot and the first piece (the whole answer when not streaming);
        the slot is freed once the call and the threads it started have ended. A failure becomes an Answer with
        `error`, or StreamBroken once deltas were passed on. A name in `reserved` was already counted in the
        expert's load when the request was routed; the call takes that reservation over. A call cancelled or closed
        early gives its load back without counting as a failure.
        """
        if name not in self.experts:  # removed since the request was routed: the next expert is asked instead
            yield Answer(expert=name, error="removed while the request was in flight", confidence=0.0)
            return
        expert, stats = self.experts[name], self.stats[name]
        if reserved is not None and name in reserved:
            reserved.discard(name)
        else:
            stats.started()
        start, sent, threads, busy = time.perf_counter(), 0, Threads(), False
        free, waited = not self._limit(name).locked(), None  # a slot at once; seconds it took to get one
        loaded = self._holding[name] > 0  # other calls hold slots, not only threads of calls that timed out
        try:
            async with AsyncExitStack() as held:
                async with asyncio.timeout(expert.deadline_s):
                    await held.enter_async_context(self._slot(name, threads))
                    waited = time.perf_counter() - start
                    pieces = await held.enter_async_context(
                        aclosing(expert.stream(request) if stream else _whole(expert, request)))
                    with recording(threads):
                        piece = await anext(pieces)
                while isinstance(piece, Delta):
                    sent += 1
                    yield piece
                    with recording(threads):
                        piece = await anext(pieces)
            answer = integration.numeric(piece) if self.combine.mode == "stacking" else piece
        except TimeoutError:
            error, busy = _timed_out(expert, free, waited, loaded or self._holding[name] > 0)
            answer = Answer(expert=name, error=error, confidence=0.0, details={"busy": True} if busy else {})
        except Exception as err:  # whatever an adapter raises, the request falls back instead of failing
            refused = bool(getattr(err, "request_error", False))  # it cannot read this request: not a fault
            by_endpoint = {"endpoint_refusal": True} if getattr(err, "endpoint_refusal", False) else {}
            log.debug("expert %s failed", name, exc_info=err)
            answer = Answer(expert=name, error=f"{type(err).__name__}: {err}", confidence=0.0,
                            details={"request_error": True, **by_endpoint} if refused else {})
        except BaseException:
            stats.in_flight -= 1
            raise
        latency = time.perf_counter() - start
        was_open_until = stats.open_until
        stats.finished(latency, answer.error, self.breaker, refused=bool(answer.details.get("request_error")),
                       by_endpoint=bool(answer.details.get("endpoint_refusal")), busy=busy)
        if stats.open_until > was_open_until:
            log.warning("expert %s: in cooldown for %g s after %d failures and %d refusals in a row; last: %s", name,
                        self.breaker.cooldown_s, stats.consecutive_failures, stats.consecutive_refusals, answer.error)
        if self.store:
            self.store.changed(self.stats)
        if not answer.ok:
            if sent:
                raise StreamBroken(f"the answer broke off after {sent} delta(s): {answer.error}")
            answer.cost = Cost(latency_s=latency)
        yield answer

    def feedback(self, expert: str, success: bool, request: str | None = None) -> None:
        """Record whether an expert's answer was right; the router prefers experts that succeed. An expert removed
        since it answered keeps its statistics, so feedback on it is kept too."""
        check(expert in self.stats, f"feedback: unknown expert {expert!r}; experts are: {', '.join(self.experts)}")
        self.stats[expert].feedback(success)
        if self.store:
            self.store.record_feedback(expert, success, request)
            self.store.save(self.stats)

    def ranking(self) -> list[tuple[str, dict]]:
        """Experts from most to least reliable (success rate × share of calls without error, then fewer errors,
        then latency)."""
        return sorted(((n, s.as_dict()) for n, s in self.stats.items() if n in self.experts),
                      key=lambda item: (-item[1]["reliability"], item[1]["errors"], item[1]["latency_ewma_s"]))

    async def aclose(self) -> None:
        """Save statistics and release every expert's connections."""
        if self.store:
            self.store.save(self.stats)
        for expert in self.experts.values():
            await expert.aclose()


def _timed_out(expert: Expert, free: bool, waited: float | None, loaded: bool) -> tuple[str, bool]:
    """Why a call ran out of time, and whether it was only `busy`: a call that had its whole deadline (a slot was
    `free` at once), or waited only for slots that threads of timed-out calls hold, says the expert is failing; one
    that `waited` for a slot (None: never got one) other calls held (`loaded`) says only that it is loaded."""
    slots, deadline = expert.info.max_concurrency, expert.deadline_s
    if waited is not None and not free:
        return (f"busy: timed out after {deadline:g} s, {waited:.2g} s of them waiting for one of its {slots} "
                "slot(s); raise its max_concurrency or timeout_s"), True
    if waited is None and loaded:
        return (f"busy: its {slots} slot(s) stayed taken for {deadline:g} s; raise its max_concurrency or "
                "timeout_s"), True
    return f"timed out after {deadline:g} s", False


async def _whole(expert: Expert, request: Request) -> AsyncIterator[Answer]:
    """`expert`'s whole answer as a stream of one piece, for a call that must not stream."""
    yield await expert.answer(request)
