import pytest
import torch
from torch import nn

from mor.errors import ConfigError, ShapeError
from mor.nn import ConvCell, Halting, MLPCell, MoRModel, ReflectionExpert, TransformerCell
from mor.nn.losses import geometric_prior, halting_distribution, halting_kl, ponder_loss


class CountingCell(nn.Module):
    """Wraps a cell and counts the rows (inputs) it is evaluated on."""

    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell, self.rows = cell, 0

    def forward(self, h):
        self.rows += h.shape[0]
        return self.cell(h)


def spread_expert(dim=16) -> ReflectionExpert:
    """An eval-mode expert whose critic confidence differs per input, so halting steps spread out."""
    expert = ReflectionExpert(CountingCell(MLPCell(dim)), 4, 3, dim=dim, train_steps=4).eval()
    with torch.no_grad():
        expert.judge.weight.normal_(0, 0.5)
    return expert


def test_training_returns_every_step_and_a_halting_distribution():
    expert = ReflectionExpert(MLPCell(16), 4, 3, dim=16, train_steps=5)
    r = expert(torch.randn(7, 4))
    assert r.answers.shape == (5, 7, 3) and r.halt_logits.shape == (5, 7) and r.critic_logits.shape == (5, 7)
    p = r.halting_distribution
    torch.testing.assert_close(p.sum(0), torch.ones(7))
    assert (p >= 0).all()
    torch.testing.assert_close(r.answer, (p[..., None] * r.answers).sum(0))
    assert (r.steps == 5).all()


def test_halting_bias_starts_negative_and_positive_is_refused():
    expert = ReflectionExpert(MLPCell(8), 2, 2, dim=8)
    assert expert.judge.bias[0] < 0
    p = expert(torch.randn(3, 2)).halting_distribution
    assert p[0].max() < 0.2  # does not halt at once
    with pytest.raises(ConfigError, match="halt_bias must be negative"):
        ReflectionExpert(MLPCell(8), 2, 2, dim=8, halt_bias=0.0)


def test_halting_distribution_matches_hand_computation():
    logits = torch.logit(torch.tensor([[0.5], [0.5], [0.9]]))
    p = halting_distribution(logits)[:, 0]
    torch.testing.assert_close(p, torch.tensor([0.5, 0.25, 0.25]))
    expected, kl = ponder_loss(torch.tensor([[4.0], [2.0], [0.0]]), logits)
    torch.testing.assert_close(expected, torch.tensor(2.5))
    prior = geometric_prior(3, 0.2)
    torch.testing.assert_close(kl, (p * (p / prior).log()).sum())


def test_only_the_expected_loss_teaches_the_gate_weights():
    gates = torch.tensor([0.3, 0.7], requires_grad=True)
    logits = torch.tensor([[-2.0, 1.0], [0.0, -1.0], [0.5, 0.5]], requires_grad=True)
    expected, kl = ponder_loss(torch.tensor([[4.0, 1.0], [2.0, 1.0], [0.0, 3.0]]), logits, gates)
    assert torch.autograd.grad(kl, gates, retain_graph=True, allow_unused=True)[0] is None
    assert torch.autograd.grad(kl, logits, retain_graph=True)[0].abs().max() > 0  # it still shapes halting
    assert torch.autograd.grad(expected, gates)[0].abs().max() > 0


def test_eval_cell_evaluations_equal_the_sum_of_per_input_steps():
    expert = spread_expert()
    x = torch.randn(64, 4)
    r = expert(x, Halting(max_steps=12, threshold=0.7))
    assert r.steps.min() < r.steps.max()  # the spread is real, so the count below means something
    assert expert.cell.rows == int(r.steps.sum())
    assert ((r.confidence >= 0.7) | (r.steps == 12)).all()


def test_each_input_equals_running_it_alone_to_its_halting_step():
    expert = spread_expert()
    x = torch.randn(32, 4)
    r = expert(x, Halting(max_steps=10, threshold=0.7))
    for i in range(32):
        alone = expert(x[i:i + 1], Halting(max_steps=int(r.steps[i])))
        torch.testing.assert_close(alone.answer[0], r.answer[i], rtol=1e-5, atol=1e-5)
        assert alone.steps.item() == r.steps[i]


