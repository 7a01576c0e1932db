"""mor.system results as response bodies: the `mor` extension of a chat reply and the router's scores."""

from mor.serve.errors import brief
from mor.serve.schemas import CostOut, ExpertAnswerOut, ExpertScoreOut, MorExtension
from mor.system.decision import Decision
from mor.system.reply import Reply


def scores(decision: Decision) -> list[ExpertScoreOut]:
    """Every expert's score, best first."""
    return [ExpertScoreOut(name=s.name, total=s.total, probability=s.probability, hints=s.hints, tools=s.tools,
                           feedback=s.feedback, load=s.load, available=s.available) for s in decision.scores]


def extension(reply: Reply) -> MorExtension:
    """How a reply was made: routing, every called expert's answer, reflection and cost."""
    return MorExtension(
        experts=reply.decision.selected, answered_by=reply.answer.expert, scores=scores(reply.decision),
        router_confidence=reply.decision.confidence, confidence=reply.answer.confidence, steps=reply.answer.steps,
        rounds=reply.rounds, fallback=reply.fallback, cost=CostOut(**vars(reply.cost)),
        answers=[ExpertAnswerOut(expert=a.expert, answer=a.content, confidence=a.confidence, steps=a.steps,
                                 error=brief(a.error) if a.error else None) for a in reply.answers])
