"""Combine the selected experts' answers: weighted, voting, sequential, ensemble (synthesis) or stacking.

`weighted`, `voting`, `sequential` and `stacking` are pure functions of the answers; `sequential` and `ensemble`
need more calls, so this module builds the requests for them (cut to fit `MAX_REQUEST_CHARS`) and the system
makes the calls.
"""

import json
import math
from collections import defaultdict
from contextlib import suppress
from dataclasses import replace
from typing import Literal

from mor.errors import MorError, check, first_line
from mor.system.decision import Decision
from mor.system.normalise import normalise
from mor.system.request import MAX_REQUEST_CHARS, Answer, Cost, Request

Mode = Literal["weighted", "voting", "sequential", "ensemble", "stacking"]
MODES: tuple[str, ...] = ("weighted", "voting", "sequential", "ensemble", "stacking")


class ExpertsFailed(MorError):
    """No answer to integrate: every expert asked failed; `answers` are their failed answers (for the metrics and
    the log, whole), `decision` the routing decision they answered, once the system has set it. The message is one
    line: each error's first line (a traceback below it stays in the answer)."""

    def __init__(self, answers: list[Answer]) -> None:
        super().__init__("integration: every selected expert failed: "
                         + "; ".join(f"{a.expert}: {first_line(a.error or '')}" for a in answers))
        self.answers = answers
        self.decision: Decision | None = None


def _usable(answers: list[Answer]) -> list[Answer]:
    ok = [a for a in answers if a.ok]
    if not ok:
        raise ExpertsFailed(answers)
    return ok


def _total_cost(answers: list[Answer]) -> Cost:
    return sum((a.cost for a in answers), Cost())


def weighted(answers: list[Answer], weights: dict[str, float] | None = None) -> Answer:
    """The answer with the highest confidence, times `weights[expert]` where given (1 elsewhere); the others are
    kept as alternatives. The system passes no weights: an expert asked because the first was unsure must win by
    being surer, not lose to the router's first choice."""
    ok = _usable(answers)
    score = {a.expert: (weights or {}).get(a.expert, 1.0) * a.confidence for a in ok}
    best = max(ok, key=lambda a: score[a.expert])
    return _merged(best, answers, best.confidence, mode="weighted", scores=score)


def ensemble(fused: Answer, answers: list[Answer], weight: float = 2.0) -> Answer:
    """The synthesis expert's fused answer, its confidence counted `weight` times against each direct answer's, so a
    direct answer wins only when it is far surer; scored apart even when the synthesizer also answered directly."""
    ok = _usable(answers)
    direct = max(ok, key=lambda a: a.confidence)
    best = fused if fused.ok and weight * fused.confidence >= direct.confidence else direct
    scores = {f"{fused.expert} (synthesis)": weight * fused.confidence if fused.ok else 0.0,
              **{a.expert: a.confidence for a in ok}}
    return _merged(best, [fused, *answers], best.confidence, mode="ensemble", scores=scores)


def tool_calls(answer: Answer) -> list[str]:
    """The tool calls an answer asks for, as `name(arguments)` with the arguments as canonical JSON (key order and
    spacing do not count); [] when it asks for none."""
    calls = []
    for call in answer.details.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments", "")
        with suppress(TypeError, ValueError):  # arguments that are not JSON are compared as written
            arguments = json.dumps(json.loads(arguments), sort_keys=True, ensure_ascii=False)
        calls.append(f"{function.get('name')}({arguments})")
    return calls


def _vote(answer: Answer) -> str:
    """What an answer votes for: its normalised text and the tool calls it asks for (an LLM that calls a tool may
    write no text at all, and two calls of different tools are different answers)."""
    return " ".join([normalise(answer.content), *sorted(tool_calls(answer))]).strip()


def described(answer: Answer) -> str:
    """An answer as another expert reads it: its text, then each tool call it asks for on a line of its own."""
    text = [answer.content] if answer.content else []
    return "\n".join([*text, *(f"[tool call] {call}" for call in tool_calls(answer))])


