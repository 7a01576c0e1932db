import copy

import pytest
import torch

from mor.errors import ConfigError, ShapeError
from mor.nn import Router


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_probabilities_and_weights_are_valid_distributions(score):
    router = Router(16, 6, k=3, score=score)
    r = router(torch.randn(50, 16))
    assert r.probs.shape == (50, 6) and ((r.probs >= 0) & (r.probs <= 1)).all()
    if score == "softmax":
        torch.testing.assert_close(r.probs.sum(-1), torch.ones(50))
    torch.testing.assert_close(r.weights.sum(-1), torch.ones(50))
    assert (r.weights >= 0).all()


def test_top_1_keeps_the_raw_probability_so_the_task_loss_reaches_the_router():
    router = Router(8, 4, k=1)
    x = torch.randn(30, 8)
    r = router(x)
    torch.testing.assert_close(r.weights[:, 0], r.probs.max(-1).values)
    (r.weights * torch.randn(30, 1)).sum().backward()
    assert router.proj.weight.grad.abs().sum() > 0


def test_top_k_picks_the_k_largest():
    router = Router(8, 5, k=2)
    r = router(torch.randn(40, 8))
    expected = r.probs.argsort(-1, descending=True)[:, :2]
    assert torch.equal(r.indices, expected)
    assert r.mask.all()
    chosen = torch.gather(r.probs, 1, r.indices)
    torch.testing.assert_close(r.weights, chosen / chosen.sum(-1, keepdim=True))


@pytest.mark.parametrize("min_experts,max_experts", [(1, 4), (2, 3), (1, 1)])
def test_threshold_activates_exactly_the_experts_above_tau_within_bounds(min_experts, max_experts):
    tau = 0.2
    router = Router(8, 6, score="softmax", threshold=tau, min_experts=min_experts, max_experts=max_experts)
    r = router(torch.randn(200, 8) * 3)
    for i in range(200):
        active = set(r.indices[i][r.mask[i]].tolist())
        above = (r.probs[i] >= tau).nonzero().squeeze(1)
        ranked = r.probs[i].argsort(descending=True).tolist()
        want = set(ranked[:max(min_experts, min(len(above), max_experts))])
        assert active == want
        assert min_experts <= len(active) <= max_experts
    assert (r.weights[~r.mask] == 0).all()


def test_capacity_factor_caps_each_expert_and_keeps_first_choices_first():
    router = Router(4, 4, k=2, capacity_factor=1.0)
    with torch.no_grad():
        router.proj.weight.zero_()
        router.proj.weight[0, 0] = 5.0  # expert 0 is everyone's first choice
    x = torch.randn(64, 4).abs()
    x[:, 0] += 1
    r = router(x)
    capacity = 64 * 2 // 4
    assert (r.counts <= capacity).all()
    assert r.counts[0] == capacity
    kept_first = r.mask[:, 0] & (r.indices[:, 0] == 0)
    assert kept_first.sum() == capacity  # expert 0's places all went to first choices
    assert torch.equal(Router(4, 4, k=2)(x).mask, torch.ones(64, 2, dtype=torch.bool))  # dropless default


def test_aux_losses_and_statistics():
    router = Router(8, 4, k=1)
    r = router(torch.randn(1000, 8))
    assert set(r.aux) == {"load_balance", "z_loss"}
    torch.testing.assert_close(r.load.sum(), torch.tensor(1.0))
    assert 0 < r.entropy <= torch.log(torch.tensor(4.0)) + 1e-6
    with torch.no_grad():  # collapse all routing onto expert 0: balance loss rises to E·P_0 ≈ 4
        router.proj.weight.zero_()
        router.proj.weight[0] = 100.0
    collapsed = router(torch.randn(1000, 8).abs())
    assert collapsed.aux["load_balance"] > 3.5 > r.aux["load_balance"]
    assert collapsed.load[0] == 1.0


def test_noisy_gating_only_in_training():
    router = Router(8, 4, k=1, noise_std=5.0)
    x = torch.randn(100, 8)
    router.eval()
    assert torch.equal(router(x).indices, router(x).indices)
    router.train()
    assert not torch.equal(router(x).logits, router(x).logits)


def test_bad_arguments_raise_one_line_errors():
    with pytest.raises(ConfigError, match="k must be in"):
        Router(8, 4, k=5)
    with pytest.raises(ConfigError, match="threshold must be in"):
        Router(8, 4, threshold=1.5)
    with pytest.raises(ConfigError, match="min_experts"):
        Router(8, 4, threshold=0.1, min_experts=3, max_experts=2)
    with pytest.raises(ShapeError, match=r"expected inputs of shape \(N, 8\)"):
        Router(8, 4)(torch.randn(3, 7))


