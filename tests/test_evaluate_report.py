"""evaluate(): structure and invariants on small untrained models; write_report(): markdown and real PNGs."""

import json
import math
import re

import pytest
import torch

from mor.data import get_task
from mor.errors import ConfigError
from mor.nn import (
    DenseModel,
    Halting,
    MLPCell,
    MoRModel,
    ReflectionExpert,
    TokenModel,
    moe_baseline,
)
from mor.nn.reflection import fixed_depth
from mor.train import plots
from mor.train.config import EvalConfig
from mor.train.evaluate import effectiveness, evaluate, mutual_information, routing_counts, routing_matrix
from mor.train.report import summary, write_report
from mor.train.trainer import Trainer

CFG = EvalConfig(examples=64, sizes=[8, 16], max_steps=[1, 2, 4], thresholds=[0.9], stable_steps=[2], seed=7)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluations() -> dict[str, dict]:
    torch.manual_seed(0)
    task = get_task("prefix_sum", sizes=[4, 8])
    mor = MoRModel(2, 2, num_experts=2, k=1, dim=8, cell="conv", train_steps=3,
                   halting=Halting(max_steps=4, stable_steps=2))
    moe = moe_baseline(2, 2, num_experts=2, k=1, dim=8, cell="conv")
    dense = DenseModel(2, 2, dim=8, depth=2, cell="conv")
    return {name: evaluate(model, task, CFG, (4, 8)) for name, model in
            (("MoR", mor), ("MoE (depth 1)", moe), ("dense", dense))}


def test_evaluate_is_json_and_deterministic(evaluations):
    task = get_task("prefix_sum", sizes=[4, 8])
    dense = DenseModel(2, 2, dim=8, depth=2, cell="conv")
    first, second = (json.loads(json.dumps(evaluate(dense, task, CFG, (4, 8)))) for _ in range(2))
    for a, b in zip(first["depth"], second["depth"], strict=True):
        assert a["accuracy"] == b["accuracy"] and a["position_accuracy"] == b["position_accuracy"]
    assert json.loads(json.dumps(evaluations["MoR"]))["sizes"] == [8, 16]


def test_fixed_depth_records(evaluations):
    mor, dense = evaluations["MoR"], evaluations["dense"]
    assert {(r["size"], r["max_steps"]) for r in mor["depth"]} == {(s, d) for s in (8, 16) for d in (1, 2, 3, 4)}
    for r in mor["depth"] + dense["depth"]:
        assert 0 <= r["accuracy"] <= r["position_accuracy"] <= 1
        assert r["latency_ms"] > 0
    for r in mor["depth"]:
        assert r["mean_steps"] == r["max_steps"] and r["compute"] == r["max_steps"]  # k = 1
    assert [(r["size"], r["max_steps"], r["mean_steps"]) for r in dense["depth"]] == [(8, 2, 2.0), (16, 2, 2.0)]
    assert dense["halting"] == [] and dense["load"] is None and dense["steps_histogram"] is None


def test_the_depth_one_moe_is_scored_at_depth_one_only(evaluations):
    """Run deeper than the one step it was trained for, the MoE would be a model no one trained, and its best depth
    would stand in the report for "MoE (depth 1)"."""
    moe = evaluations["MoE (depth 1)"]
    assert [(r["size"], r["max_steps"]) for r in moe["depth"]] == [(8, 1), (16, 1)]
    assert moe["halting"] == [] and moe["steps_histogram"] is None and moe["load"] is not None


def test_the_steps_histogram_leaves_out_inputs_a_capacity_limit_dropped():
    from mor.train.evaluate import Pass, steps_histogram

    steps, mask = torch.tensor([[2, 0], [0, 0], [1, 3]]), torch.tensor([[True, False], [False, False], [True, True]])
    assert steps_histogram(Pass(torch.zeros(3, 2), 1.0, steps, mask), 4) == [0, 1, 1, 0]


