"""Prefix sums mod 2 (running parity) of bit strings: label t is the XOR of bits 0..t, so information must
travel from every earlier position; a reflecting expert spreads it a few positions per step."""

from collections.abc import Sequence

import torch
from torch import Tensor

from mor.data.base import Batch, check_sizes
from mor.data.bits import BitSequenceTask, with_marker


class PrefixSum(BitSequenceTask):
    """Bit strings (N, L, 2) — the bit and the constant-1 channel — with the running parity (N, L) as labels.

    The size is the string length; training lengths are drawn from `sizes`.
    """

    name = "prefix_sum"
    channels = 1

    def __init__(self, sizes: Sequence[int] = (8, 32)):
        self.sizes = check_sizes(sizes)

    def sequences(self, n: int, length: int, generator: torch.Generator) -> Batch:
        bits = torch.randint(0, 2, (n, length), generator=generator)
        return with_marker(bits.float()[..., None]), prefix_parity(bits)


def prefix_parity(bits: Tensor) -> Tensor:
    """Running parity of (N, L) 0/1 ints along the positions: label t = bits 0..t summed mod 2."""
    return bits.cumsum(1) % 2