def test_stable_answer_halting_and_max_steps_beyond_training_depth():
    expert = spread_expert()  # trained depth 4
    x = torch.randn(32, 4)
    answers, _, _ = expert.trajectory(x, list(range(1, 41)))
    same = (answers[1:].argmax(-1) == answers[:-1].argmax(-1)).tolist()
    expected = []
    for i in range(32):  # by hand: the first step whose answer is the same as at the 3 steps before it
        run, stop = 0, 40
        for t in range(2, 41):
            run = run + 1 if same[t - 2][i] else 0
            if run >= 3:
                stop = t
                break
        expected.append(stop)
    r = expert(x, Halting(max_steps=40, stable_steps=3))
    assert r.steps.tolist() == expected
    assert r.steps.max() < 40 and r.steps.min() >= 4 and r.steps.max() > 4  # some settle past the trained depth
    torch.testing.assert_close(r.answer, answers[r.steps - 1, torch.arange(32)], rtol=1e-5, atol=1e-5)
    longer = expert(x, Halting(max_steps=40))
    assert (longer.steps == 40).all()  # 10× the training depth of 4, and really run that far
    torch.testing.assert_close(longer.answer, answers[-1], rtol=1e-5, atol=1e-5)


def test_combined_halting_waits_until_the_critic_is_sure_and_the_answer_has_settled():
    expert = spread_expert()
    x = torch.randn(64, 4)
    confident, stable = Halting(max_steps=30, threshold=0.7), Halting(max_steps=30, stable_steps=2)
    both = Halting(max_steps=30, threshold=0.7, stable_steps=2, combine="all")
    either = Halting(max_steps=30, threshold=0.7, stable_steps=2)
    answers, confidences, _ = expert.trajectory(x, list(range(1, 31)))
    same = (answers[1:].argmax(-1) == answers[:-1].argmax(-1)).tolist()
    expected = []
    for i in range(64):  # by hand: the first step at which the critic is sure after two unchanged answers
        run, stop = 0, 30
        for t in range(1, 31):
            run = run + 1 if t > 1 and same[t - 2][i] else 0
            if confidences[t - 1, i] >= 0.7 and run >= 2:
                stop = t
                break
        expected.append(stop)
    steps = {rule: expert(x, rule).steps for rule in (confident, stable, both, either)}
    assert steps[both].tolist() == expected
    assert (steps[both] > torch.maximum(steps[confident], steps[stable])).any()  # not just the later of the two
    assert torch.equal(steps[either], torch.minimum(steps[confident], steps[stable]))
    with pytest.raises(ConfigError, match="combine='all' needs both a threshold and stable_steps"):
        Halting(threshold=0.9, combine="all")


@pytest.mark.parametrize("causal", [False, True])
def test_the_transformer_cell_knows_order_by_relative_position(causal):
    """It was order-blind: a permuted sequence gave exactly the permuted output, so order-dependent labels (prefix
    sums) stayed near chance (a dense model of it: 0.554 position accuracy after 600 steps, 0.955 now)."""
    cell, h = TransformerCell(16, heads=2, causal=causal), torch.randn(2, 9, 16)
    order = torch.randperm(9)
    assert not torch.allclose(cell(h[:, order]), cell(h)[:, order], atol=1e-3)
    if causal:  # a position sees only its past: what follows it changes nothing
        torch.testing.assert_close(cell(h), cell(torch.cat([h, torch.randn(2, 4, 16)], dim=1))[:, :9])


@pytest.mark.parametrize("cell,shape", [(MLPCell(16), (5, 4)), (ConvCell(16), (5, 9, 4)),
                                        (TransformerCell(16, heads=2), (5, 9, 4))])
def test_any_cell_kind_and_sequence_answers_per_position(cell, shape):
    expert = ReflectionExpert(cell, 4, 3, dim=16, train_steps=3)
    r = expert(torch.randn(*shape))
    assert r.answers.shape == (3, *shape[:-1], 3)
    expert.eval()
    r = expert(torch.randn(*shape), Halting(max_steps=6, threshold=0.6))
    assert r.answer.shape == (*shape[:-1], 3) and r.steps.shape == (5,)


def test_input_is_reinjected_every_step():
    expert = ReflectionExpert(MLPCell(8), 2, 2, dim=8, train_steps=3)
    seen = []
    expert.cell.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(4, 2)
    z, xe, answer = expert.encode(x), expert.encode(x), None
    expert(x)
    recorded = list(seen)
    assert len(recorded) == 3
    for h in recorded:  # each cell input: state + encoded input + feedback of the previous answer (as probabilities)
        expected = z + xe + (expert.feedback(answer.softmax(-1)) if answer is not None else 0)
        torch.testing.assert_close(h, expected)
        z, answer, _ = expert.step(z, xe, answer)


