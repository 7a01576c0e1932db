import math

import pytest
import torch

from mor.errors import ConfigError
from mor.nn import Integrator, MoRModel, conflict, moe_baseline
from mor.nn.functional import softmax


def test_gate_mode_is_the_router_weighted_sum():
    answers = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # one input, two experts
    weights, mask = torch.tensor([[0.75, 0.25]]), torch.ones(1, 2, dtype=torch.bool)
    out = Integrator("gate")(answers, weights, mask)
    torch.testing.assert_close(out.output, torch.tensor([[0.75, 0.5]]))


def test_normalized_gate_mode_mixes_values_as_a_weighted_mean():
    """A final prediction from one slot is the expert's answer, not p times it (Switch keeps p, for an FFN)."""
    answers = torch.tensor([[[4.0], [0.0]], [[1.0], [3.0]]])
    weights, mask = torch.tensor([[0.25, 0.0], [0.3, 0.1]]), torch.tensor([[True, False], [True, True]])
    out = Integrator("gate", normalize=True)(answers, weights, mask)
    torch.testing.assert_close(out.output, torch.tensor([[4.0], [1.5]]))  # 4 and (0.3·1 + 0.1·3) / 0.4
    torch.testing.assert_close(out.weights, torch.tensor([[1.0, 0.0], [0.75, 0.25]]))
    torch.testing.assert_close(Integrator("gate")(answers, weights, mask).output, torch.tensor([[1.0], [0.6]]))


def test_a_top1_moe_regressor_predicts_its_experts_answer():
    torch.manual_seed(0)
    model = moe_baseline(3, 2, num_experts=4, k=1, task="regression").eval()
    x = torch.randn(16, 3)
    out, diagnostics = model(x, return_diagnostics=True)
    assert (model.router(x).weights < 0.99).all()  # the router's own probabilities are well below 1
    assert torch.equal(diagnostics.weights, torch.ones(16, 1))
    chosen = diagnostics.indices[:, 0]
    alone = torch.stack([model.experts[int(e)](x[i:i + 1]).answer[0] for i, e in enumerate(chosen)])
    torch.testing.assert_close(out, alone)


def test_confidence_mode_renormalises_gate_times_confidence():
    answers = torch.tensor([[[1.0], [3.0]]])
    weights, mask = torch.tensor([[0.5, 0.5]]), torch.ones(1, 2, dtype=torch.bool)
    out = Integrator("confidence")(answers, weights, mask, confidence=torch.tensor([[0.9, 0.3]]))
    torch.testing.assert_close(out.weights, torch.tensor([[0.75, 0.25]]))  # 0.45 / 0.6 and 0.15 / 0.6
    torch.testing.assert_close(out.output, torch.tensor([[1.5]]))


@pytest.mark.parametrize("dtype,confidence", [(torch.float32, 1e-11), (torch.float16, 2e-5)])
def test_confidence_weights_still_sum_to_one_when_every_critic_is_nearly_sure_it_is_wrong(dtype, confidence):
    """Gate × confidence below the division guard must not scale the answer down (it gave 0.01 and 0.33 here)."""
    answers, mask = torch.tensor([[[1.0], [3.0]]], dtype=dtype), torch.ones(1, 2, dtype=torch.bool)
    weights, conf = torch.tensor([[0.5, 0.5]], dtype=dtype), torch.tensor([[2 * confidence, confidence]], dtype=dtype)
    out = Integrator("confidence")(answers, weights, mask, confidence=conf, with_conflict=True)
    torch.testing.assert_close(out.weights.float(), torch.tensor([[2 / 3, 1 / 3]]), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out.output.float(), torch.tensor([[5 / 3]]), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out.conflict.float(), torch.tensor([8 / 9]), rtol=1e-3, atol=1e-3)


def test_confidence_mode_falls_back_to_the_gate_when_every_critic_is_exactly_zero():
    answers, mask = torch.tensor([[[1.0], [3.0]]]), torch.ones(1, 2, dtype=torch.bool)
    out = Integrator("confidence")(answers, torch.tensor([[0.75, 0.25]]), mask, confidence=torch.zeros(1, 2))
    torch.testing.assert_close(out.weights, torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(out.output, torch.tensor([[1.5]]))


def test_tiny_gate_weights_mix_classes_as_a_distribution():
    answers = torch.log(torch.tensor([[[0.8, 0.2], [0.2, 0.8]]]))
    weights, mask = torch.tensor([[3e-12, 1e-12]]), torch.ones(1, 2, dtype=torch.bool)
    out = Integrator("gate", classes=True)(answers, weights, mask)
    torch.testing.assert_close(out.output.exp(), torch.tensor([[0.65, 0.35]]))


def test_unused_slots_get_no_weight_and_classes_mix_as_probabilities():
    answers = torch.log(torch.tensor([[[0.8, 0.2], [0.1, 0.9], [0.5, 0.5]]]))
    weights, mask = torch.tensor([[0.6, 0.4, 0.0]]), torch.tensor([[True, True, False]])
    out = Integrator("confidence", classes=True)(answers, weights, mask, confidence=torch.ones(1, 3))
    assert out.weights[0, 2] == 0
    torch.testing.assert_close(out.output.exp(), torch.tensor([[0.52, 0.48]]))


def test_attention_mode_learns_and_respects_the_mask():
    integrator = Integrator("attention", query_dim=5, dim=3)
    answers, query = torch.randn(4, 3, 3, requires_grad=True), torch.randn(4, 5)
    mask = torch.tensor([[True, True, False]] * 4)
    out = integrator(answers, torch.full((4, 3), 1 / 3), mask, query=query)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(4))
    assert (out.weights[:, 2] == 0).all()
    out.output.sum().backward()
    assert integrator.query.weight.grad.abs().sum() > 0 and integrator.key.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["gate", "confidence", "attention"])
