"""Grouped matmul: rows grouped by expert times that expert's weight, written straight into one buffer.

Each group is one `mm` into its slice of a preallocated output, forward and backward, so no concatenation,
stacking or zero-filled per-expert weight gradients appear; on CPU this is as fast as torch's grouped_mm
kernel or faster. CUDA bf16 uses `torch.nn.functional.grouped_mm`.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


class _GroupedMM(torch.autograd.Function):
    """out[rows of group e] = x[rows of group e] @ weight[e], for contiguous groups of `sizes` rows."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, sizes: list[int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.sizes = sizes
        out = x.new_empty(x.shape[0], weight.shape[-1])
        for xs, w, o in zip(x.split(sizes), weight.unbind(0), out.split(sizes), strict=True):
            if xs.shape[0]:
                torch.mm(xs, w, out=o)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        nothing = [None] * len(ctx.sizes)
        for xs, gs, w, gx, gw in zip(x.split(ctx.sizes), grad.split(ctx.sizes), weight.unbind(0),
                                     nothing if grad_x is None else grad_x.split(ctx.sizes),
                                     nothing if grad_w is None else grad_w.unbind(0), strict=True):
            if xs.shape[0] and gx is not None:
                torch.mm(gs, w.t(), out=gx)
            if gw is not None:
                torch.mm(xs.t(), gs, out=gw)  # an expert with no rows gets a zero gradient
        return grad_x, grad_w, None


def grouped_kernel(x: Tensor, *widths: int) -> bool:
    """Whether products on `x` go to torch's grouped-matmul kernel rather than one `mm` per group: bf16 on a CUDA
    GPU of compute capability 8.0 or more, with every row a multiple of 16 bytes (the kernel's alignment), i.e.
    `x`'s width and each of `widths` (the weights' output widths) a multiple of 8."""
    return (x.is_cuda and x.dtype == torch.bfloat16 and hasattr(F, "grouped_mm")
            and all(w % 8 == 0 for w in (x.shape[-1], *widths))
            and torch.cuda.get_device_capability(x.device) >= (8, 0))


def grouped_mm(x: Tensor, weight: Tensor, sizes: list[int] | Tensor) -> Tensor:
    """Rows of `x` (A, K), grouped by expert in blocks of `sizes`, times `weight[e]` (E, K, N) → (A, N).
    `sizes` may be a tensor on `x`'s device, which torch's kernel reads there: the host need not wait for it."""
    weight = weight.to(x.dtype)
    if grouped_kernel(x, weight.shape[-1]):
        offsets = torch.as_tensor(sizes, device=x.device).cumsum(0).to(torch.int32)
        return F.grouped_mm(x, weight, offs=offsets)
    return _GroupedMM.apply(x, weight, sizes.tolist() if isinstance(sizes, Tensor) else sizes)
