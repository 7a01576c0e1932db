"""The shared layout of the bit-sequence tasks: (N, L, channels + 1) float inputs whose last channel is a
constant 1 marking real positions (so zero padding is never mistaken for a 0 bit), and a class per position."""

from abc import abstractmethod

import torch
from torch import Tensor

from mor.data.base import Batch, StreamTask


class BitSequenceTask(StreamTask):
    """A stream of sequences with a binary label per position; `length(size)` positions per instance."""

    kind = "classification"
    sequence = True
    out_dim = 2
    channels: int  # data channels, before the constant-1 channel

    @property
    def in_dim(self) -> int:
        return self.channels + 1

    def batch(self, n: int, generator: torch.Generator, size: int | None = None) -> Batch:
        return self.sequences(n, self.length(self.draw_size(size, generator)), generator)

    def length(self, size: int) -> int:
        """Positions of an instance of `size`."""
        return size

    @abstractmethod
    def sequences(self, n: int, length: int, generator: torch.Generator) -> Batch:
        """`n` instances laid out over exactly `length` positions: (n, length, in_dim) and (n, length) labels."""


def with_marker(data: Tensor) -> Tensor:
    """Append the constant-1 channel to (N, L, C) data."""
    return torch.cat([data, torch.ones_like(data[..., :1])], -1)
