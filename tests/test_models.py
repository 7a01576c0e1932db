import pytest
import torch

from mor.data import PrefixSum
from mor.errors import ConfigError, ShapeError
from mor.nn import (
    ConflictPolicy,
    DenseModel,
    Halting,
    LossWeights,
    MoRModel,
    count_parameters,
    moe_baseline,
    reflection_baseline,
)


def running_parity(n: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return PrefixSum().batch(n, generator, length)


def fit(model, steps: int, lengths=(8, 16), seed: int = 0) -> None:
    """A plain AdamW loop on prefix parity with lengths drawn from a range."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        length = int(torch.randint(lengths[0], lengths[1] + 1, (), generator=gen))
        x, y = running_parity(64, length, gen)
        loss, _, _ = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def position_accuracy(model, length: int, **kwargs) -> float:
    model.eval()
    x, y = running_parity(512, length, torch.Generator().manual_seed(123))
    with torch.no_grad():
        return (model(x, **kwargs).argmax(-1) == y).float().mean().item()


def test_reflection_beats_depth_one_on_a_small_seeded_task():
    torch.manual_seed(0)
    mor = MoRModel(2, 2, num_experts=2, k=1, dim=32, cell="conv", train_steps=16)
    fit(mor, 400)
    torch.manual_seed(0)
    moe = moe_baseline(2, 2, num_experts=2, k=1, dim=32, cell="conv")
    fit(moe, 400)
    reflected = position_accuracy(mor, 16, halting=Halting(max_steps=16))
    depth_one = position_accuracy(moe, 16)
    assert reflected > 0.95, reflected
    assert reflected > depth_one + 0.2, (reflected, depth_one)


def test_loss_terms_are_named_and_all_reach_the_parameters():
    model = MoRModel(6, 3, num_experts=3, k=2, dim=16, train_steps=4, mode="attention")
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    total, parts, diagnostics = model.loss(x, y)
    assert set(parts) == {"task", "ponder", "halting_kl", "critic", "consistency", "route", "load_balance",
                          "z_loss"}
    total.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert diagnostics.steps[diagnostics.mask].eq(4).all()


def test_a_top_1_router_learns_from_the_route_term_which_expert_answers_better():
    torch.manual_seed(0)
    model = MoRModel(4, 3, num_experts=2, k=1, dim=8, train_steps=2, mode="gate")
    with torch.no_grad():
        for expert, answer in zip(model.experts, (0, 2), strict=True):  # expert 0 always says 0, expert 1 says 2
            expert.head.weight.zero_()
            expert.head.bias.copy_(9.0 * torch.nn.functional.one_hot(torch.tensor(answer), 3))
    x = torch.randn(256, 4)
    y = torch.where(x[:, 0] > 0, 2, 0)
    only = {name: 0.0 for name in ("ponder", "halting_kl", "critic", "load_balance", "z_loss")}
    task, _, d = model.loss(x, y, LossWeights(**only, route=0.0))
    assert 0 < d.load[1] < 1
    task_grad, = torch.autograd.grad(task, model.router.proj.weight, materialize_grads=True)
    assert task_grad.abs().sum() < 1e-6  # one expert's mixture weight is 1 whatever the router says
    opt = torch.optim.SGD(model.router.parameters(), lr=1.0)
    for _ in range(30):
        route, _, d = model.loss(x, y, LossWeights(**only, task=0.0, route=1.0))
        opt.zero_grad()
        route.backward()
        opt.step()
    assert (d.indices[:, 0] == y // 2).float().mean() > 0.95


def half_guessable(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D points: for x₀ > 0 the class is x₁ > 0 (learnable); for x₀ ≤ 0 it is a coin flip (wrong half the time)."""
    x = torch.randn(n, 2, generator=generator)
    coin = torch.randint(0, 2, (n,), generator=generator)
    return x, torch.where(x[:, 0] > 0, (x[:, 1] > 0).long(), coin)


def test_the_critic_learns_to_predict_whether_the_answer_is_right():
    torch.manual_seed(0)
    model = reflection_baseline(2, 2, dim=16, train_steps=3, halting=Halting(max_steps=3))
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):  # the default loss weights: the critic is one term among the others
        loss, _, _ = model.loss(*half_guessable(128, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = half_guessable(2000, torch.Generator().manual_seed(99))
    with torch.no_grad():
        out, d = model(x, return_diagnostics=True)
    right, confidence = out.argmax(-1) == y, d.confidence[:, 0]
    accuracy = right.float().mean().item()
    assert 0.7 < accuracy < 0.8, accuracy  # about all of the guessable half, half of the other: both kinds occur
    auc = (confidence[right][:, None] > confidence[~right][None]).float().mean().item()
    gap = (confidence[right].mean() - confidence[~right].mean()).item()
    assert auc > 0.75 and gap > 0.15, (auc, gap)  # the critic tells right answers from wrong ones
    assert abs(confidence.mean().item() - accuracy) < 0.1, (confidence.mean().item(), accuracy)  # calibrated


def test_regression_and_eval_diagnostics():
    model = MoRModel(5, 2, task="regression", num_experts=4, k=2, dim=16, train_steps=3)
    x, y = torch.randn(30, 5), torch.randn(30, 2)
    total, _, _ = model.loss(x, y)
    assert torch.isfinite(total)
    model.eval()
    out, d = model(x, halting=Halting(max_steps=7), return_diagnostics=True)
    assert out.shape == (30, 2) and d.compute.eq(14).all()
    with torch.no_grad():  # by hand: each selected expert's answer alone, then their weighted mean and variance
        alone = torch.stack([expert(x, Halting(max_steps=7)).answer for expert in model.experts])
    picked = alone[d.indices, torch.arange(30)[:, None]]  # (30, k, 2)
    w = d.weights / d.weights.sum(-1, keepdim=True)
    mean = (w[..., None] * picked).sum(1)
    torch.testing.assert_close(out, mean, rtol=1e-5, atol=1e-5)
    variance = (w[..., None] * (picked - mean[:, None]).square()).sum(1).mean(-1)
    torch.testing.assert_close(d.conflict, variance, rtol=1e-4, atol=1e-6)
    assert (d.conflict > 1e-4).all()  # distinct untrained experts disagree on every input


def test_conflict_policy_spends_more_steps_only_on_high_conflict_inputs():
    model = MoRModel(4, 3, num_experts=4, k=2, dim=16, train_steps=2).eval()
    x = torch.randn(200, 4)
    _, base = model(x, halting=Halting(max_steps=3), return_diagnostics=True)
    cut = base.conflict.median().item()
    model.conflict_policy = ConflictPolicy(threshold=cut, factor=3)
    _, escalated = model(x, halting=Halting(max_steps=3), return_diagnostics=True)
    hard = base.conflict > cut
    assert hard.any() and (~hard).any()
    assert escalated.compute[hard].eq(base.compute[hard] + 2 * 9).all()  # 2 experts × 9 more steps
    assert escalated.compute[~hard].eq(base.compute[~hard]).all()


def test_state_dict_round_trips_and_baselines_are_comparable():
    model = MoRModel(2, 2, num_experts=3, k=2, dim=16, cell="conv")
    clone = MoRModel(2, 2, num_experts=3, k=2, dim=16, cell="conv")
    clone.load_state_dict(model.state_dict())
    x = torch.randn(4, 9, 2)
    model.eval(), clone.eval()
    assert torch.equal(model(x), clone(x))
    single = reflection_baseline(2, 2, dim=16, cell="conv")
    dense = DenseModel(2, 2, dim=16, depth=3, cell="conv")
    assert count_parameters(single) < count_parameters(model)
    assert dense(x).shape == (4, 9, 2)


@pytest.mark.parametrize("cell", ["mlp", "conv"])
def test_bf16_autocast_runs_adaptive_halting_and_trajectories_on_cpu(cell):
    """Autocast lowers the answers to bf16; the buffers halted answers are written into must follow."""
    torch.manual_seed(0)
    model = MoRModel(4, 3, num_experts=3, k=2, dim=16, cell=cell, train_steps=3).eval()
    x = torch.randn(6, 5, 4) if cell == "conv" else torch.randn(6, 4)
    rules = [Halting(max_steps=4, threshold=0.5), Halting(max_steps=4, stable_steps=1)]
    with torch.no_grad():
        exact = model(x, halting=Halting(max_steps=3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, halting=Halting(max_steps=3))
            _, adaptive = model(x, halting=rules[0], return_diagnostics=True)
            trajectory = model.trajectory(x, [1, 3], rules)
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), exact, atol=0.05)
    assert adaptive.steps.min() >= 1 and adaptive.steps.max() <= 4
    assert trajectory.answers.shape == (2, *exact.shape) and all(s.max() <= 4 for s in trajectory.steps)
    assert torch.allclose(trajectory.answers[1].float(), exact, atol=0.05)


def test_bad_model_arguments_and_inputs():
    with pytest.raises(ConfigError, match="cell must be one of"):
        MoRModel(2, 2, cell="lstm")
    model = MoRModel(2, 2, dim=8)
    with pytest.raises(ShapeError, match=r"expected \(N, 2\) vectors"):
        model(torch.randn(3, 4))
    with pytest.raises(ShapeError, match=r"with N >= 1 \(and L >= 1\), got \(0, 2\)"):
        model.loss(torch.randn(0, 2), torch.zeros(0, dtype=torch.long))
    from mor.nn.transformer import TokenModel
    with pytest.raises(ShapeError, match=r"with B >= 1 and 1 <= T <= 8, got \(0, 4\)"):
        TokenModel(5, dim=8, depth=1, heads=2, max_len=8)(torch.zeros(0, 4, dtype=torch.long))
    model.eval()
    with pytest.raises(ConfigError, match=r"call model\.train"):
        model.loss(torch.randn(3, 2), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("kind", ["mor", "dense"])
@pytest.mark.parametrize("task,y,message", [
    ("regression", torch.zeros(5), r"targets y of shape \(5,\) .* give values of shape \(5, 1\)"),
    ("classification", torch.zeros(5, 1, dtype=torch.long), r"give integer class ids of shape \(5,\)"),
    ("classification", torch.zeros(4, dtype=torch.long), r"shape \(4,\) and dtype torch.int64 do not fit"),
    ("classification", torch.zeros(5), r"dtype torch.float32 do not fit"),
    ("classification", torch.zeros(5, dtype=torch.complex64), r"dtype torch.complex64 do not fit"),
    ("classification", torch.zeros(5, dtype=torch.bool), r"dtype torch.bool do not fit"),
])
def test_targets_that_do_not_fit_the_inputs_are_refused_before_they_broadcast(kind, task, y, message):
    out_dim = 1 if task == "regression" else 2
    model = (MoRModel(3, out_dim, dim=8, task=task) if kind == "mor" else DenseModel(3, out_dim, dim=8, task=task))
    with pytest.raises(ShapeError, match=message):
        model.train().loss(torch.randn(5, 3), y)


@pytest.mark.parametrize("cell", ["conv", "transformer"])
def test_cells_over_positions_refuse_vectors_instead_of_mixing_the_batch(cell):
    for model in (MoRModel(3, 2, dim=8, cell=cell), DenseModel(3, 2, dim=8, cell=cell)):
        with pytest.raises(ShapeError, match=f"cell '{cell}' works over positions and needs sequences"):
            model(torch.randn(4, 3))
    sequences = torch.randn(4, 6, 3)
    model = MoRModel(3, 2, dim=8, cell=cell, num_experts=2, k=1).eval()
    together = model(sequences)
    alone = torch.cat([model(row[None]) for row in sequences])
    assert torch.allclose(together, alone, atol=1e-5)  # sequences never see each other


@pytest.mark.parametrize("ffn", ["dense", "moe", "mor"])
def test_token_model_learns_a_repeating_sequence(ffn):
    from mor.nn.transformer import TokenModel

    torch.manual_seed(0)
    model = TokenModel(vocab=5, dim=32, depth=1, heads=2, max_len=32, ffn=ffn, num_experts=4, k=2, hidden=32)
    tokens = torch.arange(32).remainder(5).repeat(8, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        logits, aux = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss = loss + 0.01 * sum(aux.values(), torch.zeros(()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3, loss.item()
    assert ("load_balance" in aux) == (ffn != "dense")


def test_each_expert_keeps_its_own_halting_rule_unless_overridden():
    model = MoRModel(4, 3, num_experts=2, k=2, dim=8, train_steps=2).eval()
    model.experts[0].halting, model.experts[1].halting = Halting(max_steps=2), Halting(max_steps=5)
    _, d = model(torch.randn(16, 4), return_diagnostics=True)
    assert d.steps[d.indices == 0].eq(2).all() and d.steps[d.indices == 1].eq(5).all()
    _, d = model(torch.randn(16, 4), halting=Halting(max_steps=3), return_diagnostics=True)
    assert d.steps.eq(3).all()


@pytest.mark.parametrize("kwargs,message", [({"threshold": -0.1}, "ConflictPolicy.threshold"),
                                            ({"threshold": 0.1, "factor": 0.5}, "ConflictPolicy.factor: must be > 1"),
                                            ({"threshold": 0.1, "confidence": 1.5}, "ConflictPolicy.confidence")])
def test_a_conflict_policy_that_would_not_spend_more_is_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ConflictPolicy(**kwargs)


def test_a_conflict_policy_escalates_each_experts_own_halting_rule():
    torch.manual_seed(0)
    model = MoRModel(4, 3, num_experts=2, k=2, dim=16, train_steps=2).eval()
    model.experts[0].halting, model.experts[1].halting = Halting(max_steps=2), Halting(max_steps=8)
    x = torch.randn(50, 4)
    _, base = model(x, return_diagnostics=True)
    model.conflict_policy = ConflictPolicy(threshold=base.conflict.median().item(), factor=2)
    _, escalated = model(x, return_diagnostics=True)
    hard = base.conflict > model.conflict_policy.threshold
    more, experts = escalated.steps[hard] - base.steps[hard], base.indices[hard]
    assert hard.any() and more[experts == 0].eq(4).all() and more[experts == 1].eq(16).all()


def test_escalated_inputs_keep_the_experts_the_batch_gave_them_under_a_capacity_limit():
    torch.manual_seed(0)
    model = MoRModel(4, 3, num_experts=4, k=2, dim=16, train_steps=2, capacity_factor=0.5).eval()
    x = torch.randn(16, 4)
    _, base = model(x, return_diagnostics=True)
    model.conflict_policy = ConflictPolicy(threshold=base.conflict.median().item(), factor=2)
    out, escalated = model(x, return_diagnostics=True)
    hard = base.conflict > model.conflict_policy.threshold
    assert hard.sum() >= 2 and escalated.mask.eq(base.mask).all() and escalated.indices.eq(base.indices).all()
    model.conflict_policy = None
    longer = model(x, halting=Halting(max_steps=4))  # the whole batch routed once, run to the escalated depth
    assert torch.allclose(out[hard], longer[hard], atol=1e-6)


@pytest.mark.parametrize("rule,policy,expected", [
    (Halting(max_steps=4), ConflictPolicy(0.0, 2.0, confidence=0.9), Halting(max_steps=8)),
    (Halting(max_steps=4, threshold=0.95), ConflictPolicy(0.0, 2.0, confidence=0.9), Halting(8, threshold=0.95)),
    (Halting(max_steps=4, threshold=0.8), ConflictPolicy(0.0, 2.0, confidence=0.9), Halting(8, threshold=0.9)),
    (Halting(max_steps=1), ConflictPolicy(0.0, 1.5), Halting(max_steps=2)),
    (Halting(max_steps=3), ConflictPolicy(0.0, 1.2), Halting(max_steps=4)),
    (Halting(4, threshold=0.8, stable_steps=3), ConflictPolicy(0.0, 2.0), Halting(8, threshold=0.9, stable_steps=6)),
    (Halting(4, threshold=0.9, stable_steps=1, combine="all"), ConflictPolicy(0.0, 1.5),
     Halting(6, threshold=0.9333, stable_steps=2, combine="all")),
])
def test_escalation_never_stops_earlier_and_always_allows_more_steps(rule, policy, expected):
    def rounded(h: Halting) -> tuple:
        return h.max_steps, h.threshold and round(h.threshold, 4), h.stable_steps, h.combine

    assert rounded(policy.escalate(rule)) == rounded(expected)


def test_escalated_inputs_that_had_stopped_early_reflect_longer_and_change_their_answers():
    torch.manual_seed(0)
    model = MoRModel(4, 3, num_experts=2, k=2, dim=16, train_steps=2).eval()
    x, rule = torch.randn(200, 4), Halting(8, threshold=0.5, stable_steps=2)
    out, base = model(x, halting=rule, return_diagnostics=True)
    model.conflict_policy = ConflictPolicy(0.0, 2.0)  # every input with any conflict escalates
    again, escalated = model(x, halting=rule, return_diagnostics=True)
    hard = base.conflict > 0
    steps, rerun = base.steps[hard], (escalated.steps - base.steps)[hard]
    assert hard.float().mean() > 0.9 and (steps < 8).float().mean() > 0.5
    assert (rerun >= steps).all() and (rerun > steps).float().mean() > 0.5
    assert not torch.allclose(out[hard], again[hard])


def test_an_escalated_fixed_depth_rule_runs_every_hard_input_longer():
    torch.manual_seed(0)
    model = MoRModel(4, 3, num_experts=2, k=2, dim=16, train_steps=4).eval()
    for expert in model.experts:
        expert.judge.bias.data[1] = 3.0  # confident critics: a borrowed threshold of 0.9 would stop at step 1
    x = torch.randn(32, 4)
    _, base = model(x, return_diagnostics=True)
    model.conflict_policy = ConflictPolicy(threshold=base.conflict.median().item(), factor=2, confidence=0.9)
    _, escalated = model(x, return_diagnostics=True)
    hard = base.conflict > model.conflict_policy.threshold
    assert hard.any() and escalated.steps[hard].eq(4 + 8).all()


def test_a_float16_model_with_a_capacity_factor_answers_finite_values():
    torch.manual_seed(0)
    x = torch.randn(16, 4).half()
    model = MoRModel(4, 3, num_experts=4, k=2, dim=16, train_steps=2, capacity_factor=0.5).eval().half()
    out, d = model(x, return_diagnostics=True)
    assert (~d.mask.any(-1)).any() and torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["gate", "confidence", "attention"])
def test_float32_loss_gradients_and_outputs_are_bit_identical_with_the_literal_guards(monkeypatch, mode):
    """The float16-safe guard epsilon leaves float32 numerics exactly as they were with a literal 1e-9."""
    def run() -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = MoRModel(4, 3, num_experts=4, k=2, dim=16, train_steps=3, mode=mode, capacity_factor=0.5)
        x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        total, parts, _ = model.loss(x, y)
        grads = torch.autograd.grad(total, list(model.parameters()), allow_unused=True, materialize_grads=True)
        return [total, *parts.values(), *grads, model.eval()(x)]

    guarded = run()
    for module in ("mor.nn.functional", "mor.nn.integration", "mor.nn.losses", "mor.nn.models"):
        monkeypatch.setattr(f"{module}.eps", lambda dtype, floor=1e-9: floor)
    literal = run()
    assert all(torch.equal(a, b) for a, b in zip(guarded, literal, strict=True))


@pytest.mark.parametrize("make,error,message", [
    (lambda: Halting(max_steps=2.5), ConfigError, "Halting.max_steps must be an integer >= 1, got 2.5"),
    (lambda: Halting(8, stable_steps=1.5), ConfigError, "Halting.stable_steps must be an integer"),
    (lambda: MoRModel(8, 3, train_steps=0), ConfigError, r"MoRModel: dim \(64\) and train_steps \(0\)"),
    (lambda: MoRModel(8, 3, dim=0), ConfigError, r"MoRModel: dim \(0\)"),
    (lambda: DenseModel(8, 3, depth=-1), ConfigError, r"DenseModel: dim \(64\) and depth \(-1\)"),
    (lambda: MoRModel(8, 3, dim=30, cell="transformer"), ConfigError, r"dim \(30\) must be a multiple of 2 × heads"),
    (lambda: MoRModel(8, 3, dim=8).eval()(torch.randn(2, 0, 8)), ShapeError, r"\(and L >= 1\), got \(2, 0, 8\)"),
    (lambda: MoRModel(8, 3, dim=8).experts[0](torch.tensor(1.0)), ShapeError, r"no empty dimension, got \(\)"),
    (lambda: MoRModel(8, 3, dim=8).loss(torch.randn(4, 8), torch.full((4,), 7)), ShapeError,
     r"class ids must be in \[0, 3\), got 7 to 7"),
], ids=["float-steps", "float-stable", "no-steps", "no-width", "negative-depth", "heads", "empty-sequences", "0-d",
        "class-id"])
def test_bad_arguments_get_one_clear_line(make, error, message):
    with pytest.raises(error, match=message) as caught:
        make()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("tokens,targets,message", [
    (torch.zeros(2, 4), None, r"token ids must be integers in \[0, 20\), got dtype torch.float32"),
    (torch.full((2, 4), 25), None, r"in \[0, 20\), got dtype torch.int64 with values from 25 to 25"),
    (torch.zeros(2, 4, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long), r"targets y of shape \(4, 2\)"),
], ids=["float-ids", "past-vocab", "transposed-targets"])
def test_a_token_model_refuses_ids_and_targets_it_cannot_read(tokens, targets, message):
    from mor.nn.transformer import TokenModel
    model = TokenModel(20, dim=16, depth=1, heads=2, max_len=8, hidden=16)
    with pytest.raises(ShapeError, match=message):
        model(tokens) if targets is None else model.loss(tokens, targets)


def test_trajectory_takes_depths_as_any_sequence():
    model = MoRModel(8, 3, dim=8).eval()
    assert model.trajectory(torch.randn(2, 8), (2, 3)).answers.shape == (2, 2, 3)


def test_token_model_sizes_and_target_ids_out_of_range_are_one_line_errors():
    """They were a ZeroDivisionError (heads=0), an IndexError (num_experts=0) or cross-entropy's IndexError."""
    from mor.nn.transformer import TokenModel

    for sizes in ({"heads": 0}, {"num_experts": 0}, {"depth": 0}, {"max_len": 0}):
        with pytest.raises(ConfigError, match=r"TokenModel: vocab \(10\), dim \(16\), .* must all be >= 1"):
            TokenModel(10, dim=16, **{"heads": 2, **sizes})
    model = TokenModel(10, dim=16, depth=1, heads=2, max_len=8, hidden=16)
    for bad in (10, -1):
        with pytest.raises(ShapeError, match=rf"ids must be in \[0, 10\) or -100 \(ignored\), got {bad} to {bad}"):
            model.loss(torch.zeros(2, 8, dtype=torch.long), torch.full((2, 8), bad))


@pytest.mark.parametrize("ffn", ["dense", "moe", "mor"])
def test_a_padded_token_batch_gives_each_sequence_the_logits_it_gets_alone(ffn):
    """Padded left or right, by an attention mask: padding is attended by no token, takes no position and is routed
    by no expert; the loss counts only targets that are not -100."""
    from mor.nn.transformer import IGNORE, TokenModel

    torch.manual_seed(0)
    model = TokenModel(12, dim=16, depth=2, heads=2, max_len=16, ffn=ffn, num_experts=3, k=2, hidden=16).eval()
    short, long = torch.randint(1, 12, (1, 5)), torch.randint(1, 12, (1, 8))
    pad = torch.zeros(1, 3, dtype=torch.long)
    batch = torch.cat([torch.cat([short, pad], 1), torch.cat([pad, short], 1), long])
    mask = torch.tensor([[1] * 5 + [0] * 3, [0] * 3 + [1] * 5, [1] * 8], dtype=torch.bool)
    logits, _ = model(batch, mask)
    alone_short, alone_long = model(short)[0][0], model(long)[0][0]
    torch.testing.assert_close(logits[0, :5], alone_short)
    torch.testing.assert_close(logits[1, 3:], alone_short)
    torch.testing.assert_close(logits[2], alone_long)
    unpadded = model(batch)[0]
    assert not torch.allclose(unpadded[1, 3:], alone_short, atol=1e-4)  # without the mask, padding is read
    targets = torch.where(mask, torch.randint(0, 12, batch.shape), IGNORE)
    _, parts, _ = model.loss(batch, targets, mask=mask)
    real = torch.cat([alone_short, alone_short, alone_long])
    expected = torch.nn.functional.cross_entropy(real, targets[mask])
    torch.testing.assert_close(parts["task"], expected)


def test_a_token_mask_that_does_not_fit_the_tokens_is_one_clear_error():
    from mor.nn.transformer import TokenModel

    model = TokenModel(10, dim=16, depth=1, heads=2, max_len=8, hidden=16)
    with pytest.raises(ShapeError, match=r"mask must be bool of the tokens' shape \(2, 4\), got torch.int64"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))
