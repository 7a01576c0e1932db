"""Inference copies of linear layers whose weights oneDNN reorders once, at load, instead of on every call.

A routed request multiplies a few dozen token rows by every weight of the encoder, so `nn.Linear`'s per-call weight
reordering costs a large share of the product itself: in `mor bench route` packing cut fp32 MiniLM routing to
0.68–0.71× the time (bf16: 0.94–0.99× on a CPU without AMX). The packed op is torch's own oneDNN linear (what
torch.compile's CPU freezing emits); where this torch build lacks it, or it disagrees with `nn.Linear` on a probe,
the model is left as it is.
"""

import torch
from torch import nn

_pack = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None)


class PackedLinear(nn.Module):
    """A frozen `nn.Linear` for inference, its weight in oneDNN's blocked layout."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = _pack(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.weight, self.bias, "none", [], "")


@torch.inference_mode()
def packed(model: nn.Module) -> nn.Module:
    """`model` (an inference copy: it is changed in place) with every `nn.Linear` packed, where that works here."""
    linears = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear)]
    if not linears or not _works(linears[0][2]):
        return model
    for parent, name, child in linears:
        setattr(parent, name, PackedLinear(child))
    return model


def _works(linear: nn.Linear) -> bool:
    """Whether the packed op exists in this build and gives `linear`'s own answer on a probe input."""
    if _pack is None or _linear is None or not torch.backends.mkldnn.is_available():
        return False
    probe = torch.randn(3, 5, linear.in_features, generator=torch.Generator().manual_seed(0)).to(linear.weight.dtype)
    try:
        got = PackedLinear(linear)(probe)
    except RuntimeError:
        return False
    want = linear(probe)
    return got.shape == want.shape and torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-2)
