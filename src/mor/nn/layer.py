"""MoRLayer: router → sorted dispatch → expert bank → integrator, on any (..., d) input.

Usable as the FFN of a transformer block: tokens are flattened, each routed to its experts, and the
integrated answers put back in the input's shape. A padding `mask` keeps pad tokens out of routing altogether.
"""

from typing import Literal

import torch
from torch import Tensor, nn

from mor.errors import ShapeError, check
from mor.nn.diagnostics import Diagnostics
from mor.nn.dispatch import Dispatch
from mor.nn.experts import ExpertOutput, ReflectionExperts, SwiGLUExperts
from mor.nn.grouped import grouped_kernel
from mor.nn.integration import Integrator
from mor.nn.router import Router


class MoRLayer(nn.Module):
    """Mixture of (reflecting) experts over the last dimension: (..., dim) → (..., out_dim).

    `experts` is a bank (`SwiGLUExperts`, `ReflectionExperts`, or any module with the same
    `(rows grouped by expert, sizes) → ExpertOutput` contract). A bank that also has `mixture(x, dispatch,
    weights)`, as `SwiGLUExperts` does, runs gate integration itself, fused with its products (except where
    torch's grouped-matmul kernel runs the products, CUDA bf16).
    """

    def __init__(self, router: Router, experts: nn.Module, integrator: Integrator | None = None):
        super().__init__()
        self.router, self.experts = router, experts
        self.integrator = integrator or Integrator("gate")
        check(self.integrator.mode != "gate" or not self.integrator.classes,
              "MoRLayer: Integrator(classes=True) is not supported in mode 'gate', which mixes answers as values; "
              "use mode 'confidence' or classes=False")

    @classmethod
    def swiglu(cls, dim: int, hidden: int, num_experts: int, k: int = 2, **router_kwargs) -> "MoRLayer":
        """The classic sparse MoE FFN: `num_experts` SwiGLU experts of width `hidden`, top-k gating."""
        return cls(Router(dim, num_experts, k, **router_kwargs), SwiGLUExperts(num_experts, dim, hidden))

    def forward(self, x: Tensor, return_diagnostics: bool = False, mask: Tensor | None = None
                ) -> Tensor | tuple[Tensor, Diagnostics]:
        """(..., dim) → (..., out_dim). `mask` (bool, x.shape[:-1], e.g. an attention mask) marks the real tokens:
        padding is not routed, costs no expert compute, counts in no router loss or statistic and gets output 0;
        the diagnostics then describe the real tokens alone, in order."""
        if x.dim() == 0 or x.shape[-1] != self.router.proj.in_features:
            raise ShapeError(f"MoRLayer: last dimension must be {self.router.proj.in_features}, "
                             f"got input of shape {tuple(x.shape)}")
        if mask is None:
            return self._forward(x, return_diagnostics)
        if mask.shape != x.shape[:-1] or mask.dtype != torch.bool:
            raise ShapeError(f"MoRLayer: mask must be bool of shape {tuple(x.shape[:-1])} (the input's without its "
                             f"last dimension), got {mask.dtype} of shape {tuple(mask.shape)}")
        keep = mask.reshape(-1)
        out = self._forward(x.reshape(-1, x.shape[-1])[keep], return_diagnostics)
        y = out[0] if return_diagnostics else out
        full = y.new_zeros(keep.numel(), y.shape[-1]).index_put((keep,), y)
        full = full.reshape(*x.shape[:-1], y.shape[-1])
        return (full, out[1]) if return_diagnostics else full

    def _forward(self, x: Tensor, return_diagnostics: bool) -> Tensor | tuple[Tensor, Diagnostics]:
        """The forward over every position of `x`."""
        flat = x.reshape(-1, x.shape[-1])
        routing = self.router(flat)
        dispatch = Dispatch.of(routing)
        if self.integrator.mode == "gate":  # raw router weights, as Switch feeds a residual, unless normalize
            weights = self.integrator.weigh(routing.weights, routing.mask) if self.integrator.normalize \
                else routing.weights
            y, out = self._gate(flat, weights, dispatch)
            conflict = self.integrator.conflict(dispatch.scatter(out.answer.detach()), weights.detach()) \
                if return_diagnostics else None
        else:
            out = self.experts(dispatch.gather(flat), dispatch.sizes)
            integrated = self.integrator(dispatch.scatter(out.answer), routing.weights, routing.mask,
                                         dispatch.scatter(out.confidence), flat, with_conflict=return_diagnostics)
            y, weights, conflict = integrated.output, integrated.weights, integrated.conflict
        y = y.reshape(*x.shape[:-1], y.shape[-1])
        if not return_diagnostics:
            return y
        return y, Diagnostics(weights=weights, indices=routing.indices, mask=routing.mask,
                              steps=dispatch.scatter(out.steps), confidence=dispatch.scatter(out.confidence),
                              conflict=conflict, load=routing.load, entropy=routing.entropy,
                              aux={**routing.aux, **out.aux})

    def _gate(self, flat: Tensor, weights: Tensor, dispatch: Dispatch) -> tuple[Tensor, ExpertOutput]:
        """Classic MoE integration: one weighted scatter-add, no (N, m, D) slot tensor in the graph."""
        if not hasattr(self.experts, "mixture"):
            out = self.experts(dispatch.gather(flat), dispatch.sizes)
        elif grouped_kernel(flat, self.experts.hidden):  # torch's kernel, which reads the sizes on the GPU
            out = self.experts(dispatch.gather(flat), dispatch.counts)
        else:
            return self.experts.mixture(flat, dispatch, weights)
        return dispatch.combine(out.answer, weights), out


def reflection_layer(experts: ReflectionExperts, dim: int, k: int = 2,
                     mode: Literal["gate", "confidence", "attention"] = "confidence",
                     **router_kwargs) -> MoRLayer:
    """A MoRLayer whose experts reflect; `mode` picks how their answers are integrated."""
    out_dim = experts[0].out_dim
    integrator = Integrator(mode, classes=False, query_dim=dim, dim=out_dim)
    return MoRLayer(Router(dim, len(experts), k, **router_kwargs), experts, integrator)


__all__ = ["MoRLayer", "reflection_layer"]