def test_halting_histogram_and_effectiveness(evaluations):
    mor = evaluations["MoR"]
    rules = {r["rule"] for r in mor["halting"]}
    assert rules == {"τ=0.9, max 4", "stable 2, max 4", "τ=0.9 and stable 2, max 4"}  # own rule = stable 2, max 4
    assert sum(r["own"] for r in mor["halting"]) == 2  # once per size
    for r in mor["halting"]:
        assert 1 <= r["mean_steps"] <= r["max_steps"] and 0 < r["fraction_of_max"] <= 1
        assert 0 <= r["accuracy"] <= 1
    histogram = mor["steps_histogram"]
    assert histogram["size"] == 16 and len(histogram["counts"]) == 4 and sum(histogram["counts"]) == CFG.examples
    gains = [(r["size"], r["from"], r["to"]) for r in mor["effectiveness"]]
    assert gains == [(s, a, b) for s in (8, 16) for a, b in ((1, 2), (2, 3), (3, 4))]
    assert evaluations["dense"]["effectiveness"] == []


def test_default_sizes_respect_the_task():
    cfg = EvalConfig(examples=16, max_steps=[1], thresholds=[], stable_steps=[])
    model = MoRModel(64, 2, num_experts=2, k=1, dim=8, train_steps=1)
    parity = evaluate(model, get_task("parity", dim=64, sizes=[1, 20]), cfg)
    assert parity["sizes"] == [20, 40]  # 80 is past max_size 64
    regimes = evaluate(MoRModel(4, 1, num_experts=2, k=1, dim=8, task="regression", train_steps=1),
                       get_task("regimes"), cfg)
    assert regimes["sizes"] == [None] and {"mse", "r2"} <= set(regimes["depth"][0])


def test_routing_matrix_on_a_grouped_task():
    task = get_task("mix", sizes=[4, 8])
    model = MoRModel(task.in_dim, 2, num_experts=3, k=2, dim=8, cell="conv", train_steps=1)
    load = evaluate(model, task, EvalConfig(examples=96, max_steps=[1], thresholds=[], stable_steps=[]))["load"]
    assert load["size"] == 8 and load["groups"] == list(task.groups)
    assert sum(load["rate"]) == pytest.approx(2)  # k = 2 experts per example
    assert len(load["matrix"]) == 3
    for row in load["matrix"]:
        assert len(row) == 3 and sum(row) == pytest.approx(1)
    assert 0 <= load["mutual_information"] <= math.log2(3) + 1e-9


def test_mutual_information():
    same = torch.tensor([[5, 5, 0], [10, 10, 0], [1, 1, 0]])
    assert mutual_information(same) == pytest.approx(0, abs=1e-12)
    assert mutual_information(torch.tensor([[10, 0], [0, 10]])) == pytest.approx(1)
    assert mutual_information(torch.eye(4)) == pytest.approx(2)
    counts = routing_counts(torch.tensor([0, 0, 1, 1, 1]), torch.tensor([1, 1, 0, 0, 1]), 3, 2)
    assert counts.tolist() == [[0, 2], [2, 1], [0, 0]]
    assert routing_matrix(counts).flatten().tolist() == pytest.approx([0, 1, 2 / 3, 1 / 3, 0, 0])


def test_write_report(tmp_path, evaluations):
    metrics = tmp_path / "metrics.jsonl"
    lines = [{"kind": "train", "step": s, "loss": 1 / s, "task": 0.5 / s, "ponder": 0.3, "lr": 1e-3,
              "accuracy": s / 40, "mean_steps": 3.0, "examples_per_s": 900.0} for s in (10, 20, 30)]
    lines += [{"kind": "eval", "step": 30, "accuracy": 0.7, "mean_steps": 2.5, "loss": 0.2}]
    metrics.write_text("\n".join(map(json.dumps, lines)) + "\n{truncated\n")
    path = write_report(tmp_path / "run", "Prefix sums", metrics, evaluations, notes=["one seed"])
    assert path == tmp_path / "run" / "report.md"
    text = path.read_text()
    for name in evaluations:
        assert name in text
    assert "one seed" in text and "1 unreadable line" in text and "Reflection depth effectiveness" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"plots/training.png", "plots/accuracy_depth.png", "plots/routing.png"} <= set(images)
    for image in images:
        assert (path.parent / image).read_bytes().startswith(PNG)


