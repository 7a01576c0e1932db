"""The sparse SwiGLU mixture in one pass: per expert, gather its inputs, run its three products and add its
gate-weighted answers into the output.

Autograd through the separate steps (gather, grouped products, weighted scatter-add) keeps every intermediate:
the gathered inputs, gate, SiLU, up, hidden and weighted answers, 44 MiB on the layer benchmark's small config
where a dense SwiGLU of the same active width keeps 32. This keeps the gate and up projections and the answers
(20 MiB) and recomputes the rest in backward, one expert's rows at a time, while they are still in cache.
Without autograd (inference) even those are per-expert temporaries.
"""

from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import Tensor


def _blocks(sizes: list[int]) -> list[tuple[int, slice]]:
    """(expert, its rows in the sorted assignments) for every expert that has rows."""
    return [(e, slice(end - n, end)) for e, (n, end) in enumerate(zip(sizes, accumulate(sizes), strict=True)) if n]


def _mix(x: Tensor, weights: Tensor, tokens: Tensor, sizes: list[int], w_gate: Tensor, w_up: Tensor, w_out: Tensor,
         keep: bool) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Output, answers and, if `keep` (for backward), the gate and up projections of all rows."""
    rows_total = tokens.shape[0]
    gate, up = (x.new_empty(rows_total, w.shape[-1]) if keep else None for w in (w_gate, w_up))
    answers, out = x.new_empty(rows_total, w_out.shape[-1]), x.new_zeros(x.shape[0], w_out.shape[-1])
    for e, rows in _blocks(sizes):
        xs = x.index_select(0, tokens[rows])
        g = torch.mm(xs, w_gate[e], out=None if gate is None else gate[rows])
        u = torch.mm(xs, w_up[e], out=None if up is None else up[rows])
        torch.mm(F.silu(g).mul_(u), w_out[e], out=answers[rows])
        out.index_add_(0, tokens[rows], answers[rows] * weights[rows, None])
    return out, answers, gate, up


def _expert_grad(w: Tensor, sizes: list[int]) -> Tensor:
    """A gradient buffer for stacked expert weights `w` (E, ...): each expert with rows writes its own slice,
    so only experts without rows are zeroed (zero-filling all of it cost 2.6 % of a training step)."""
    grad = torch.empty_like(w)
    grad[[e for e, n in enumerate(sizes) if not n]] = 0
    return grad


class _SwiGLUMixture(torch.autograd.Function):
    """out[i] = Σ over i's assignments a of weights[a] · SwiGLU_expert(a)(x[i]); also returns the answers."""

    @staticmethod
    def forward(ctx, x: Tensor, weights: Tensor, tokens: Tensor, sizes: list[int], w_gate: Tensor, w_up: Tensor,
                w_out: Tensor) -> tuple[Tensor, Tensor]:
        out, answers, gate, up = _mix(x, weights, tokens, sizes, w_gate, w_up, w_out, keep=True)
        ctx.save_for_backward(x, weights, tokens, gate, up, answers, w_gate, w_up, w_out)
        ctx.sizes = sizes
        ctx.mark_non_differentiable(answers)
        ctx.set_materialize_grads(False)  # the answers' gradient is always None: no (A, D) zeros for it
        return out, answers

    @staticmethod
    def backward(ctx, grad: Tensor | None, _: None) -> tuple[Tensor | None, ...]:
        if grad is None:  # only the answers reached backward (as in gradcheck), and they carry no gradient
            return (None,) * 7
        with torch.autocast(grad.device.type, enabled=False):  # a backward inside an autocast region
            return _SwiGLUMixture._backward(ctx, grad.to(ctx.saved_tensors[0].dtype))

    @staticmethod
    def _backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weights, tokens, gate, up, answers, w_gate, w_up, w_out = ctx.saved_tensors
        grad = grad.contiguous()
        need_x, need_weights, *_, need_gate, need_up, need_out = ctx.needs_input_grad
        grad_x = torch.zeros_like(x) if need_x else None
        grad_weights = torch.empty_like(weights) if need_weights else None
        grad_gate, grad_up, grad_out = (_expert_grad(w, ctx.sizes) if need else None
                                        for w, need in ((w_gate, need_gate), (w_up, need_up), (w_out, need_out)))
        for e, rows in _blocks(ctx.sizes):
            g = grad.index_select(0, tokens[rows])
            if grad_weights is not None:
                torch.linalg.vecdot(g, answers[rows], out=grad_weights[rows])
            g.mul_(weights[rows, None])
            xs, act = x.index_select(0, tokens[rows]), F.silu(gate[rows])
            if grad_out is not None:
                torch.mm((act * up[rows]).t(), g, out=grad_out[e])
            hidden = torch.mm(g, w_out[e].t())
            d_up = hidden * act
            d_gate = torch.ops.aten.silu_backward(hidden.mul_(up[rows]), gate[rows])
            if grad_gate is not None:
                torch.mm(xs.t(), d_gate, out=grad_gate[e])
            if grad_up is not None:
                torch.mm(xs.t(), d_up, out=grad_up[e])
            if grad_x is not None:
                grad_x.index_add_(0, tokens[rows], torch.mm(d_gate, w_gate[e].t()).addmm_(d_up, w_up[e].t()))
        return grad_x, grad_weights, None, None, grad_gate, grad_up, grad_out


def swiglu_mixture(x: Tensor, weights: Tensor, tokens: Tensor, sizes: list[int], w_gate: Tensor, w_up: Tensor,
                   w_out: Tensor) -> tuple[Tensor, Tensor]:
    """Gate-weighted sum of SwiGLU experts over sorted assignments → (output (N, D), answers (A, D)).

    `tokens` (A,) are the input rows of the assignments grouped by expert in blocks of `sizes`, `weights` (A,)
    their gate weights, `w_gate`/`w_up` (E, d, h) and `w_out` (E, h, D) the stacked expert weights. The
    per-assignment answers are returned for diagnostics and carry no gradient.
    """
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype  # as mm would
    tensors = tuple(t.to(dtype) for t in (x, weights, w_gate, w_up, w_out))
    with torch.autocast(device, enabled=False):  # dtypes set here; backward turns autocast off itself
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            x, weights, w_gate, w_up, w_out = tensors
            return _SwiGLUMixture.apply(x, weights, tokens, sizes, w_gate, w_up, w_out)
        return _mix(*tensors[:2], tokens, sizes, *tensors[2:], keep=False)[:2]


__all__ = ["swiglu_mixture"]
