"""PonderNet's parity task: count the +1s among entries in {-1, 0, +1}. The vector form asks one bit per
input and needs more steps for more non-zero entries; the sequence form asks it at every position."""

from collections.abc import Sequence

import torch
from torch import Tensor

from mor.data.base import Batch, StreamTask, check_sizes
from mor.data.bits import BitSequenceTask, with_marker
from mor.data.prefix_sum import prefix_parity
from mor.errors import check


class Parity(StreamTask):
    """Vectors (N, dim) with `size` entries set to ±1 and the rest 0; label (N,) = parity of the number of +1s.

    Training draws each vector's count of non-zero entries from `sizes` (default: 1 to dim // 2, so larger
    counts test extrapolation); `batch(size=s)` gives exactly `s`.
    The non-zero entries sit at random positions, or at the first ones with `leading=True` (as in ACT).
    """

    name = "parity"
    kind = "classification"
    sequence = False
    out_dim = 2

    def __init__(self, dim: int = 64, sizes: Sequence[int] | None = None, leading: bool = False):
        check(isinstance(dim, int) and dim >= 1, f"data.dim: expected a positive integer, got {dim!r}")
        check(isinstance(leading, bool), f"data.leading: expected true or false, got {leading!r}")
        self.in_dim = self.max_size = dim
        sizes = (1, max(1, dim // 2)) if sizes is None else sizes
        self.sizes, self.leading = check_sizes(sizes, max_size=dim), leading

    def batch(self, n: int, generator: torch.Generator, size: int | None = None) -> Batch:
        if size is None:
            low, high = self.sizes
            counts = torch.randint(low, high + 1, (n, 1), generator=generator)
        else:
            counts = torch.full((n, 1), self.draw_size(size, generator))
        rank = torch.arange(self.in_dim).expand(n, -1)
        if not self.leading:
            rank = torch.rand(n, self.in_dim, generator=generator).argsort(1).argsort(1)
        signs = torch.randint(0, 2, (n, self.in_dim), generator=generator) * 2 - 1
        x = (signs * (rank < counts)).float()
        return x, plus_parity(x)


class SequenceParity(BitSequenceTask):
    """Sequences (N, L, 2) of entries in {-1, 0, +1} (each 0 with probability 1/2) and the constant-1 channel;
    label t = parity of the +1s among entries 0..t. The size is the length."""

    name = "sequence_parity"
    channels = 1

    def __init__(self, sizes: Sequence[int] = (8, 32)):
        self.sizes = check_sizes(sizes)

    def sequences(self, n: int, length: int, generator: torch.Generator) -> Batch:
        entries = torch.tensor([0, 0, 1, -1])[torch.randint(0, 4, (n, length), generator=generator)]
        return with_marker(entries.float()[..., None]), prefix_parity((entries == 1).long())


def plus_parity(x: Tensor) -> Tensor:
    """Parity of the number of +1 entries of each row of (N, dim) vectors, (N,)."""
    return (x == 1).sum(1) % 2
