"""A small decoder-only transformer over tokens whose FFN is dense, a sparse MoE, or a MoR layer.

The ready model for token-level MoR (e.g. character language models) and its baselines in one class:
the FFN kind is the only thing that changes.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mor.errors import ShapeError, check
from mor.nn.cells import MLPCell
from mor.nn.diagnostics import Diagnostics, merge
from mor.nn.experts import ReflectionExperts, SwiGLU
from mor.nn.layer import MoRLayer, reflection_layer
from mor.nn.losses import LossWeights, holds_ids
from mor.nn.reflection import Halting, ReflectionExpert

FFNKind = Literal["dense", "moe", "mor"]
IGNORE = -100  # a target that counts in no loss (padding), as in torch's cross_entropy and Hugging Face labels


def padded_attention(mask: Tensor) -> Tensor:
    """(B, 1, T, T) bool: each query sees the real keys up to itself. Padding is seen by no one; a padding query
    sees itself alone, so that no row of the attention is empty (which would give NaN)."""
    length = mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    return ((causal & mask[:, None, :]) | torch.eye(length, dtype=torch.bool, device=mask.device))[:, None]


class Block(nn.Module):
    """Pre-norm causal self-attention followed by a pre-norm FFN, both residual."""

    def __init__(self, dim: int, heads: int, ffn: nn.Module):
        super().__init__()
        self.heads, self.ffn = heads, ffn
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, attend: Tensor | None = None, mask: Tensor | None = None
                ) -> tuple[Tensor, Diagnostics | None]:
        """`attend` (B, 1, T, T) bool: which keys each query sees (None: causal); `mask` (B, T): the real tokens,
        which alone a MoR FFN routes."""
        q, k, v = self.qkv(self.norm1(x)).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, is_causal=attend is None)
        x = x + self.proj(attended.transpose(1, 2).flatten(2))
        if isinstance(self.ffn, MoRLayer):
            y, diagnostics = self.ffn(self.norm2(x), return_diagnostics=True, mask=mask)
            return x + y, diagnostics
        return x + self.ffn(self.norm2(x)), None


class TokenModel(nn.Module):
    """Token ids (B, T) → next-token logits (B, T, vocab), with `ffn` = dense, moe or mor in every block.

    `moe`: `num_experts` SwiGLU experts of width `hidden`, top-k. `mor`: reflection experts with MLP cells
    that refine each token's FFN output for `train_steps` steps in training and under `halting` at inference
    (default: `train_steps` steps); they are trained on their last step's answer and mixed by router gate,
    since nothing here trains their critic or halting head (only the next-token loss reaches them).
    `dense`: one SwiGLU of width k·hidden, the same active parameters as `moe`.
    """

    def __init__(self, vocab: int, dim: int = 128, depth: int = 2, heads: int = 4, max_len: int = 256, *,
                 ffn: FFNKind = "mor", num_experts: int = 4, k: int = 2, hidden: int = 256, train_steps: int = 3,
                 halting: Halting | None = None):
        super().__init__()
        check(ffn in ("dense", "moe", "mor"), f"TokenModel: ffn must be 'dense', 'moe' or 'mor', got {ffn!r}")
        check(min(vocab, dim, depth, heads, max_len, num_experts, hidden) >= 1,
              f"TokenModel: vocab ({vocab}), dim ({dim}), depth ({depth}), heads ({heads}), max_len ({max_len}), "
              f"num_experts ({num_experts}) and hidden ({hidden}) must all be >= 1")
        check(dim % heads == 0, f"TokenModel: dim ({dim}) must be divisible by heads ({heads})")
        self.max_len, self.ffn_kind = max_len, ffn
        self.embed, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, self._ffn(ffn, dim, num_experts, k, hidden, train_steps,
                                                                halting)) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    @staticmethod
    def _ffn(kind: FFNKind, dim: int, num_experts: int, k: int, hidden: int, train_steps: int,
             halting: Halting | None) -> nn.Module:
        if kind == "dense":
            return SwiGLU(dim, k * hidden)
        if kind == "moe":
            return MoRLayer.swiglu(dim, hidden, num_experts, k)
        experts = ReflectionExperts((ReflectionExpert(MLPCell(dim, hidden), dim, dim, dim=dim, classes=False,
                                                      train_steps=train_steps, halting=halting)
                                     for _ in range(num_experts)), expected=False)
        return reflection_layer(experts, dim, k, mode="gate")

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the FFN layers' auxiliary losses summed over blocks. `mask` (B, T) bool, as a tokenizer's
        attention mask gives, marks the real tokens of a padded batch (padding left or right): padding is attended
        by no token, routed by no MoR FFN and takes no position, so each sequence's logits at its real tokens are
        those it gets alone; logits at padding mean nothing."""
        if tokens.dim() != 2 or tokens.shape[1] > self.max_len or 0 in tokens.shape:
            raise ShapeError(f"TokenModel: expected token ids (B, T) with B >= 1 and 1 <= T <= {self.max_len}, "
                             f"got {tuple(tokens.shape)}")
        vocab, (low, high) = self.embed.num_embeddings, (v.item() for v in tokens.aminmax())
        if not holds_ids(tokens) or low < 0 or high >= vocab:
            raise ShapeError(f"TokenModel: token ids must be integers in [0, {vocab}), got dtype {tokens.dtype} with "
                             f"values from {low} to {high}; encode with the model's vocabulary")
        if mask is None:
            positions, attend = torch.arange(tokens.shape[1], device=tokens.device), None
        else:
            if mask.shape != tokens.shape or mask.dtype != torch.bool:
                raise ShapeError(f"TokenModel: mask must be bool of the tokens' shape {tuple(tokens.shape)}, got "
                                 f"{mask.dtype} of shape {tuple(mask.shape)}; pass attention_mask.bool()")
            positions, attend = (mask.cumsum(1) - 1).clamp_min(0), padded_attention(mask)
        x = self.embed(tokens) + self.pos(positions)
        found = []
        for block in self.blocks:
            x, diagnostics = block(x, attend, mask)
            found += [diagnostics] if diagnostics is not None else []
        return self.head(self.norm(x)), merge(found)

    def loss(self, x: Tensor, y: Tensor, weights: LossWeights | None = None, mask: Tensor | None = None
             ) -> tuple[Tensor, dict[str, Tensor], None]:
        """Next-token cross-entropy ("task") plus the FFN layers' auxiliary losses, each weighted by its
        `LossWeights` field; the contract of `MoRModel.loss`, so one training loop serves both. Targets equal to
        `IGNORE` (-100, as Hugging Face pads labels) count in no loss; `mask` marks the real tokens of `x`."""
        w = weights or LossWeights()
        if y.shape != x.shape or not holds_ids(y):
            raise ShapeError(f"TokenModel.loss: targets y of shape {tuple(y.shape)} and dtype {y.dtype} do not fit "
                             f"token ids of shape {tuple(x.shape)}; give the next token's id at every position, "
                             f"integers of shape {tuple(x.shape)}")
        kept = y[y != IGNORE]
        vocab, (low, high) = self.head.out_features, (int(v) for v in kept.aminmax()) if kept.numel() else (0, 0)
        if low < 0 or high >= vocab:
            raise ShapeError(f"TokenModel.loss: target ids must be in [0, {vocab}) or {IGNORE} (ignored), got {low} "
                             f"to {high}; give ids of the model's vocabulary")
        logits, aux = self(x, mask)
        parts = {"task": F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE), **aux}
        total = sum(getattr(w, name) * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}, None