def voting(answers: list[Answer]) -> Answer:
    """Majority over normalised answers, each vote weighted by its confidence.

    Confidence = the winner's share of the votes × the mean confidence of the answers that voted for it: agreement
    alone is not certainty, so a lone voter is exactly as sure as its own answer (as in `weighted`) and unanimous
    voters as sure as they are on average; the share is kept in `details["share"]`.
    """
    ok = _usable(answers)
    votes: dict[str, float] = defaultdict(float)
    for a in ok:
        votes[_vote(a)] += max(a.confidence, 1e-6)
    winner = max(votes, key=votes.get)
    voters = [a for a in ok if _vote(a) == winner]
    best = max(voters, key=lambda a: a.confidence)
    share = votes[winner] / sum(votes.values())
    confidence = share * sum(a.confidence for a in voters) / len(voters)
    return _merged(best, answers, confidence, mode="voting", votes=dict(votes), share=share)


def sequential(chain: list[Answer], extra: list[Answer] | None = None) -> Answer:
    """A `sequential` chain's result: its last usable answer (each link saw the one before it); answers asked after
    it (reflection rounds, with the original request) compete with that result by confidence, the most confident
    wins, the chain's result on a tie. Every answer is kept as an alternative and its cost counted."""
    extra = extra or []
    answers = [*chain, *extra]
    _usable(answers)
    last = next((a for a in reversed(chain) if a.ok), None)
    candidates = [a for a in ([last] if last else []) + extra if a.ok]
    best = max(candidates, key=lambda a: a.confidence)
    return _merged(best, answers, best.confidence, mode="sequential",
                   scores={a.expert: a.confidence for a in candidates})


def stacking(answers: list[Answer], coefficients: dict[str, float] | None = None, intercept: float = 0.0) -> Answer:
    """Numeric answers combined linearly: the learned coefficients when exactly the experts they were fitted on
    answered, else (none given, one of them failed, or another expert answered in its place) the
    confidence-weighted mean of the answers there are: a fitted formula with a term missing is not a prediction.
    An answer that is not a finite number counts as failed, so one broken predictor does not fail the request."""
    answers = [numeric(a) for a in answers]
    ok = _usable(answers)
    fitted = bool(coefficients) and sorted(a.expert for a in ok) == sorted(coefficients)
    if fitted:
        value = intercept + sum(coefficients[a.expert] * a.value for a in ok)
    else:
        weights = [a.confidence for a in ok] if sum(a.confidence for a in ok) > 0 else [1.0] * len(ok)
        value = sum(w * a.value for w, a in zip(weights, ok, strict=True)) / sum(weights)
    confidence = sum(a.confidence for a in ok) / len(ok)
    combined = _merged(max(ok, key=lambda a: a.confidence), answers, confidence, mode="stacking",
                       combined_by="coefficients" if fitted else "confidence-weighted mean")
    combined.value, combined.text = value, None
    return combined


def numeric(answer: Answer) -> Answer:
    """`answer`, or, when it is not a finite number, a failed one saying so: stacking combines numeric predictors
    only, and one that answers otherwise is failing (the system falls back and counts it against its breaker)."""
    value = answer.value
    if not answer.ok or (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)):
        return answer
    return replace(answer, confidence=0.0, error=f"answered {answer.content[:40]!r}, not a finite number; stacking "
                                                 "combines numeric predictors only")


def fit_stacking(predictions: dict[str, list[float]], targets: list[float]) -> tuple[dict[str, float], float]:
    """Least-squares coefficients (and intercept) for `stacking` from held-out predictions of each expert."""
    import numpy as np

    names = sorted(predictions)
    check(len(targets) > len(names), f"integration.stacking: {len(targets)} targets cannot fit "
                                     f"{len(names) + 1} coefficients; give more labeled examples")
    x = np.column_stack([np.asarray(predictions[n], dtype=float) for n in names] + [np.ones(len(targets))])
    solution, *_ = np.linalg.lstsq(x, np.asarray(targets, dtype=float), rcond=None)
    return dict(zip(names, solution[:-1].tolist(), strict=True)), float(solution[-1])


_MIN_KEPT = 100  # characters of an answer a cut must keep for the derived request to be worth sending


