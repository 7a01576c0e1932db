"""Diagnostics: what one forward pass did — routing, reflection depth, confidence, conflict, aux losses.

Metrics and reports are built from these, never from prints.
"""

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Diagnostics:
    """Per-input record of a MoR forward over N inputs with m expert slots each."""

    weights: Tensor  # (N, m) integration weights (gate mode over classes: the raw gate weights, which the class
    # mixture renormalises, so with one expert chosen its answer is the output whatever its weight)
    indices: Tensor  # (N, m) chosen experts
    mask: Tensor  # (N, m) slots in use
    steps: Tensor  # (N, m) reflection steps each chosen expert ran (0 in unused slots)
    confidence: Tensor  # (N, m) critic confidence of each chosen expert's answer
    conflict: Tensor  # (N,) disagreement among the chosen experts
    load: Tensor  # (E,) fraction of inputs routed to each expert
    entropy: Tensor  # () mean routing entropy, nats
    aux: dict[str, Tensor] = field(default_factory=dict)  # named auxiliary losses (unweighted)

    @property
    def compute(self) -> Tensor:
        """Cell evaluations spent on each input: steps summed over its chosen experts, (N,)."""
        return (self.steps * self.mask).sum(-1)

    @property
    def dropped(self) -> Tensor:
        """Inputs no expert processed, because a capacity limit dropped every one of their slots: (N,) bool."""
        return ~self.mask.any(-1)


def merge(parts: list[Diagnostics]) -> dict[str, Tensor]:
    """Summed auxiliary losses of several layers' diagnostics (e.g. every MoR FFN of a transformer)."""
    total: dict[str, Tensor] = {}
    for d in parts:
        for name, value in d.aux.items():
            total[name] = total.get(name, 0) + value
    return total


__all__ = ["Diagnostics", "merge"]
