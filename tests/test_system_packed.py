"""Packed inference copies of linear layers: the same answers as nn.Linear, and the model left alone where packing
is unavailable."""

import copy

import pytest
import torch
from torch import nn

import mor.system.packed as packed_module
from mor.system.packed import PackedLinear, packed

mkldnn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Sequential(nn.Linear(64, 16, bias=False)), nn.LayerNorm(16))


@mkldnn
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_packed_layers_give_the_linear_layers_answers(dtype, tol):
    model = _model().to(dtype).eval()
    x = torch.randn(2, 7, 16).to(dtype)  # batch × tokens × features, as a transformer block sees them
    copy_ = packed(copy.deepcopy(model))
    assert sum(isinstance(m, PackedLinear) for m in copy_.modules()) == 2
    assert not any(isinstance(m, nn.Linear) for m in copy_.modules())
    with torch.inference_mode():
        want, got = model(x), copy_(x)
    assert got.dtype == dtype and torch.allclose(got.float(), want.float(), atol=tol, rtol=tol)


def test_without_the_packed_op_the_model_is_left_as_it_is(monkeypatch):
    monkeypatch.setattr(packed_module, "_pack", None)
    model = _model()
    assert packed(model) is model and sum(isinstance(m, nn.Linear) for m in model.modules()) == 2