def _cut(text: str, limit: int) -> str | None:
    """`text`, or as much of its start as fits in `limit` characters with a note saying it was cut; None when fewer
    than `_MIN_KEPT` of its characters would be left."""
    if len(text) <= limit:
        return text
    note = f"\n[… cut: the answer has {len(text)} characters; only the first ones fit in the request]"
    keep = limit - len(note)
    return text[:keep] + note if keep >= _MIN_KEPT else None


def _shares(texts: list[str], room: int) -> list[int]:
    """Characters for each of `texts` out of `room`: equal shares, what a short text leaves over going to the
    others."""
    limits = [0] * len(texts)
    for left, i in enumerate(sorted(range(len(texts)), key=lambda i: len(texts[i]))):
        limits[i] = min(len(texts[i]), room // (len(texts) - left))
        room -= limits[i]
    return limits


def synthesis_request(request: Request, answers: list[Answer]) -> Request | None:
    """The request an `ensemble` synthesis expert receives: the conversation (system prompt, earlier turns and tools
    too, which a follow-up question needs) and then every answer, to fuse into one.

    When it would exceed `MAX_REQUEST_CHARS`, each answer is cut to its share of the room the conversation leaves
    (saying so in the prompt); None when the conversation leaves too little room (`_MIN_KEPT` characters an
    answer, or none for the prompt itself, however short the answers), and the system integrates the answers
    `weighted` instead of synthesising them."""
    usable = _usable(answers)

    def prompt(contents: list[str]) -> str:
        listed = "\n\n".join(f"Answer {i + 1} (from {a.expert}, confidence {a.confidence:.2f}):\n{content}"
                              for i, (a, content) in enumerate(zip(usable, contents, strict=True)))
        return ("Several experts answered the request above. Combine their answers into one correct, complete "
                f"answer; where they disagree, say which is right and why.\n\n{listed}")

    contents = [described(a) for a in usable]
    fixed = len(request.text) + 1  # `Request.text` joins the messages with \n
    if fixed + len(prompt(contents)) > MAX_REQUEST_CHARS:
        room = MAX_REQUEST_CHARS - fixed - len(prompt([""] * len(usable)))
        cut = [_cut(c, limit) for c, limit in zip(contents, _shares(contents, max(room, 0)), strict=True)]
        if None in cut:
            return None
        contents = cut
    if fixed + len(prompt(contents)) > MAX_REQUEST_CHARS:  # the conversation and the prompt alone are too long
        return None
    return Request(messages=(*request.messages, {"role": "user", "content": prompt(contents)}), tools=request.tools)


def chained_request(request: Request, previous: Answer) -> Request | None:
    """The request the next expert in a `sequential` chain receives: the conversation plus the previous answer.

    When it would exceed `MAX_REQUEST_CHARS`, the previous answer is cut to the room the conversation leaves
    (saying so); None when that room is too small (`_MIN_KEPT` characters), and the next expert gets the original
    request, as after a failed link. Tool calls the previous expert asked for are written out in its message (as
    calls without their results, they could not be sent as calls)."""
    def added(content: str) -> tuple[dict, dict]:
        return ({"role": "assistant", "content": content},
                {"role": "user", "content": f"A previous expert ({previous.expert}) answered:\n{content}\n\n"
                                            "Check it and give the final answer."})

    content = described(previous)
    fixed = len(request.text) + sum(len(m["content"]) + 1 for m in added(""))  # `Request.text` joins with \n
    if fixed + 2 * len(content) > MAX_REQUEST_CHARS:  # the answer is both the assistant message and in the note
        content = _cut(content, (MAX_REQUEST_CHARS - fixed) // 2)
        if content is None:
            return None
    return Request(messages=(*request.messages, *added(content)), tools=request.tools)


def _merged(best: Answer, answers: list[Answer], confidence: float, **details) -> Answer:
    """`best` with the combined confidence, the total cost of all calls and the alternatives in details."""
    alternatives = [{"expert": a.expert, "answer": a.content, "confidence": a.confidence, "error": a.error}
                    for a in answers if a is not best]
    return Answer(expert=best.expert, text=best.text, value=best.value, confidence=confidence,
                  cost=_total_cost(answers), steps=max(a.steps for a in answers),
                  details={**best.details, **details, "alternatives": alternatives})
