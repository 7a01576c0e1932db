import copy

import pytest
import torch

from conftest import DEVICES
from mor.errors import ConfigError, ShapeError
from mor.nn import (
    Halting,
    Integrator,
    MLPCell,
    MoRLayer,
    ReflectionExpert,
    ReflectionExperts,
    Router,
    SwiGLU,
    SwiGLUExperts,
    reflection_layer,
)


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
def test_cuda_bf16_widths_the_grouped_kernel_cannot_align_take_the_fused_path(monkeypatch):
    """torch's grouped kernel needs rows of a multiple of 16 bytes: bf16 widths 12 and 24 are not."""
    calls = grouped_kernel_calls(monkeypatch)
    layer = MoRLayer.swiglu(12, 24, 5, k=2).to("cuda", torch.bfloat16)
    x = torch.randn(64, 12, device="cuda", dtype=torch.bfloat16)
    y, d = layer(x, return_diagnostics=True)
    assert calls == [] and y.dtype == torch.bfloat16
    want = fixed_route_reference(layer.float(), x.float(), d.indices)
    torch.testing.assert_close(y.float(), want, atol=0.05, rtol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_top_k_layer_never_makes_the_host_wait_for_the_gpu():
    layer = MoRLayer.swiglu(64, 128, 8, k=2).to("cuda", torch.bfloat16)
    x = torch.randn(256, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    torch.cuda.set_sync_debug_mode("error")  # a device-to-host copy or a stream sync now raises
    try:
        with torch.no_grad():
            layer.eval()(x)
        layer.train()(x).float().square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.grad is not None and layer.router.proj.weight.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_autocast_on_fp32_weights_runs_and_matches_fp32():
    """Autocast over an fp32 layer: its inputs stay fp32, so this is the fused path, not torch's grouped kernel
    (see the bf16 tests below for that)."""
    layer = MoRLayer(Router(64, 8, k=2), MoRLayer.swiglu(64, 128, 8).experts).cuda()
    x = torch.randn(512, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, d = layer(x, return_diagnostics=True)
    # the router's product runs in bf16 too, so nearly tied experts may swap: compare with the same choices in fp32
    torch.testing.assert_close(y.float(), fixed_route_reference(layer, x, d.indices), atol=0.1, rtol=0.1)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """‖got − want‖ / ‖want‖, in float64: bf16 rounds each element to about 3 significant digits (2⁻⁹
    relative), so elementwise tolerances fail on values near zero, while a wrong group, offset or weight
    layout is off by about 100 %."""
    want = want.double()
    return ((got.double() - want).norm() / want.norm()).item()


def grouped_kernel_calls(monkeypatch) -> list[tuple[int, ...]]:
    """Records the shape of the left operand of every call of torch's grouped-matmul kernel."""
    kernel, calls = torch.nn.functional.grouped_mm, []

    def spy(a, b, **kwargs):
        calls.append(tuple(a.shape))
        return kernel(a, b, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "grouped_mm", spy)
    return calls


def fixed_route_reference(layer: MoRLayer, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Top-k softmax routing with renormalised weights, experts `indices` (N, k) chosen beforehand (rounding
    in bf16 may swap nearly tied experts), each expert run on its rows alone: (N, d)."""
    probs = torch.softmax(layer.router.proj(x), -1)
    top = probs.gather(1, indices)
    weights = top / top.sum(-1, keepdim=True)
    out = x.new_zeros(x.shape)
    for e in range(layer.experts.num_experts):
        rows, slots = (indices == e).nonzero(as_tuple=True)
        out = out.index_add(0, rows, weights[rows, slots, None] * layer.experts.expert(e, x[rows]))
    return out


def check_bf16_layer_takes_the_grouped_kernel(device: str, monkeypatch) -> None:
    from mor.nn.grouped import grouped_kernel

    calls = grouped_kernel_calls(monkeypatch)
    layer = MoRLayer.swiglu(64, 128, 8, k=2)
    x = torch.randn(512, 64)
    x[:, 0] = 1.0
    with torch.no_grad():
        layer.router.proj.weight[[2, 6], 0] = -30.0  # experts 2 and 6 get no tokens: empty groups
    layer = layer.to(device, torch.bfloat16)
    reference = copy.deepcopy(layer).double()  # the same (bf16) weights, computed in float64
    xb = x.to(device, torch.bfloat16).requires_grad_()
    x64 = xb.detach().double().requires_grad_()
    g = torch.randn(512, 64).to(device, torch.bfloat16)
    assert grouped_kernel(xb)
    y = layer(xb)
    assert y.dtype == torch.bfloat16 and calls == [(1024, 64), (1024, 64), (1024, 128)]  # gate, up, down
    y.backward(g)
    with torch.no_grad():
        indices = layer.router(xb).indices
    counts = torch.bincount(indices.flatten(), minlength=8)
    assert counts[2] == counts[6] == 0 and (counts[[0, 1, 3, 4, 5, 7]] > 0).all()
    want = fixed_route_reference(reference, x64, indices)
    want.backward(g.double())
    errors = {"output": relative_error(y, want), "input gradient": relative_error(xb.grad, x64.grad)}
    for name, got in layer.named_parameters():
        assert got.grad is not None and got.grad.dtype == torch.bfloat16, name
        errors[name] = relative_error(got.grad, reference.get_parameter(name).grad)
    assert max(errors.values()) < 2e-2, errors  # bf16 rounding gives about 0.005; a wrong product about 1
    for w in (layer.experts.w_gate, layer.experts.w_up, layer.experts.w_out):
        assert (w.grad[[2, 6]] == 0).all()  # experts with no rows get zero gradient


def check_bf16_grouped_mm_matches_per_group_matmul(device: str) -> None:
    from mor.nn.grouped import grouped_kernel, grouped_mm

    sizes = [0, 24, 0, 40, 8, 0]  # empty groups first, in the middle and last
    xb = torch.randn(72, 64).to(device, torch.bfloat16).requires_grad_()
    wb = torch.randn(6, 64, 32).to(device, torch.bfloat16).requires_grad_()
    x64, w64 = (t.detach().double().requires_grad_() for t in (xb, wb))
    g = torch.randn(72, 32).to(device, torch.bfloat16)
    assert grouped_kernel(xb)
    out = grouped_mm(xb, wb, sizes)
    out.backward(g)
    starts = [0, 0, 24, 24, 64, 72]
    want = torch.cat([x64[s:s + n] @ w64[e] for e, (s, n) in enumerate(zip(starts, sizes, strict=True))])
    want.backward(g.double())
    assert out.dtype == torch.bfloat16 and out.shape == (72, 32)
    assert xb.grad is not None and wb.grad is not None
    errors = [relative_error(out, want), relative_error(xb.grad, x64.grad), relative_error(wb.grad, w64.grad)]
    assert max(errors) < 1e-2, errors  # bf16 rounding gives about 0.002
    assert (wb.grad[[0, 2, 5]] == 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_layer_takes_torchs_grouped_kernel_and_matches_float64_forward_and_gradients(monkeypatch):
    check_bf16_layer_takes_the_grouped_kernel("cuda", monkeypatch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_grouped_mm_matches_per_group_matmul_with_empty_groups_forward_and_gradients(monkeypatch):
    calls = grouped_kernel_calls(monkeypatch)
    check_bf16_grouped_mm_matches_per_group_matmul("cuda")
    assert calls == [(72, 64)]


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


def test_the_cuda_bf16_branch_runs_torchs_grouped_kernel_on_cpu_too(monkeypatch):
    """The CUDA-only branch's own code (offsets, weight layout, gradients through torch's kernel) checked on every
    machine: torch's grouped_mm also runs on CPU, so the device check is lifted. The CUDA kernel itself is checked
    by the two tests above, on a GPU."""
    import mor.nn.grouped
    import mor.nn.layer

    def on_any_device(x: torch.Tensor, *widths: int) -> bool:
        return x.dtype == torch.bfloat16 and all(w % 8 == 0 for w in (x.shape[-1], *widths))

    monkeypatch.setattr(mor.nn.grouped, "grouped_kernel", on_any_device)
    monkeypatch.setattr(mor.nn.layer, "grouped_kernel", on_any_device)
    check_bf16_layer_takes_the_grouped_kernel("cpu", monkeypatch)
    check_bf16_grouped_mm_matches_per_group_matmul("cpu")


def test_gate_mode_refuses_class_answers_it_would_mix_as_values():
    with pytest.raises(ConfigError, match=r"Integrator\(classes=True\).*use mode 'confidence' or classes=False"):
        MoRLayer(Router(6, 4, k=2), SwiGLUExperts(4, 6, 12), Integrator("gate", classes=True))
    layer = MoRLayer(Router(6, 4, k=2), SwiGLUExperts(4, 6, 12), Integrator("confidence", classes=True))
    torch.testing.assert_close(layer(torch.randn(5, 6)).logsumexp(-1), torch.zeros(5))  # log-probs of a mixture


@pytest.mark.parametrize("mode", ["gate", "confidence"])
@pytest.mark.parametrize("train", [True, False])
def test_a_reflection_layer_takes_zero_tokens(mode, train):
    experts = ReflectionExperts(ReflectionExpert(MLPCell(8), 8, 8, dim=8, classes=False) for _ in range(3))
    layer = reflection_layer(experts, 8, k=2, mode=mode).train(train)
    assert layer(torch.randn(2, 0, 8)).shape == (2, 0, 8)
    out = experts(torch.randn(0, 8), [0, 0, 0])
    assert out.answer.shape == (0, 8) and out.confidence.shape == out.steps.shape == (0,)
    assert out.aux.get("halting_kl", torch.zeros(())).eq(0).all()


@pytest.mark.parametrize("reflect", [False, True])
def test_diagnostics_and_router_losses_of_zero_tokens_are_empty_and_finite(reflect):
    layer = (reflection_layer(ReflectionExperts(ReflectionExpert(MLPCell(8), 8, 8, dim=8, classes=False)
                                                for _ in range(3)), 8, k=2)
             if reflect else MoRLayer.swiglu(8, 16, num_experts=3, k=2)).train()
    y, d = layer(torch.randn(2, 0, 8), return_diagnostics=True)
    assert y.shape == (2, 0, 8) and d.conflict.numel() == 0
    assert all(torch.isfinite(v) for v in d.aux.values()), d.aux
    assert d.entropy == 0 and d.load.eq(0).all()


@pytest.mark.parametrize("experts", ["swiglu", "reflection"])
def test_a_top_1_gate_layer_with_normalize_answers_its_experts_answer(experts):
    torch.manual_seed(0)
    bank = SwiGLUExperts(4, 8, 16) if experts == "swiglu" else \
        ReflectionExperts(ReflectionExpert(MLPCell(8), 8, 8, dim=8, classes=False) for _ in range(4))
    x = torch.randn(6, 8)
    raw = MoRLayer(Router(8, 4, k=1), bank, Integrator("gate")).eval()
    normalized = MoRLayer(Router(8, 4, k=1), bank, Integrator("gate", normalize=True)).eval()
    normalized.router.load_state_dict(raw.router.state_dict())
    y, d = normalized(x, return_diagnostics=True)
    p = raw.router(x).weights
    torch.testing.assert_close(raw(x), y * p)  # the raw gate scales the answer by p; normalized, it is the answer
    assert d.weights.eq(1).all()


@pytest.mark.parametrize("expected", [True, False], ids=["expected-answer", "last-step"])
def test_a_reflection_banks_per_expert_reference_answers_as_the_bank_does_in_training(expected):
    torch.manual_seed(0)
    experts = ReflectionExperts([ReflectionExpert(MLPCell(8), 8, 8, dim=8, classes=False, train_steps=3)
                                 for _ in range(3)], expected=expected)
    layer = reflection_layer(experts, 8, k=2, mode="gate").train()
    x = torch.randn(6, 8)
    torch.testing.assert_close(layer(x), naive_forward(layer, x), rtol=1e-5, atol=1e-5)


def test_diagnostics_name_the_inputs_a_capacity_limit_left_unprocessed():
    torch.manual_seed(0)
    layer = MoRLayer.swiglu(8, 16, num_experts=2, k=1, capacity_factor=0.5)
    with torch.no_grad():
        layer.router.proj.weight.copy_(torch.eye(2, 8))
    x = torch.zeros(8, 8)
    x[:, 0] = 1.0  # every input prefers expert 0, which has 2 places
    y, d = layer(x, return_diagnostics=True)
    assert d.dropped.tolist() == [False] * 2 + [True] * 6
    assert (y[d.dropped] == 0).all() and (y[~d.dropped] != 0).any()


PADDED = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize("reflect", [False, True])
def test_a_padding_mask_gives_the_real_tokens_what_they_get_alone_and_padding_nothing(reflect):
    torch.manual_seed(0)
    layer = (reflection_layer(ReflectionExperts(ReflectionExpert(MLPCell(8), 8, 8, dim=8, classes=False)
                                                for _ in range(3)), 8, k=2)
             if reflect else MoRLayer.swiglu(8, 16, num_experts=3, k=2)).train()
    x = torch.randn(3, 5, 8, requires_grad=True)
    y, d = layer(x, return_diagnostics=True, mask=PADDED)
    alone = x.detach()[PADDED].requires_grad_()
    y_alone, d_alone = layer(alone, return_diagnostics=True)
    torch.testing.assert_close(y[PADDED], y_alone)
    assert y[~PADDED].eq(0).all() and d.indices.shape == d_alone.indices.shape == (9, 2)
    for name, value in d_alone.aux.items():  # the router's losses and statistics count the real tokens only
        torch.testing.assert_close(d.aux[name], value)
    torch.testing.assert_close(d.load, d_alone.load)
    assert not torch.allclose(layer(x, return_diagnostics=True)[1].load, d.load)
    (y.square().sum() + sum(d.aux.values())).backward()
    (y_alone.square().sum() + sum(d_alone.aux.values())).backward()
    torch.testing.assert_close(x.grad[PADDED], alone.grad)
    assert x.grad[~PADDED].eq(0).all()


def test_a_padding_mask_of_only_padding_gives_zeros_and_finite_losses():
    layer = MoRLayer.swiglu(8, 16, num_experts=3, k=2).train()
    y, d = layer(torch.randn(2, 4, 8), return_diagnostics=True, mask=torch.zeros(2, 4, dtype=torch.bool))
    assert y.eq(0).all() and y.shape == (2, 4, 8)
    assert all(torch.isfinite(v) for v in d.aux.values())


@pytest.mark.parametrize("mask", [torch.ones(3, 4, dtype=torch.bool), torch.ones(3, 5)], ids=["shape", "dtype"])
def test_a_padding_mask_that_does_not_fit_the_input_is_one_clear_error(mask):
    layer = MoRLayer.swiglu(8, 16, num_experts=3, k=2)
    with pytest.raises(ShapeError, match=r"mask must be bool of shape \(3, 5\).*got"):
        layer(torch.randn(3, 5, 8), mask=mask)