def test_float16_inputs_whose_slots_were_all_dropped_get_zero_weights_not_nan():
    torch.manual_seed(0)
    router = Router(4, 4, k=2, capacity_factor=0.5)
    x = torch.randn(16, 4)
    r = copy.deepcopy(router).half()(x.half())
    dropped = ~r.mask.any(-1)
    assert dropped.any() and torch.isfinite(r.weights).all() and (r.weights[dropped] == 0).all()
    r32 = router(x)  # float32 keeps the literal guard, bit for bit; the drop comes after the shares are set
    top = r32.probs.topk(2, dim=-1).values
    assert torch.equal(r32.weights, top / top.sum(-1, keepdim=True).clamp_min(1e-9) * r32.mask)


@pytest.mark.parametrize("kwargs", [{"max_experts": 1}, {"min_experts": 2}, {"min_experts": 1, "max_experts": 4}])
def test_top_k_refuses_min_and_max_experts_it_would_ignore(kwargs):
    with pytest.raises(ConfigError, match="apply to threshold routing only") as info:
        Router(8, 4, k=3, **kwargs)
    assert "\n" not in str(info.value)
    assert Router(8, 4, threshold=0.1, **kwargs).threshold == 0.1  # with a threshold they apply


def test_a_sigmoid_routers_normalised_weights_sum_to_one_even_when_every_score_is_tiny():
    router = Router(4, 3, k=2, score="sigmoid")
    with torch.no_grad():
        router.proj.weight.fill_(-6.5)  # logits -26: every score about 5e-12
    routing = router(torch.ones(2, 4))
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(2))


def test_the_balance_loss_counts_the_routers_choices_before_a_capacity_limit_drops_some():
    """Switch's f_e is the share of inputs each expert was chosen for; after the drop the imbalance would hide."""
    router = Router(8, 4, k=1, capacity_factor=1.0)
    with torch.no_grad():
        router.proj.weight.copy_(torch.eye(4, 8) * 3)
    x = torch.zeros(100, 8)
    x[:70, 0], x[70:, 2] = 1.0, 1.0  # 70 inputs choose expert 0, 30 expert 2; capacity keeps 25 each
    capped = router(x)
    router.capacity_factor = None
    dropless = router(x)
    assert capped.counts.tolist() == [25, 0, 25, 0] and dropless.counts.tolist() == [70, 0, 30, 0]
    torch.testing.assert_close(capped.aux["load_balance"], dropless.aux["load_balance"])
    torch.testing.assert_close(capped.load, torch.tensor([0.25, 0.0, 0.25, 0.0]))  # what was really sent


def test_a_threshold_input_with_one_expert_keeps_its_raw_probability_and_teaches_the_router():
    """As top-1 does: a renormalised lone weight would be the constant 1, with no gradient for the router."""
    torch.manual_seed(0)
    router = Router(4, 4, threshold=0.3, max_experts=2)
    routing = router(torch.randn(64, 4) * 3)
    lone, pair = routing.mask.sum(-1) == 1, routing.mask.sum(-1) == 2
    assert lone.any() and pair.any()
    top = routing.probs.topk(2, dim=-1).values
    torch.testing.assert_close(routing.weights[lone, 0], top[lone, 0])
    torch.testing.assert_close(routing.weights[pair].sum(-1), torch.ones(int(pair.sum())))
    routing.weights[lone, 0].sum().backward()
    assert router.proj.weight.grad.abs().sum() > 0


def test_a_capacity_drop_leaves_the_kept_assignment_its_share():
    router = Router(8, 2, k=2, capacity_factor=0.75)  # 6 places per expert for 8 first and 8 second choices
    with torch.no_grad():
        router.proj.weight.copy_(torch.eye(2, 8))
    x = torch.zeros(8, 8)
    x[:4, 0], x[4:, 1] = 1.0, 1.0
    routing = router(x)
    kept_alone = routing.mask.sum(-1) == 1
    top = routing.probs.topk(2, dim=-1).values
    assert kept_alone.any()
    torch.testing.assert_close(routing.weights[kept_alone].sum(-1), (top[:, 0] / top.sum(-1))[kept_alone])


def test_the_balance_loss_of_bfloat16_probabilities_is_taken_in_float32():
    """In bfloat16 the loss moved in steps of 2⁻⁷ near 1, so a slight imbalance (1.003) read as perfectly flat."""
    from mor.nn.losses import load_balance_loss

    probs = torch.softmax(torch.randn(512, 4, generator=torch.Generator().manual_seed(0)) * 0.3, -1)
    counts = torch.bincount(probs.argmax(-1), minlength=4)
    exact = load_balance_loss(probs, counts)
    low = load_balance_loss(probs.bfloat16(), counts)
    assert low.dtype == torch.float32 and abs(low - exact) < 2e-3 * abs(exact - 1) + 1e-4