def test_inputs_whose_slots_were_all_dropped_stay_finite_in_every_mode(mode):
    torch.manual_seed(0)
    model = MoRModel(4, 2, num_experts=4, k=1, train_steps=2, mode=mode, capacity_factor=0.5)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    loss, _, diagnostics = model.loss(x, y)
    assert (~diagnostics.mask.any(-1)).any()  # the capacity really dropped some inputs
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    out, d = model.eval()(x, return_diagnostics=True)
    assert torch.isfinite(out).all() and (d.weights[~d.mask.any(-1)] == 0).all()


def test_conflict_is_zero_for_identical_experts_and_large_for_disagreeing_ones():
    same = torch.randn(6, 1, 4).expand(6, 3, 4)
    w = torch.full((6, 3), 1 / 3)
    torch.testing.assert_close(conflict(same, w, classes=True), torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(conflict(same, w, classes=False), torch.zeros(6), atol=1e-6, rtol=0)
    # two confident experts on opposite classes, equal weight: JS divergence → log 2
    opposite = torch.tensor([[[20.0, -20.0], [-20.0, 20.0]]])
    js = conflict(opposite, torch.tensor([[0.5, 0.5]]), classes=True)
    torch.testing.assert_close(js, torch.tensor([math.log(2)]), atol=1e-4, rtol=0)
    values = torch.tensor([[[0.0], [4.0]]])
    torch.testing.assert_close(conflict(values, torch.tensor([[0.5, 0.5]]), classes=False), torch.tensor([4.0]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_identical_experts_have_no_conflict_in_half_precision(dtype):
    """Half-precision weights sum to 1 ± 2⁻⁸: computed in their dtype, that alone made a conflict as large as real
    disagreement, and a ConflictPolicy escalated inputs for nothing."""
    same = torch.randn(64, 1, 10).expand(64, 3, 10).to(dtype)
    w = torch.softmax(torch.randn(64, 3), -1).to(dtype)
    for classes in (True, False):
        assert conflict(same, w, classes=classes).abs().max() < 1e-5


def test_attention_without_sizes_is_refused():
    with pytest.raises(ConfigError, match="needs query_dim"):
        Integrator("attention")
    with pytest.raises(ConfigError, match="mode must be"):
        Integrator("mean")


def test_a_float16_class_mixture_of_confident_experts_has_a_finite_log():
    answers = torch.tensor([[[20.0, 0.0], [18.0, 0.0]]])  # class 1 has probability ~1e-8 under both experts
    weights, mask = torch.tensor([[0.5, 0.5]]), torch.ones(1, 2, dtype=torch.bool)
    integrator = Integrator("gate", classes=True)
    half = integrator(answers.half(), weights.half(), mask).output
    assert torch.isfinite(half).all()
    mixed = (weights[..., None] * softmax(answers)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1e-9)
    torch.testing.assert_close(integrator(answers, weights, mask).output, torch.log(mixed))


@pytest.mark.parametrize("mode", ["gate", "confidence"])
def test_a_class_all_experts_rule_out_keeps_its_log_probability_and_gradient(mode):
    """Clamping the mixture at 1e-9 before the log capped the loss at 20.7 and cut the gradient of confidently
    wrong inputs, the ones training most needs to correct."""
    answers = torch.tensor([[[0.0, 30.0], [0.0, 25.0]], [[0.0, 30.0], [0.0, 25.0]]], dtype=torch.float64,
                           requires_grad=True)
    weights = torch.tensor([[0.75, 0.25], [1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    out = Integrator(mode, classes=True)(answers, weights, torch.ones(2, 2, dtype=torch.bool),
                                         torch.ones(2, 2, dtype=torch.float64)).output
    exact = torch.log((weights[..., None] / weights.sum(1, keepdim=True)[..., None]
                       * torch.softmax(answers, -1)).sum(1))
    torch.testing.assert_close(out, exact)
    assert out[:, 0].max() < -24
    answer_grad, weight_grad = torch.autograd.grad(out[:, 0].sum(), (answers, weights))
    assert answer_grad.abs().sum() > 1 and torch.isfinite(weight_grad).all() and weight_grad[0].abs().sum() > 0


def test_an_input_whose_every_slot_was_dropped_gets_finite_class_scores_and_gradients():
    answers = torch.randn(2, 2, 3, requires_grad=True)
    weights = torch.tensor([[0.5, 0.5], [0.0, 0.0]], requires_grad=True)
    out = Integrator("gate", classes=True)(answers, weights, torch.tensor([[True, True], [False, False]])).output
    assert torch.equal(out[1], torch.full((3,), math.log(1e-9)))
    out.sum().backward()
    assert torch.isfinite(answers.grad).all() and torch.isfinite(weights.grad).all()
