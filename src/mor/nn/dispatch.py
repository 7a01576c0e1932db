"""Sorted dispatch: group (input, expert) assignments by expert so each expert runs on one contiguous slice.

No one-hot tensors of size inputs × experts × capacity: an argsort of the chosen expert ids, a gather of
the inputs in that order, and a scatter of the results back to their (input, slot) places.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from mor.nn.router import Routing, expert_counts


@dataclass
class Dispatch:
    """Where each of the A used assignments comes from and goes to, ordered by expert."""

    tokens: Tensor  # (A,) input row of each assignment, grouped by expert
    slots: Tensor  # (A,) flat (input·m + slot) position of each assignment
    counts: Tensor  # (E,) assignments per expert
    n: int
    m: int

    @classmethod
    def of(cls, routing: Routing) -> "Dispatch":
        n, m = routing.indices.shape
        flat = routing.indices.reshape(-1)
        used = routing.mask.reshape(-1)
        slots = torch.arange(n * m, device=flat.device) if routing.full else used.nonzero().squeeze(1)
        experts = flat[slots]
        order = torch.argsort(experts, stable=True)
        slots = slots[order]
        counts = expert_counts(experts, routing.probs.shape[-1])
        return cls(tokens=torch.div(slots, m, rounding_mode="floor"), slots=slots, counts=counts, n=n, m=m)

    @property
    def sizes(self) -> list[int]:
        """Assignments per expert as Python ints, to split the sorted slice (on a GPU, the host waits for them;
        torch's grouped-matmul kernel reads `counts` on the device instead)."""
        return self.counts.tolist()

    def gather(self, x: Tensor) -> Tensor:
        """Rows of `x` (N, ...) in dispatch order, (A, ...)."""
        return x.index_select(0, self.tokens)

    def scatter(self, y: Tensor, dim: int = 0) -> Tensor:
        """Put per-assignment results (A along `dim`) back in place: (.., N, m, ..), zeros in unused slots."""
        shape = list(y.shape)
        shape[dim] = self.n * self.m
        return y.new_zeros(shape).index_copy(dim, self.slots, y).unflatten(dim, (self.n, self.m))

    def assigned(self, weights: Tensor) -> Tensor:
        """Router `weights` (N, m) of the assignments in dispatch order, (A,)."""
        return weights.reshape(-1)[self.slots]

    def combine(self, y: Tensor, weights: Tensor) -> Tensor:
        """Weighted sum of each input's assignment results (A, D) with router `weights` (N, m) → (N, D).

        One scatter-add: the classic MoE combine, without building the (N, m, D) slot tensor.
        """
        w = self.assigned(weights).unsqueeze(-1).to(y.dtype)
        return y.new_zeros(self.n, y.shape[-1]).index_add(0, self.tokens, y * w)
