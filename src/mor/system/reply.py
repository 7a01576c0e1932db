"""What a system gives back: the integrated answer with its routing decision, every expert's answer and the cost."""

from dataclasses import dataclass, field

from mor.errors import MorError
from mor.system.decision import Decision
from mor.system.request import Answer, Cost


@dataclass
class Reply:
    """The integrated answer, the routing decision behind it, every expert's own answer and the total cost.

    `syntheses` are the ensemble synthesizer's calls: not answers to the request, but paid for.
    """

    answer: Answer
    decision: Decision
    answers: list[Answer]
    rounds: int = 0
    fallback: bool = False
    syntheses: list[Answer] = field(default_factory=list)

    @property
    def cost(self) -> Cost:
        return sum((a.cost for a in self.answers + self.syntheses), Cost())

    def as_dict(self) -> dict:
        return {"answer": self.answer.content, "expert": self.answer.expert, "confidence": self.answer.confidence,
                "rounds": self.rounds, "fallback": self.fallback, "routing": self.decision.as_dict(),
                "answers": [{"expert": a.expert, "answer": a.content, "confidence": a.confidence, "error": a.error,
                             "steps": a.steps, "cost": vars(a.cost)} for a in self.answers],
                "cost": vars(self.cost)}


class StreamBroken(MorError):
    """An expert failed after part of its answer was passed on, so no other expert can take its place."""
