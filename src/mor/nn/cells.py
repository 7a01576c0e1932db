"""Refine cells: the step function an expert repeats while it reflects; each maps (n, ..., H) to (n, ..., H).

A cell returns an update, not a new state: `ReflectionExpert` adds it to the state (a residual step).
"""

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
    """Pre-norm self-attention plus MLP over positions (n, L, H); `causal` masks future positions."""

    def __init__(self, dim: int, heads: int = 4, hidden: int | None = None, causal: bool = False):
        super().__init__()
        check(heads >= 1 and dim % heads == 0,
              f"TransformerCell: dim ({dim}) must be a multiple of heads ({heads}); change one of them")
        self.causal = causal
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden or 2 * dim), nn.GELU(), nn.Linear(hidden or 2 * dim, dim))

    def forward(self, h: Tensor) -> Tensor:
        _check_sequences("TransformerCell", h)  # a 2-D input would be one sequence of the whole batch
        a = self.norm1(h)
        a, _ = self.attn(a, a, a, need_weights=False, is_causal=self.causal,
                         attn_mask=nn.Transformer.generate_square_subsequent_mask(h.shape[1], device=h.device)
                         if self.causal else None)
        return a + self.mlp(self.norm2(h + a))


def _check_sequences(name: str, h: Tensor) -> None:
    """Cells over positions need (n, L, H): a batch of vectors would mix inputs (attention) or fail (conv)."""
    if h.dim() != 3:
        raise ShapeError(f"{name}: works over positions and needs sequences (n, L, H), got {tuple(h.shape)}; "
                         f"use MLPCell for vectors")