def test_bad_input_shape_and_halting_rule():
    expert = ReflectionExpert(MLPCell(8), 2, 2, dim=8)
    with pytest.raises(ShapeError, match=r"expected inputs \(N, \.\.\., 2\)"):
        expert(torch.randn(3, 5))
    with pytest.raises(ConfigError, match="max_steps must be an integer >= 1"):
        Halting(max_steps=0)
    for train in (True, False):
        with pytest.raises(ShapeError, match=r"with N >= 1 and no empty dimension, got \(0, 2\)"):
            expert.train(train)(torch.randn(0, 2))
    with pytest.raises(ShapeError, match=r"with N >= 1 and no empty dimension, got \(0, 2\)"):
        expert.trajectory(torch.randn(0, 2), [1])
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        expert.train()(torch.randn(3, 2), steps=0)
    with pytest.raises(ConfigError, match="kernel_size must be odd"):
        ConvCell(8, kernel_size=4)
    with pytest.raises(ShapeError, match=r"TransformerCell: works over positions and needs sequences \(n, L, H\)"):
        TransformerCell(8)(torch.randn(3, 8))


def test_progressive_warmup_steps_carry_state_but_no_gradient():
    expert = ReflectionExpert(MLPCell(8), 2, 3, dim=8, train_steps=5)
    x = torch.randn(4, 2)
    full = expert(x, steps=5)
    tail = expert(x, warmup=3, steps=2)
    torch.testing.assert_close(tail.answers, full.answers[3:])
    tail.answers.sum().backward()
    assert expert.encode.weight.grad is not None  # the input is re-injected in the recorded steps
    assert tail.halt_logits.shape == (2, 4)


def test_a_trajectory_equals_running_each_fixed_depth_on_its_own():
    torch.manual_seed(0)
    model = MoRModel(3, 2, num_experts=3, k=2, dim=16, cell="conv", train_steps=2).eval()
    x = torch.randn(10, 7, 3)
    depths = [1, 4, 9]
    swept = model.trajectory(x, depths).answers
    assert swept.shape == (3, 10, 7, 2)
    for d, answer in zip(depths, swept, strict=True):
        torch.testing.assert_close(answer, model(x, halting=Halting(max_steps=d)))


def test_a_trajectory_gives_every_halting_rule_what_the_adaptive_run_gives():
    torch.manual_seed(0)
    model = MoRModel(3, 2, num_experts=3, k=2, dim=16, cell="conv", train_steps=2).eval()
    for expert in model.experts:  # critics that cross τ at different steps for different inputs
        expert.judge.bias.data[1] = 2.0
    x = torch.randn(40, 7, 3)
    rules = [Halting(max_steps=30, threshold=0.9), Halting(max_steps=30, stable_steps=3),
             Halting(max_steps=12, threshold=0.95, stable_steps=4),
             Halting(max_steps=30, threshold=0.9, stable_steps=2, combine="all")]
    swept = model.trajectory(x, [5], rules)
    for rule, output, steps in zip(rules, swept.outputs, swept.steps, strict=True):
        want, diagnostics = model(x, halting=rule, return_diagnostics=True)
        torch.testing.assert_close(output, want, rtol=1e-4, atol=1e-5)
        assert torch.equal(steps, diagnostics.steps)
        assert diagnostics.steps[diagnostics.mask].float().std() > 1  # the rule stopped inputs at different steps


def test_halting_kl_stays_finite_in_float16_where_a_step_has_probability_zero():
    p32 = torch.tensor([[0.9999], [1e-4], [0.0]])
    p = p32.half()
    assert (p == 0).any() and torch.isfinite(halting_kl(p)).all()
    torch.testing.assert_close(halting_kl(p).float(), halting_kl(p32), atol=1e-2, rtol=0)
    literal = (p32 * (torch.log(p32.clamp_min(1e-9)) - torch.log(geometric_prior(3, 0.2)[:, None]))).sum(0)
    assert torch.equal(halting_kl(p32), literal)  # float32 as before


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_halting_distribution_of_low_precision_logits_sums_to_one(dtype):
    """In bfloat16 the p_t summed to 1 ± 2 %, misweighting the expected answer and the ponder loss."""
    logits = torch.randn(16, 256, generator=torch.Generator().manual_seed(0)) - 2
    p = halting_distribution(logits.to(dtype))
    assert p.dtype == torch.float32
    torch.testing.assert_close(p.sum(0), torch.ones(256))
    torch.testing.assert_close(p, halting_distribution(logits.to(dtype).float()))


def test_training_steps_count_the_warm_up_steps_the_cell_ran_too():
    """Progressive training's warm-up steps cost cell evaluations; the steps (and so Diagnostics.compute) say so."""
    expert = ReflectionExpert(MLPCell(8), 4, 3, dim=8, train_steps=3).train()
    calls = []
    expert.cell.register_forward_hook(lambda *_: calls.append(1))
    reflection = expert(torch.randn(5, 4), warmup=2)
    assert len(calls) == 5 and reflection.steps.tolist() == [5] * 5 and reflection.answers.shape[0] == 3
