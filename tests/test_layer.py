import pytest
import torch

from conftest import DEVICES
from mor.nn import Halting, MLPCell, MoRLayer, ReflectionExpert, ReflectionExperts, Router, SwiGLU, reflection_layer


def naive_forward(layer: MoRLayer, x: torch.Tensor) -> torch.Tensor:
    """Per-token reference: each token through each of its experts alone, weighted by the router."""
    flat = x.reshape(-1, x.shape[-1])
    routing = layer.router(flat)
    rows = []
    for i in range(flat.shape[0]):
        out = flat.new_zeros(flat.shape[-1])  # a token whose every slot was dropped gets zeros
        for slot in range(routing.indices.shape[1]):
            if routing.mask[i, slot]:
                e = int(routing.indices[i, slot])
                out = out + routing.weights[i, slot] * layer.experts.expert(e, flat[i:i + 1])[0]
        rows.append(out)
    return torch.stack(rows).reshape(x.shape)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("diagnostics", [False, True])  # the fused mixture, and with answers scattered back
@pytest.mark.parametrize("router_kwargs", [{"k": 2}, {"k": 1}, {"threshold": 0.2, "max_experts": 3},
                                           {"k": 2, "capacity_factor": 0.5}])
def test_sorted_dispatch_equals_per_token_reference_forward_and_gradients(device, diagnostics, router_kwargs):
    layer = MoRLayer.swiglu(12, 24, 5, **router_kwargs).to(device)
    x = torch.randn(3, 11, 12, device=device, requires_grad=True)
    g = torch.randn(3, 11, 12, device=device)
    y = layer(x, return_diagnostics=True)[0] if diagnostics else layer(x)
    y.backward(g)
    grads = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    x.grad = None
    ref = naive_forward(layer, x)
    ref.backward(g)
    ref_grads = [x.grad] + [p.grad for p in layer.parameters()]
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_no_tokens_by_experts_by_capacity_tensor_is_built():
    layer = MoRLayer.swiglu(16, 32, 8, k=2)
    x = torch.randn(256, 16)
    largest = []

    def record(module, args, output):
        largest.append(max((o.numel() for o in (output if isinstance(output, tuple) else (output,))
                            if isinstance(o, torch.Tensor)), default=0))

    for m in layer.modules():
        m.register_forward_hook(record)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: largest.append(t.numel()) or t, lambda t: t):
        layer(x).sum().backward()
    capacity = 2 * 256 // 8
    assert max(largest) < 256 * 8 * capacity  # a one-hot dispatch tensor (tokens × experts × capacity) is larger


def test_gradients_reach_router_experts_critic_and_integrator():
    experts = ReflectionExperts(ReflectionExpert(MLPCell(16), 8, 8, dim=16, train_steps=3, classes=False)
                                for _ in range(4))
    layer = reflection_layer(experts, dim=8, k=2, mode="attention")
    y, d = layer(torch.randn(2, 9, 8), return_diagnostics=True)
    (y.square().mean() + d.aux["halting_kl"] + d.aux["load_balance"]).backward()
    for name, module in [("router", layer.router), ("cell", experts[0].cell), ("judge", experts[1].judge),
                         ("integrator", layer.integrator)]:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name


def test_works_as_the_ffn_of_a_transformer_block_and_keeps_shape():
    layer = MoRLayer.swiglu(32, 64, 4, k=2)
    block_input = torch.randn(2, 7, 32)
    y, d = layer(block_input, return_diagnostics=True)
    assert y.shape == block_input.shape
    assert d.indices.shape == (14, 2) and d.compute.eq(2).all() and d.conflict.shape == (14,)


def test_reflection_layer_halts_per_token_in_eval():
    experts = ReflectionExperts(ReflectionExpert(MLPCell(16), 8, 8, dim=16, train_steps=3, classes=False,
                                                 halting=Halting(max_steps=9, threshold=0.6))
                                for _ in range(3))
    layer = reflection_layer(experts, dim=8, k=1).eval()
    for e in experts:
        torch.nn.init.normal_(e.judge.weight, std=0.5)
    _, d = layer(torch.randn(64, 8), return_diagnostics=True)
    steps = d.steps[d.mask]
    assert steps.min() >= 1 and steps.max() <= 9 and steps.min() < steps.max()


def test_state_dict_round_trips():
    layer = MoRLayer.swiglu(8, 16, 4, k=2)
    clone = MoRLayer.swiglu(8, 16, 4, k=2)
    clone.load_state_dict(layer.state_dict())
    x = torch.randn(5, 8)
    assert torch.equal(layer(x), clone(x))


def test_dense_swiglu_matches_its_formula():
    dense = SwiGLU(4, 6)
    x = torch.randn(3, 4)
    gate, up = x @ dense.w_gate.weight.t(), x @ dense.w_up.weight.t()
    torch.testing.assert_close(dense(x), (torch.nn.functional.silu(gate) * up) @ dense.w_out.weight.t())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_layer_runs_and_matches_fp32():
    layer = MoRLayer(Router(64, 8, k=2), MoRLayer.swiglu(64, 128, 8).experts).cuda()
    x = torch.randn(512, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    torch.testing.assert_close(y.float(), layer(x), atol=0.1, rtol=0.1)


def test_grouped_mm_matches_per_group_matmul_with_empty_groups_and_passes_gradcheck():
    from mor.nn.grouped import grouped_mm

    sizes = [3, 0, 4, 0, 2]
    x = torch.randn(9, 4, dtype=torch.double, requires_grad=True)
    w = torch.randn(5, 4, 6, dtype=torch.double, requires_grad=True)
    starts = [0, 3, 3, 7, 7]
    want = torch.cat([x[s:s + n] @ w[e] for e, (s, n) in enumerate(zip(starts, sizes, strict=True)) if n])
    torch.testing.assert_close(grouped_mm(x, w, sizes), want)
    assert torch.autograd.gradcheck(lambda a, b: grouped_mm(a, b, sizes), (x, w))
    grouped_mm(x, w, sizes).sum().backward()
    assert (w.grad[1] == 0).all() and (w.grad[3] == 0).all()  # experts with no rows get zero gradient


def test_a_bank_trained_on_its_last_step_answers_in_training_what_fixed_depth_inference_returns():
    torch.manual_seed(0)
    experts = ReflectionExperts((ReflectionExpert(MLPCell(16), 8, 8, dim=16, train_steps=3, classes=False)
                                 for _ in range(2)), expected=False)
    x = torch.randn(12, 8)
    trained = experts.train()(x, [5, 7])
    inferred = experts.eval()(x, [5, 7])
    torch.testing.assert_close(trained.answer, inferred.answer)
    assert "halting_kl" not in trained.aux
    expected = ReflectionExperts(experts).train()(x, [5, 7])
    assert not torch.allclose(expected.answer, inferred.answer) and "halting_kl" in expected.aux
