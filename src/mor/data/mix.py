"""Several bit-sequence tasks in one stream, the task of each instance hidden from the model: a router should
learn to tell them apart from the input alone and send each to the experts that solve it."""

from collections.abc import Sequence
from itertools import accumulate

import torch
from torch import Tensor

from mor.data.addition import Addition
from mor.data.base import GroupedTask, check_sizes
from mor.data.bits import BitSequenceTask
from mor.data.parity import SequenceParity
from mor.data.prefix_sum import PrefixSum
from mor.errors import check

FLOAT32_MAX = torch.finfo(torch.float32).max
MIXABLE: dict[str, type[BitSequenceTask]] = {"prefix_sum": PrefixSum, "addition": Addition,
                                            "sequence_parity": SequenceParity}


class Mix(GroupedTask):
    """Instances of `tasks` drawn by `weights` into one batch, all of the same length (the size knob).

    Each task writes its data channels into its own slot of a common input, (N, L, Σ channels + 1), with the
    shared constant-1 channel last, so inputs say which task they belong to without an explicit id (an
    all-zero input means the same, all-zero labels, in every task); labels are one bit per position.
    The group of an instance is its task's index in `tasks`.
    """

    name = "mix"
    kind = "classification"
    sequence = True
    out_dim = 2

    def __init__(self, tasks: Sequence[str] = ("prefix_sum", "addition", "sequence_parity"),
                 sizes: Sequence[int] = (8, 32), weights: Sequence[float] | None = None):
        check(isinstance(tasks, Sequence) and not isinstance(tasks, str) and len(tasks) >= 1
              and len(set(tasks)) == len(tasks) and all(t in MIXABLE for t in tasks),
              f"data.tasks: expected distinct names from {', '.join(MIXABLE)}, got {tasks!r}")
        weights = [1.0] * len(tasks) if weights is None else weights
        valid = (isinstance(weights, Sequence) and len(weights) == len(tasks)
                 and all(isinstance(w, int | float) and w >= 0 for w in weights) and sum(weights) <= FLOAT32_MAX)
        check(valid and float(torch.tensor(weights, dtype=torch.float).sum()) > 0,
              f"data.weights: expected {len(tasks)} non-negative numbers, not all 0 in float32, with a finite sum (at "
              f"most {FLOAT32_MAX:.3g}, as the float32 weights are summed when drawn), got {weights!r}")
        self.groups = tuple(tasks)
        self.components = [MIXABLE[t]() for t in tasks]
        self.weights = torch.tensor(weights, dtype=torch.float)
        self.offsets = list(accumulate((c.channels for c in self.components), initial=0))
        self.in_dim = self.offsets[-1] + 1
        self.min_size = max(c.length(1) for c in self.components)
        self.sizes = check_sizes(sizes, min_size=self.min_size)

    def grouped_batch(self, n: int, generator: torch.Generator, size: int | None = None
                      ) -> tuple[Tensor, Tensor, Tensor]:
        length = self.draw_size(size, generator)
        group = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        x, y = torch.zeros(n, length, self.in_dim), torch.zeros(n, length, dtype=torch.long)
        x[..., -1] = 1
        for g, component in enumerate(self.components):
            rows = (group == g).nonzero().squeeze(1)
            part_x, part_y = component.sequences(len(rows), length, generator)
            x[rows, :, self.offsets[g]:self.offsets[g + 1]] = part_x[..., :-1]
            y[rows] = part_y
        return x, y, group
