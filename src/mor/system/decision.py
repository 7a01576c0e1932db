"""What the router decided for one request, with every expert's score broken down so it can be explained."""

from dataclasses import dataclass, field


@dataclass
class ExpertScore:
    """One expert's score: the trained head's probability, self-assessment, tools signal, feedback and load."""

    name: str
    probability: float
    hints: float
    tools: float
    feedback: float
    load: float
    total: float
    available: bool = True

    def why(self, head: bool = True) -> str:
        """The score's parts in words; without the head's probability when the router has no trained head."""
        parts = [f"head {self.probability:.2f}"] * head + [f"hints {self.hints:.2f}"]
        if self.tools:
            parts.append("request carries tools")
        parts += [f"success rate {self.feedback + 0.5:.2f}", f"load {self.load:.0%}"]
        if not self.available:
            parts.append("in cooldown")
        return ", ".join(parts)


@dataclass
class Decision:
    """The selected experts (best first), every expert's score, and whether the fallback was used."""

    selected: list[str]
    scores: list[ExpertScore]
    labels: dict[str, float] = field(default_factory=dict)
    fallback: bool = False
    reason: str = ""
    latency_s: float = 0.0

    @property
    def confidence(self) -> float:
        """The head's probability for the first selected expert."""
        return next((s.probability for s in self.scores if s.name == self.selected[0]), 0.0)

    def explain(self) -> str:
        """Human-readable: the choice, why, and every expert's score from best to worst."""
        lines = [f"chose {', '.join(self.selected)}" + (f" (fallback: {self.reason})" if self.fallback else "")]
        lines += [f"  {s.name:<16} score {s.total:+.3f}  ({s.why(head=bool(self.labels))})" for s in self.scores]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"selected": self.selected, "fallback": self.fallback, "reason": self.reason,
                "confidence": self.confidence, "labels": self.labels, "latency_ms": 1000 * self.latency_s,
                "scores": [vars(s) for s in self.scores]}
