"""Expert banks for MoRLayer: each runs E experts over inputs already sorted by expert.

A bank takes (A, d) rows grouped by expert plus the per-expert sizes and returns an `ExpertOutput`.
`SwiGLUExperts` is the classic depth-1 FFN bank with stacked weights (one grouped matmul per projection), whose
`mixture` also runs a whole gate-weighted mixture fused per expert (`mor.nn.fused`); `ReflectionExperts` wraps
ReflectionExpert modules so a hidden layer can reflect.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mor.nn.dispatch import Dispatch
from mor.nn.fused import swiglu_mixture
from mor.nn.grouped import grouped_mm
from mor.nn.losses import halting_kl
from mor.nn.reflection import Reflection


@dataclass
class ExpertOutput:
    """Per-assignment answers (A, D), confidences (A,), steps (A,) and the bank's auxiliary losses."""

    answer: Tensor
    confidence: Tensor
    steps: Tensor
    aux: dict[str, Tensor] = field(default_factory=dict)


class SwiGLU(nn.Module):
    """Dense SwiGLU MLP, silu(x·W_gate) ⊙ (x·W_up) · W_down: the dense baseline and the experts' shape."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_gate, self.w_up = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.w_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_out(F.silu(self.w_gate(x)) * self.w_up(x))


class SwiGLUExperts(nn.Module):
    """E SwiGLU experts with stacked weights: gate and up (E, d, h), down (E, h, d); depth 1, confidence 1."""

    def __init__(self, num_experts: int, dim: int, hidden: int):
        super().__init__()
        self.num_experts, self.dim, self.hidden = num_experts, dim, hidden
        self.w_gate = nn.Parameter(torch.randn(num_experts, dim, hidden) * dim**-0.5)
        self.w_up = nn.Parameter(torch.randn(num_experts, dim, hidden) * dim**-0.5)
        self.w_out = nn.Parameter(torch.randn(num_experts, hidden, dim) * hidden**-0.5)

    def forward(self, x: Tensor, sizes: list[int] | Tensor) -> ExpertOutput:
        gate, up = grouped_mm(x, self.w_gate, sizes), grouped_mm(x, self.w_up, sizes)
        return self._output(grouped_mm(F.silu(gate) * up, self.w_out, sizes))

    def mixture(self, x: Tensor, dispatch: Dispatch, weights: Tensor) -> tuple[Tensor, ExpertOutput]:
        """Gather, experts and gate-weighted sum of inputs `x` (N, d) → (N, d), with the per-assignment output,
        in one pass per expert (`mor.nn.fused`)."""
        y, answers = swiglu_mixture(x, dispatch.assigned(weights), dispatch.tokens, dispatch.sizes, self.w_gate,
                                    self.w_up, self.w_out)
        return y, self._output(answers)

    @staticmethod
    def _output(answer: Tensor) -> ExpertOutput:
        ones = answer.new_ones(answer.shape[0])
        return ExpertOutput(answer=answer, confidence=ones, steps=ones.long())

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert `e` alone on rows `x`: the per-input reference the sorted dispatch must equal."""
        gate, up = x @ self.w_gate[e], x @ self.w_up[e]
        return (F.silu(gate) * up) @ self.w_out[e]


class ReflectionExperts(nn.ModuleList):
    """A bank of ReflectionExperts. In training each answer is its halting-weighted expectation over steps
    (PonderNet), or with `expected=False` its last step's: what inference at a fixed depth returns, for banks
    whose critic and halting get no training signal of their own (e.g. the FFN of a language model)."""

    def __init__(self, experts: Iterable[nn.Module], expected: bool = True):
        super().__init__(experts)
        self.expected = expected

    def forward(self, x: Tensor, sizes: list[int]) -> ExpertOutput:
        runs = [expert(xs) for expert, xs in zip(self, x.split(sizes), strict=True) if xs.shape[0] > 0]
        if not runs:
            return self._empty(x)
        answer = torch.cat([self._answer(r) for r in runs])
        out = ExpertOutput(answer=answer, confidence=torch.cat([r.confidence for r in runs]),
                           steps=torch.cat([r.steps for r in runs]))
        if self.training and self.expected:
            out.aux["halting_kl"] = torch.cat([halting_kl(r.halting_distribution) for r in runs]).mean()
        return out

    def _empty(self, x: Tensor) -> ExpertOutput:
        """The output for no rows (zero tokens): empty answers of the experts' width, as SwiGLUExperts gives."""
        none = x.new_zeros(0)
        out = ExpertOutput(answer=x.new_zeros(*x.shape[:-1], self[0].out_dim), confidence=none, steps=none.long())
        if self.training and self.expected:
            out.aux["halting_kl"] = x.new_zeros(())
        return out

    def _answer(self, run: Reflection) -> Tensor:
        """A run's answer as this bank gives it: in training, the expected one, or the last step's."""
        return run.answers[-1] if self.training and not self.expected else run.answer

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert `e` alone on rows `x`, answering as the bank does: the per-input reference of the dispatch."""
        return self._answer(self[e](x))


__all__ = ["ExpertOutput", "ReflectionExperts", "SwiGLU", "SwiGLUExperts"]
