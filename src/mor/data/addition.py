"""Multi-digit binary addition as a sequence: per position both operand bits in (least significant first),
the sum bit out; the carry must travel along the sequence, one or a few positions per reflection step."""

from collections.abc import Sequence

import torch

from mor.data.base import Batch, check_sizes
from mor.data.bits import BitSequenceTask, with_marker
from mor.errors import check


class Addition(BitSequenceTask):
    """Operand bits (N, L+1, 3) — a bit, b bit, constant 1 — and the bits of a + b (N, L+1) as labels.

    The size L is the number of digits; the last position holds the final carry (both operands 0 there).
    Random operands have short carry chains, so a few steps suffice. With `carry_chain=True` the first two
    digits are 1+1 then 0+0 (no carry out) or 0+0 then 1+1 (a carry out), at random, and every later digit
    propagates (one operand's bit 1, the other's 0): each sum bit then depends on the order of the first two,
    so it cannot be right without carrying that information the whole length. Both cases have the same bits
    in each operand, so no average over positions tells them apart, and a fixed guess gets about half right.
    """

    name = "addition"
    channels = 2

    def __init__(self, sizes: Sequence[int] = (8, 32), carry_chain: bool = False):
        check(isinstance(carry_chain, bool), f"data.carry_chain: expected true or false, got {carry_chain!r}")
        self.min_size = 2 if carry_chain else 1  # a carry chain starts in the first digit and runs past it
        self.sizes, self.carry_chain = check_sizes(sizes, self.min_size), carry_chain

    def length(self, size: int) -> int:
        return size + 1

    def sequences(self, n: int, length: int, generator: torch.Generator) -> Batch:
        check(length >= 2, f"addition: needs at least 2 positions (1 digit and the carry), got {length}")
        a, b = torch.randint(0, 2, (2, n, length), generator=generator)
        if self.carry_chain:
            check(length >= 3, f"addition: a carry chain needs at least 3 positions, got {length}")
            b = 1 - a
            carry = torch.randint(0, 2, (n,), generator=generator)
            a[:, 0] = b[:, 0] = 1 - carry
            a[:, 1] = b[:, 1] = carry
        a[:, -1] = b[:, -1] = 0
        return with_marker(torch.stack([a, b], -1).float()), add_bits(a, b)


def add_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Ripple-carry sum of two (N, L) bit tensors, least significant bit first; the carry out is dropped."""
    carry, out = torch.zeros_like(a[:, 0]), []
    for t in range(a.shape[1]):
        total = a[:, t] + b[:, t] + carry
        out.append(total % 2)
        carry = total // 2
    return torch.stack(out, 1)
