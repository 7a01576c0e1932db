"""Softmax over a short last dimension (a few classes or experts), fast on CPU; and the epsilon of guards.

PyTorch's CPU kernel runs a scalar loop per row when the last dimension is short; over the transposed view the
same softmax is vectorised across rows. For 2 to 10 classes that is 5-8x faster forward and about 5x forward
plus backward (49,152 rows, 1 thread); from 16 on the plain kernel wins. Reflection feeds a 2-class answer back
at every step, so the main job spends real time here. Elsewhere (CUDA, long dims) these are torch's own.

`eps` is what divisions and logs are clamped to: a literal 1e-9 rounds to 0 in float16 (giving inf and NaN), so
there it is float16's smallest normal number; in float32 and bfloat16 it is the literal, numerics unchanged.
`normalized` divides weights by their sum without that clamp shrinking rows whose weights are all tiny.
"""

import torch
from torch import Tensor

SHORT = 16  # last dimensions below this take the transposed path on CPU


def _transposed(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dim() >= 2 and x.shape[-1] < SHORT


def softmax(x: Tensor) -> Tensor:
    """`x.softmax(-1)`."""
    return x.transpose(-1, -2).softmax(-2).transpose(-1, -2) if _transposed(x) else x.softmax(-1)


def log_softmax(x: Tensor) -> Tensor:
    """`x.log_softmax(-1)`."""
    return x.transpose(-1, -2).log_softmax(-2).transpose(-1, -2) if _transposed(x) else x.log_softmax(-1)


def eps(dtype: torch.dtype, floor: float = 1e-9) -> float:
    """The guard `floor` of a division or log, raised to `dtype`'s smallest normal number so it is not 0 there."""
    return max(floor, torch.finfo(dtype).tiny)


def lifted(w: Tensor) -> Tensor:
    """`w` with each row (last dimension) that sums below `eps` divided by its largest entry, so that dividing by
    the row's sum afterwards gives weights summing to 1, not to sum/eps (all-tiny confidences or sigmoid scores
    would otherwise shrink the answer towards 0). Other rows come back bit for bit; all-zero rows stay 0."""
    small, top = w.sum(-1, keepdim=True) < eps(w.dtype), w.detach().amax(-1, keepdim=True)
    return torch.where(small, w / torch.where(top > 0, top, 1.0), w)


def normalized(w: Tensor) -> Tensor:
    """`w` rescaled to sum to 1 over its last dimension (rows of zeros stay 0)."""
    w = lifted(w)
    return w / w.sum(-1, keepdim=True).clamp_min(eps(w.dtype))