def test_report_states_shortfalls(tmp_path, evaluations):
    worse = json.loads(json.dumps(evaluations["MoR"]))
    for r in worse["depth"] + worse["halting"]:
        r["accuracy"] = 0.0
    better = json.loads(json.dumps(evaluations["dense"]))
    for r in better["depth"]:
        r["accuracy"] = 1.0
    runs = {"MoR": worse, "dense": better}
    text = write_report(tmp_path, "t", tmp_path / "missing.jsonl", runs).read_text()
    assert "MoR does NOT beat dense" in text and not (tmp_path / "plots" / "training.png").exists()
    console = summary(runs)
    assert "does NOT beat dense" in console and 5 <= len(console.splitlines()) <= 25


def test_an_own_rule_that_only_ties_a_baseline_is_not_called_a_win(evaluations):
    mine, theirs = json.loads(json.dumps(evaluations["MoR"])), json.loads(json.dumps(evaluations["dense"]))
    for rows, accuracy in ((mine["depth"], 0.9), (mine["halting"], 0.5), (theirs["depth"], 0.5)):
        for r in rows:
            r["accuracy"] = accuracy
    text = summary({"MoR": mine, "dense": theirs})
    assert "with its own halting rule (0.500 in" in text and "ties dense's best 0.500" in text
    assert "beats every baseline at every size" not in text


def test_regression_is_ranked_on_mse_not_on_the_share_within_tolerance(tmp_path):
    """On values "accuracy" is only the share within ±0.1: a model with more answers near the target and a worse
    mean squared error used to be reported the winner."""
    torch.manual_seed(0)
    task = get_task("regimes")
    cfg = EvalConfig(examples=64, max_steps=[1, 2], seed=7)
    runs = {name: evaluate(model, task, cfg) for name, model in
            (("MoR", MoRModel(task.in_dim, 1, dim=8, task="regression", train_steps=2)),
             ("dense", DenseModel(task.in_dim, 1, dim=8, depth=2, task="regression")))}
    for name, accuracy, mse in (("MoR", 0.149, 0.641), ("dense", 0.134, 0.634)):
        for r in runs[name]["depth"] + runs[name]["halting"]:
            r["accuracy"], r["mse"] = accuracy, mse
    text = write_report(tmp_path, "t", tmp_path / "missing.jsonl", runs).read_text()
    assert "| best MSE @ depth | R² (best) | MSE @ training depth | own rule: MSE |" in text
    assert "MoR does NOT beat dense: best MSE 0.641" in text and "beats every baseline" not in text
    assert "Evaluation — MSE" in summary(runs) and "does NOT beat dense" in summary(runs)


@pytest.fixture(scope="module")
def chars():
    return get_task("chars", max_chars=20_000, context=16)


@pytest.fixture(scope="module")
def token_models(chars) -> dict[str, TokenModel]:
    torch.manual_seed(0)
    return {name: TokenModel(chars.in_dim, dim=16, depth=1, heads=2, max_len=16, ffn=ffn, num_experts=2, k=1,
                             hidden=16, train_steps=2)
            for name, ffn in (("MoR", "mor"), ("MoE", "moe"), ("dense", "dense"))}


TOKEN_CFG = EvalConfig(examples=32, max_steps=[1, 3], seed=7)


@pytest.fixture(scope="module")
def token_evaluations(chars, token_models) -> dict[str, dict]:
    return {name: evaluate(model, chars, TOKEN_CFG) for name, model in token_models.items()}


def test_token_models_are_scored_in_bits_per_char_by_reflection_depth(chars, token_models, token_evaluations):
    mor, dense = token_evaluations["MoR"], token_evaluations["dense"]
    assert [r["max_steps"] for r in mor["depth"]] == [1, 2, 3] and [r["max_steps"] for r in dense["depth"]] == [1]
    assert [ev["model"]["kind"] for ev in token_evaluations.values()] == ["mor", "moe", "dense"]
    assert mor["model"]["train_depth"] == 2 and mor["sizes"] == [None] and mor["examples"] == [32]
    experts = [m for m in token_models["MoR"].modules() if isinstance(m, ReflectionExpert)]
    assert len(experts) == 2 and all(e.halting == Halting(max_steps=2) for e in experts)  # own rule restored
    x, y = chars.eval_set(32, seed=7)
    with torch.no_grad():
        logits, _ = token_models["dense"].eval()(x)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()) / math.log(2)
    assert dense["depth"][0]["bits_per_char"] == pytest.approx(float(expected), rel=1e-5)
    for ev in token_evaluations.values():
        for r in ev["depth"]:
            assert abs(r["bits_per_char"] - math.log2(chars.in_dim)) < 1.5  # untrained: near uniform
            assert 0 <= r["accuracy"] <= 1 and r["token_latency_ms"] == pytest.approx(r["latency_ms"] / 16)
    assert json.loads(json.dumps(token_evaluations)) == token_evaluations
    with pytest.raises(ConfigError, match=r"eval\.sizes \(--size\): a token model is evaluated"):
        evaluate(token_models["dense"], chars, EvalConfig(examples=8, sizes=[32]))


