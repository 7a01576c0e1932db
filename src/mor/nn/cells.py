"""Refine cells: the step function an expert repeats while it reflects; each maps (n, ..., H) to (n, ..., H).

A cell returns an update, not a new state: `ReflectionExpert` adds it to the state (a residual step).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mor.errors import ShapeError, check


class MLPCell(nn.Module):
    """Two-layer MLP for vector inputs (any shape ending in H)."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or 2 * dim
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, h: Tensor) -> Tensor:
        return self.net(self.norm(h))


class ConvCell(nn.Module):
    """Residual 1-D convolution block over positions for sequences laid out (n, L, H)."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        check(kernel_size >= 1 and kernel_size % 2 == 1,
              f"ConvCell: kernel_size must be odd so the output keeps the input's length, got {kernel_size}")
        self.conv1 = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)

    def forward(self, h: Tensor) -> Tensor:
        _check_sequences("ConvCell", h)
        h = h.transpose(1, 2)
        return self.conv2(F.relu(self.conv1(F.relu(h)))).transpose(1, 2)


class TransformerCell(nn.Module):
    """Pre-norm self-attention plus MLP over positions (n, L, H); `causal` masks future positions. Queries and keys
    carry rotary position embeddings (RoFormer), so attention knows order, relative and at any length: without
    them a sequence cell would be blind to order (a permuted input gives the permuted output)."""

    def __init__(self, dim: int, heads: int = 4, hidden: int | None = None, causal: bool = False):
        super().__init__()
        check(heads >= 1 and dim % heads == 0 and dim // heads % 2 == 0,
              f"TransformerCell: dim ({dim}) must be a multiple of 2 × heads ({heads}), so each head's width is even "
              "for its rotary pairs; change one of them")
        self.heads, self.causal = heads, causal
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden or 2 * dim), nn.GELU(), nn.Linear(hidden or 2 * dim, dim))

    def forward(self, h: Tensor) -> Tensor:
        _check_sequences("TransformerCell", h)  # a 2-D input would be one sequence of the whole batch
        n, length, dim = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        angles = rotary_angles(length, dim // self.heads, h.device)
        a = F.scaled_dot_product_attention(rotated(q, angles), rotated(k, angles), v, is_causal=self.causal)
        a = self.proj(a.transpose(1, 2).reshape(n, length, dim))
        return a + self.mlp(self.norm2(h + a))


def rotary_angles(length: int, width: int, device: torch.device) -> Tensor:
    """(L, width/2) angles position × 10000^(-2i/width): each pair of a head's channels turns at its own rate."""
    rates = 10000.0 ** -(torch.arange(0, width, 2, device=device, dtype=torch.float32) / width)
    return torch.arange(length, device=device, dtype=torch.float32)[:, None] * rates


def rotated(x: Tensor, angles: Tensor) -> Tensor:
    """`x` (..., L, width) with its two halves' channel pairs rotated by `angles`; a dot product of rotated queries
    and keys then depends on their positions' difference only."""
    first, second = x.float().chunk(2, dim=-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1).to(x.dtype)


def _check_sequences(name: str, h: Tensor) -> None:
    """Cells over positions need (n, L, H): a batch of vectors would mix inputs (attention) or fail (conv)."""
    if h.dim() != 3:
        raise ShapeError(f"{name}: works over positions and needs sequences (n, L, H), got {tuple(h.shape)}; "
                         f"use MLPCell for vectors")
