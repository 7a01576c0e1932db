"""Config and CLI review fixes: bounded seeds, finite numbers, booleans that are not numbers, repeated YAML keys,
evaluation seeds that collide with training batches, run folders named `best`, and integration options a mode
would ignore. Every bad value is a one-line ConfigError naming the field."""

import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mor.data import get_task
from mor.errors import ConfigError
from mor.system.config import load_config
from mor.train import checkpoint
from mor.train.config import load, parse, saved
from mor.train.trainer import Trainer

TINY = {"model": {"dim": 8, "train_steps": 2},
        "data": {"task": "prefix_sum", "sizes": [4, 8], "batch_size": 8},
        "train": {"steps": 4, "warmup": 0, "threads": 1}}
SYSTEM = {"experts": [{"name": "m", "kind": "math", "capabilities": ["math"]},
                      {"name": "c", "kind": "callable", "function": "builtins:str"}]}


def tiny(run_dir: Path, **sections: dict):
    """The tiny run config in `run_dir`, each of `sections` updating its section."""
    raw = json.loads(json.dumps(TINY))
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    raw["checkpoint"] = {"dir": str(run_dir)}
    return parse(raw)


def config_error(text: str, tmp_path: Path) -> str:
    """The one-line ConfigError loading run config `text` gives."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


@pytest.mark.parametrize("field,seed", [("train", 2**62), ("train", -1), ("train", 2**32), ("eval", 2**64 - 1),
                                        ("eval", 2**32)])
def test_seeds_outside_0_to_2_32_are_refused_when_loading(tmp_path, field, seed):
    message = config_error(f"{field}: {{seed: {seed}}}\n", tmp_path)
    assert f"{field}.seed: must be an integer in [0, 2^32)" in message and f"got {seed}" in message
    assert getattr(tiny(tmp_path, **{field: {"seed": 2**32 - 1}}), field).seed == 2**32 - 1


@pytest.mark.parametrize("text,field", [
    ("train: {lr: .inf}", "train.lr"), ("train: {weight_decay: .inf}", "train.weight_decay"),
    ("train: {clip: .inf}", "train.clip"), ("model: {noise_std: .inf}", "model.noise_std"),
    ("train: {loss: {task: .inf}}", "train.loss.task"), ("train: {loss: {route: .inf}}", "train.loss.route"),
    ("train: {min_lr_ratio: .nan}", "train.min_lr_ratio"),
])
def test_infinite_numbers_are_refused_in_every_section(tmp_path, text, field):
    assert f"{field}: must be a finite number" in config_error(text + "\n", tmp_path)


@pytest.mark.parametrize("task,options,field", [
    ("mix", {"weights": [float("inf"), 1, 1]}, "data.weights"),
    ("mix", {"weights": [3e38, 3e38, 1]}, "data.weights"),  # finite, but their float32 sum is not
    ("regimes", {"noise": float("inf")}, "data.noise"),
])
def test_task_options_refuse_infinite_numbers(task, options, field):
    with pytest.raises(ConfigError, match=rf"^{field}: expected"):
        get_task(task, **options)


@pytest.mark.parametrize("text,field", [
    ("train: {steps: yes}", "train.steps"), ("train: {seed: true}", "train.seed"),
    ("model: {num_experts: on}", "model.num_experts"), ("eval: {sizes: [8, true]}", "eval.sizes"),
    ("data: {batch_size: true}", "data.batch_size"), ("train: {lr: true}", "train.lr"),
])
def test_yaml_booleans_are_not_taken_as_numbers(tmp_path, text, field):
    assert f"{field}: takes numbers, not booleans" in config_error(text + "\n", tmp_path)
    path = tmp_path / "lr.yaml"
    path.write_text("train: {lr: 1e-3, weight_decay: 1E-2}\n")  # PyYAML reads these as strings; they still load
    assert load(path).train.lr == 0.001 and load(path).train.weight_decay == 0.01


@pytest.mark.parametrize("section,value", [("top_k", True), ("min_confidence", True)])
def test_system_config_refuses_booleans_as_numbers(tmp_path, section, value):
    path = tmp_path / "system.yaml"
    path.write_text(yaml.safe_dump({**SYSTEM, "router": {section: value, "default": "m"}}))
    with pytest.raises(ConfigError, match=rf"router\.{section}: takes numbers, not booleans"):
        load_config(path)


def test_a_repeated_section_is_refused_naming_the_key_and_its_lines(tmp_path):
    message = config_error("train:\n  steps: 3\nmodel: {dim: 8}\ntrain:\n  lr: 0.01\n", tmp_path)
    assert "at line 4" in message and "key 'train' repeated (first at line 1)" in message
    assert "key 'lr' repeated" in config_error("train: {lr: 0.1, lr: 0.2}\n", tmp_path)
    system = tmp_path / "system.yaml"
    system.write_text(yaml.safe_dump(SYSTEM) + "router: {top_k: 1}\nrouter: {top_k: 2}\n")
    with pytest.raises(ConfigError, match=r"key 'router' repeated \(first at line \d+\)"):
        load_config(system)


def test_chars_without_test_text_cannot_early_stop():
    with pytest.raises(ConfigError, match=r"train\.early_stop: with data\.test_fraction 0"):
        parse({"data": {"task": "chars", "test_fraction": 0}, "train": {"early_stop": 3}})
    parse({"data": {"task": "chars", "test_fraction": 0}})
    parse({"data": {"task": "chars"}, "train": {"early_stop": 3}})


def test_grad_accum_above_256_is_refused(tmp_path):
    assert "train.grad_accum: must be <= 256, got 257" in config_error("train: {grad_accum: 257}\n", tmp_path)
    assert tiny(tmp_path, train={"grad_accum": 256}).train.grad_accum == 256


def test_a_colliding_default_eval_seed_blames_grad_accum_and_names_a_free_seed(tmp_path):
    cfg = tiny(tmp_path, train={"steps": 60, "grad_accum": 10})
    with pytest.raises(ConfigError) as caught:
        Trainer(cfg)
    message = str(caught.value)
    assert "train.steps (60) × train.grad_accum (10) micro-batches make the training generators reach" in message
    assert "set eval.seed to 12346" in message and "\n" not in message
    Trainer(tiny(tmp_path, train={"steps": 60, "grad_accum": 10}, eval={"seed": 12346}))  # the named seed is free


def test_the_suggested_eval_seed_is_the_first_free_one():
    from mor.train.seeds import free_eval_seed, training_batch

    for accum, steps, seed in itertools.product([1, 9, 10, 255, 256], [1, 3, 50], [0, 256, 257, 770, 12344, 12345]):
        cfg = parse({"train": {"grad_accum": accum, "steps": steps, "warmup": 0}, "eval": {"seed": seed}})
        first = next(s for s in itertools.count(seed) if training_batch(cfg, s) is training_batch(cfg, s + 1) is None)
        assert free_eval_seed(cfg) == first, (accum, steps, seed)


def test_chars_runs_skip_the_eval_seed_check_as_their_evaluation_text_is_held_out(tmp_path):
    cfg = parse({"model": {"dim": 16, "heads": 2, "hidden": 16, "depth": 1, "train_steps": 2},
                 "data": {"task": "chars", "max_chars": 20000, "context": 16, "batch_size": 8},
                 "train": {"steps": 60, "grad_accum": 10, "warmup": 0, "threads": 1},
                 "checkpoint": {"dir": str(tmp_path)}})
    assert Trainer(cfg).config.eval.seed == 12345


def test_a_run_folder_named_best_resolves_to_its_own_latest_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 1)
    run = tmp_path / "best"
    saved = checkpoint.save(run, 3, model, {}, "", keep_last=2)
    assert checkpoint.resolve(run) == saved
    other = tmp_path / "other"
    best = checkpoint.save(other, 1, model, {}, "", keep_last=2, best=0.5)
    checkpoint.save(other, 2, model, {}, "", keep_last=2)
    assert checkpoint.resolve(other / "best") == best and checkpoint.resolve(other) == other / "step-00000002"


def test_eval_help_names_the_files_eval_writes():
    from mor.cli import app

    result = CliRunner().invoke(app, ["eval", "--help"])
    assert result.exit_code == 0 and "report.md" in result.output and "eval.md" not in result.output


@pytest.mark.parametrize("integration,field", [
    ({"mode": "weighted", "coefficients": {"m": 1.0}}, "coefficients"),
    ({"mode": "voting", "intercept": 2.0}, "intercept"),
    ({"mode": "voting", "synthesizer": "m"}, "synthesizer"),
])
def test_integration_options_the_mode_ignores_are_refused(tmp_path, integration, field):
    path = tmp_path / "system.yaml"
    path.write_text(yaml.safe_dump({**SYSTEM, "integration": integration}))
    with pytest.raises(ConfigError, match=rf"integration\.{field}: only mode '\w+' uses it"):
        load_config(path)
    path.write_text(yaml.safe_dump({**SYSTEM, "integration": {"mode": "stacking", "coefficients": {"m": 1.0},
                                                              "intercept": 2.0}}))
    assert load_config(path).integration.coefficients == {"m": 1.0}


def test_yaml_merge_keys_may_override_what_they_bring_in_at_any_depth():
    from mor.config import parse_yaml

    text = "x:\n  base: &base {a: 1}\n  mid: &mid {<<: *base, a: 2}\ny: {<<: *mid, b: 3}\n"
    assert parse_yaml(text, "merge.yaml") == yaml.safe_load(text)


@pytest.mark.parametrize("warmup,noted", [(None, True), (5, True), (1, False)], ids=["default", "set-long", "set"])
def test_a_run_shorter_than_its_warmup_says_its_learning_rate_never_peaks_and_still_reloads(tmp_path, warmup, noted):
    from rich.console import Console

    train = {"steps": 2, "eval_every": 2, "log_every": 2, "threads": 1} | ({"warmup": warmup} if warmup else {})
    cfg = parse({"model": {"dim": 8, "train_steps": 2, "halting": {"max_steps": 2}},
                 "data": {"task": "prefix_sum", "sizes": [4, 8], "batch_size": 8}, "train": train,
                 "checkpoint": {"dir": str(tmp_path)}})
    console = Console(record=True, width=200)
    Trainer(cfg, console=console).fit()
    said = f"note: train.warmup ({warmup or 100}) is not below train.steps (2)" in console.export_text()
    assert said == noted
    loaded = checkpoint.load(tmp_path)  # what mor eval and --resume read: its saved config loads
    assert saved(loaded.config, loaded.path / checkpoint.CONFIG).train.warmup == (warmup or 100)