@pytest.mark.parametrize("ffn", ["mor", "moe", "dense"])
def test_a_token_models_compute_counts_every_blocks_experts_per_token(chars, ffn):
    torch.manual_seed(0)
    model = TokenModel(chars.in_dim, dim=16, depth=2, heads=2, max_len=16, ffn=ffn, num_experts=3, k=2, hidden=16)
    ev = evaluate(model, chars, EvalConfig(examples=4, max_steps=[1, 3], seed=7))
    per_token = {r["max_steps"]: r["compute"] for r in ev["depth"]}
    assert per_token == ({1: 4, 3: 12} if ffn == "mor" else {1: 4} if ffn == "moe" else {1: 2})
    if ffn == "mor":  # what the cells really run: every token through 2 blocks × 2 experts × 3 steps
        rows = []
        for cell in (m for m in model.modules() if isinstance(m, MLPCell)):
            cell.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[:-1].numel()))
        x, _ = chars.eval_set(4, seed=7)
        with fixed_depth(model, 3), torch.no_grad():
            model.eval()(x)
        assert sum(rows) / x.numel() == per_token[3]


def test_report_and_summary_of_token_models(tmp_path, token_evaluations):
    path = write_report(tmp_path, "chars", tmp_path / "missing.jsonl", token_evaluations)
    text = path.read_text()
    bits = f"{token_evaluations['dense']['depth'][0]['bits_per_char']:.3f}"
    assert "bits/char" in text and f"| dense | {bits} |" in text and "| **MoR** |" in text
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (path.parent / image).read_bytes().startswith(PNG)
    assert bits in summary(token_evaluations)
    worse = json.loads(json.dumps(token_evaluations))
    for r in worse["MoR"]["depth"]:
        r["bits_per_char"] = 99.0
    assert "MoR does NOT beat dense: 99.000 vs" in write_report(tmp_path, "chars", tmp_path / "none", worse).read_text()
    assert "MoR does NOT beat MoE: 99.000 vs" in summary(worse)


def test_a_regression_reports_depth_gains_halting_and_plots_in_mse_not_in_the_share_within_tolerance(tmp_path):
    torch.manual_seed(0)
    task = get_task("regimes")
    ev = evaluate(MoRModel(task.in_dim, 1, dim=8, task="regression", train_steps=2), task,
                  EvalConfig(examples=64, max_steps=[1, 2], seed=7))
    for r in ev["depth"]:  # the share within tolerance falls while MSE falls too: the gain is the MSE's
        r["accuracy"], r["mse"] = {1: (0.5, 0.8), 2: (0.4, 0.6)}[r["max_steps"]]
    ev["effectiveness"] = effectiveness(ev["depth"])
    assert {round(r["per_step"], 6) for r in ev["effectiveness"]} == {0.2}
    text = write_report(tmp_path, "t", tmp_path / "missing.jsonl", {"MoR": ev}).read_text()
    assert "MSE removed (standardised targets; negative: MSE grew) per extra reflection step" in text
    assert "| size | rule | MSE | R² | mean steps |" in text and "+0.2000" in text
    figure = plots.accuracy_figure({"MoR": ev})
    assert figure.axes[0].get_ylabel() == "MSE (standardised targets)"
    assert sorted(figure.axes[0].lines[0].get_ydata()) == [0.6, 0.8]
    assert "val MSE 0.6000" in Trainer._status({"loss": 1.0}, {"accuracy": 0.4, "mse": 0.6})
