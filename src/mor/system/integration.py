"""Combine the selected experts' answers: weighted, voting, sequential, ensemble (synthesis) or stacking.

`weighted`, `voting` and `stacking` are pure functions of the answers; `sequential` and `ensemble` need more
calls, so this module builds the requests for them and the system makes the calls.
"""

import math
import re
import unicodedata
from collections import defaultdict
from typing import Literal

from mor.errors import MorError, check
from mor.system.request import Answer, Cost, Request

Mode = Literal["weighted", "voting", "sequential", "ensemble", "stacking"]
MODES: tuple[str, ...] = ("weighted", "voting", "sequential", "ensemble", "stacking")


class ExpertsFailed(MorError):
    """No answer to integrate: every expert asked failed; `answers` are their failed answers (for the metrics)."""

    def __init__(self, answers: list[Answer]) -> None:
        super().__init__("integration: every selected expert failed: "
                         + "; ".join(f"{a.expert}: {a.error}" for a in answers))
        self.answers = answers


def _usable(answers: list[Answer]) -> list[Answer]:
    ok = [a for a in answers if a.ok]
    if not ok:
        raise ExpertsFailed(answers)
    return ok


def _total_cost(answers: list[Answer]) -> Cost:
    return sum((a.cost for a in answers), Cost())


def weighted(answers: list[Answer], weights: dict[str, float] | None = None) -> Answer:
    """The answer with the highest router weight × confidence; the others are kept as alternatives."""
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


def normalise(text: str) -> str:
    """Answer text reduced to what votes compare: case, accents, punctuation and spacing removed; numbers canonical."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower().strip()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # thousands separators: 1,000 → 1000
    text = re.sub(r"[^\w\s.\-]", " ", text)
    text = " ".join(text.split()).strip(" .")
    try:
        number = float(text.replace(",", ""))
    except ValueError:
        return text
    return f"{number:.10g}" if math.isfinite(number) else text


def voting(answers: list[Answer]) -> Answer:
    """Majority over normalised answers, each vote weighted by its confidence; confidence = the winner's share."""
    ok = _usable(answers)
    votes: dict[str, float] = defaultdict(float)
    for a in ok:
        votes[normalise(a.content)] += max(a.confidence, 1e-6)
    winner = max(votes, key=votes.get)
    best = max((a for a in ok if normalise(a.content) == winner), key=lambda a: a.confidence)
    share = votes[winner] / sum(votes.values())
    return _merged(best, answers, share, mode="voting", votes=dict(votes))


def stacking(answers: list[Answer], coefficients: dict[str, float] | None = None, intercept: float = 0.0) -> Answer:
    """Numeric answers combined linearly: the learned coefficients when exactly the experts they were fitted on
    answered, else (none given, one of them failed, or another expert answered in its place) the
    confidence-weighted mean of the answers there are: a fitted formula with a term missing is not a prediction."""
    ok = _usable(answers)
    for a in ok:
        check(isinstance(a.value, int | float) and math.isfinite(a.value),
              f"integration.stacking: expert {a.expert} answered {a.content[:40]!r}, not a finite number; "
              "stacking combines numeric predictors only", MorError)
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


def fit_stacking(predictions: dict[str, list[float]], targets: list[float]) -> tuple[dict[str, float], float]:
    """Least-squares coefficients (and intercept) for `stacking` from held-out predictions of each expert."""
    import numpy as np

    names = sorted(predictions)
    check(len(targets) > len(names), f"integration.stacking: {len(targets)} targets cannot fit "
                                     f"{len(names) + 1} coefficients; give more labeled examples")
    x = np.column_stack([np.asarray(predictions[n], dtype=float) for n in names] + [np.ones(len(targets))])
    solution, *_ = np.linalg.lstsq(x, np.asarray(targets, dtype=float), rcond=None)
    return dict(zip(names, solution[:-1].tolist(), strict=True)), float(solution[-1])


def synthesis_request(request: Request, answers: list[Answer]) -> Request:
    """The request an `ensemble` synthesis expert receives: the question and every answer, to fuse into one."""
    listed = "\n\n".join(f"Answer {i + 1} (from {a.expert}, confidence {a.confidence:.2f}):\n{a.content}"
                         for i, a in enumerate(_usable(answers)))
    prompt = (f"Several experts answered the question below. Combine them into one correct, complete answer; "
              f"where they disagree, say which is right and why.\n\nQuestion:\n{request.question}\n\n{listed}")
    return Request(messages=({"role": "user", "content": prompt},))


def chained_request(request: Request, previous: Answer) -> Request:
    """The request the next expert in a `sequential` chain receives: the conversation plus the previous answer."""
    note = {"role": "user", "content": f"A previous expert ({previous.expert}) answered:\n{previous.content}\n\n"
                                       "Check it and give the final answer."}
    return Request(messages=(*request.messages, {"role": "assistant", "content": previous.content}, note),
                   tools=request.tools)


def _merged(best: Answer, answers: list[Answer], confidence: float, **details) -> Answer:
    """`best` with the combined confidence, the total cost of all calls and the alternatives in details."""
    alternatives = [{"expert": a.expert, "answer": a.content, "confidence": a.confidence, "error": a.error}
                    for a in answers if a is not best]
    return Answer(expert=best.expert, text=best.text, value=best.value, confidence=confidence,
                  cost=_total_cost(answers), steps=max(a.steps for a in answers),
                  details={**best.details, **details, "alternatives": alternatives})
