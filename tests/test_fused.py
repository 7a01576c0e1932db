import pytest
import torch

from mor.memory import saved_for_backward
from mor.nn import MoRLayer, SwiGLU
from mor.nn.dispatch import Dispatch
from mor.nn.fused import swiglu_mixture


def composed(layer: MoRLayer, x: torch.Tensor) -> torch.Tensor:
    """The same gate-weighted mixture as separate autograd steps: gather, the bank's products, scatter-add."""
    routing = layer.router(x)
    dispatch = Dispatch.of(routing)
    return dispatch.combine(layer.experts(dispatch.gather(x), dispatch.sizes).answer, routing.weights)


def test_fused_mixture_passes_gradcheck_with_experts_that_get_no_rows():
    torch.manual_seed(0)
    sizes = [3, 0, 4, 0, 2]
    x = torch.randn(6, 4, dtype=torch.double, requires_grad=True)
    tokens = torch.tensor([0, 2, 5, 1, 2, 3, 4, 0, 5])
    weights = torch.rand(9, dtype=torch.double, requires_grad=True)
    w_gate, w_up = (torch.randn(5, 4, 7, dtype=torch.double, requires_grad=True) for _ in range(2))
    w_out = torch.randn(5, 7, 4, dtype=torch.double, requires_grad=True)

    def mixture(*args):
        return swiglu_mixture(args[0], args[1], tokens, sizes, *args[2:])[0]

    assert torch.autograd.gradcheck(mixture, (x, weights, w_gate, w_up, w_out))
    mixture(x, weights, w_gate, w_up, w_out).sum().backward()
    assert all((w.grad[1] == 0).all() and (w.grad[3] == 0).all() for w in (w_gate, w_up, w_out))


@pytest.mark.parametrize("router_kwargs", [{"k": 2}, {"threshold": 0.2, "max_experts": 3}])
def test_fused_layer_equals_the_composed_steps_forward_and_gradients(router_kwargs):
    torch.manual_seed(0)
    layer = MoRLayer.swiglu(16, 32, 6, **router_kwargs)
    x = torch.randn(40, 16, requires_grad=True)
    g = torch.randn(40, 16)
    results = []
    for forward in (layer, lambda inputs: composed(layer, inputs)):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y = forward(x)
        y.backward(g)
        results.append([y, x.grad] + [p.grad for p in layer.parameters()])
    for fused, reference in zip(*results, strict=True):
        torch.testing.assert_close(fused, reference, atol=1e-6, rtol=1e-5)


def test_fused_layer_trains_frozen_experts_and_inputs_without_gradients():
    layer = MoRLayer.swiglu(8, 16, 4, k=2)
    layer.experts.requires_grad_(False)
    layer(torch.randn(10, 8)).square().sum().backward()
    assert layer.router.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in layer.experts.parameters())


def test_fused_layer_keeps_less_for_backward_than_the_composed_steps_and_than_dense():
    torch.manual_seed(0)
    layer, dense = MoRLayer.swiglu(64, 128, 8, k=2), SwiGLU(64, 2 * 128)
    x = torch.randn(512, 64, requires_grad=True)
    fused, steps, dense_bytes = (saved_for_backward(lambda f=f: f(x)) for f in (layer, lambda v: composed(layer, v),
                                                                         dense))
    assert fused < 0.6 * steps and fused < 0.75 * dense_bytes  # 0.47 and 0.66 when written


def test_inference_without_autograd_gives_the_training_forward():
    torch.manual_seed(0)
    layer = MoRLayer.swiglu(16, 32, 6, k=2)
    x = torch.randn(40, 16)
    with torch.no_grad():
        inferred, diagnostics = layer(x, return_diagnostics=True)
    trained = layer(x)
    assert trained.requires_grad and not inferred.requires_grad
    torch.testing.assert_close(inferred, trained, atol=0, rtol=0)
    assert diagnostics.conflict.shape == (40,) and (diagnostics.conflict > 0).any()


def test_fused_layer_under_cpu_autocast_runs_in_bfloat16_and_trains():
    torch.manual_seed(0)
    layer = MoRLayer.swiglu(16, 32, 4, k=2)
    x = torch.randn(64, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        y.float().square().sum().backward()  # backward inside the autocast region, as a training step would
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.float32
    assert layer.experts.w_gate.grad.dtype == torch.float32 and layer.experts.w_gate.grad.abs().sum() > 0
    torch.testing.assert_close(y.float(), layer(x), atol=0.05, rtol=0.05)
