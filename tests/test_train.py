"""Training: config errors, exact resume, checkpoint safety, metrics."""

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from rich.console import Console

from mor.data import get_task
from mor.errors import CheckpointError, ConfigError
from mor.nn import Halting
from mor.train import checkpoint, devices
from mor.train.build import build_model
from mor.train.config import load, parse
from mor.train.evaluate import evaluate, token_score
from mor.train.evaluate_cli import evaluate_checkpoint
from mor.train.resume import config_change
from mor.train.schedule import lr_factor
from mor.train.trainer import Trainer

FAST = {"model": {"dim": 8, "train_steps": 3, "halting": {"max_steps": 3}},
        "data": {"task": "prefix_sum", "sizes": [4, 8], "batch_size": 16},
        "train": {"steps": 24, "eval_every": 8, "log_every": 4, "warmup": 4, "threads": 1}}


def config(run_dir: Path, data: dict | None = None, **overrides):
    """The fast test config in `run_dir`; `data` replaces the data section, `overrides` update sections."""
    raw = json.loads(json.dumps(FAST))
    raw["data"] = data or raw["data"]
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    raw["checkpoint"] = {"dir": str(run_dir), "every": 5, "keep_last": 2}
    return parse(raw)


BAD = [
    ("train:\n  lr: -1\n", "train.lr: must be > 0"),
    ("train:\n  lrr: 0.1\n", "train.lrr: unknown key"),
    ("modle:\n  dim: 8\n", "modle: unknown key"),
    ("model:\n  k: 3\n  num_experts: 2\n", "model.k: must be <= model.num_experts"),
    ("model:\n  kind: transformer\n", "model.kind: must be 'mor'"),
    ("model:\n  halting:\n    threshold: 1.5\n", "model.halting.threshold: must be <= 1"),
    ("train:\n  steps: many\n", "train.steps: must be a valid integer"),
    ("train:\n  precision: fp8\n", "train.precision: must be 'fp32', 'bf16' or 'fp16'"),
    ("data:\n  task: imagenet\n", "data.task: unknown task 'imagenet'"),
    ("data:\n  task: prefix_sum\n  colour: red\n", "data.colour: task 'prefix_sum' has no option"),
    ("data:\n  task: csv\n", "data.path: task 'csv' needs option 'path'"),
    ("checkpoint:\n  keep_last: 0\n", "checkpoint.keep_last: must be >= 1"),
    ("train:\n  steps: 10\n  upcycle: 10\n", "train.upcycle: must be < train.steps (10), got 10"),
    ("train:\n  steps: 100\n  warmup: 10\n  restarts: 500\n", "train.restarts: 500 restarts leave fewer than 2 "
                                                              "of the 90 steps after warmup to each cosine cycle"),
    ("- just\n- a list\n", "expected a YAML mapping"),
    ("train: [unclosed\n", "not valid YAML at line"),
    ("eval:\n  max_steps: []\n", "eval.max_steps: List should have at least 1 item"),
    ("eval:\n  max_steps: [0]\n", "eval.max_steps.0: must be >= 1"),
    ("eval:\n  thresholds: [1.5]\n", "eval.thresholds.0: must be <= 1"),
    ("compare: [moe, dense, moe]\n", "compare: moe listed more than once"),
    ("model:\n  kind: moe\ncompare: [moe, dense]\n", "compare: lists 'moe', the kind model.kind already trains"),
]


BAD_OPTIONS = [
    ({"task": "chars", "root": 5}, "data.root: task 'chars' takes str | pathlib.Path | None, got 5"),
    ({"task": "chars", "patterns": 5}, "data.patterns: task 'chars' takes str | Sequence[str], got 5"),
    ({"task": "csv", "path": "t.csv", "target": ["label"]}, "data.target: task 'csv' takes str, got ['label']"),
    ({"task": "regimes", "dim": 4.5}, "data.dim: task 'regimes' takes int, got 4.5"),
    ({"task": "parity", "dim": True}, "data.dim: task 'parity' takes int, got True"),  # YAML's true is not 1
    ({"task": "mix", "weights": [True, False, False]},
     "data.weights: task 'mix' takes Sequence[float] | None, got [True, False, False]"),
]


@pytest.mark.parametrize("data,message", BAD_OPTIONS)
def test_a_task_option_of_the_wrong_type_is_a_one_line_error(data, message):
    with pytest.raises(ConfigError) as err:
        parse({"data": data})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_config_that_is_not_utf8_is_a_one_line_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# café\ntrain: {steps: 5}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: cannot read it as UTF-8 text .*save the config as UTF-8"):
        load(path)


def test_numbers_written_with_an_exponent_are_numbers_everywhere_in_a_config(tmp_path):
    path = tmp_path / "exponents.yaml"
    path.write_text("data:\n  task: regimes\n  noise: 5e-2\ntrain:\n  lr: 1E-3\n  steps: 2e3\n")
    cfg = load(path)
    assert cfg.data.options == {"noise": 0.05} and cfg.train.lr == 0.001 and cfg.train.steps == 2000
    get_task(cfg.data.task, **cfg.data.options)  # the strict check of task options takes it


@pytest.mark.parametrize("text,message", BAD)
def test_malformed_configs_give_one_line_errors_naming_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(str(path))


def test_task_option_values_are_checked_when_the_run_starts(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.sizes: expected \[low, high\]"):
        Trainer(config(tmp_path, data={"task": "prefix_sum", "sizes": [8, 4]}))


class Interrupt(Exception):
    pass


def train_until(cfg, stop_at: int | None):
    """Train; raise Interrupt right after optimiser step `stop_at` (as a crash would)."""
    trainer = Trainer(cfg)
    if stop_at is not None:
        step = trainer._train_step

        def interrupted():
            logged = step()
            if trainer.step == stop_at:
                raise Interrupt
            return logged

        trainer._train_step = interrupted
    trainer.fit()
    return trainer


@pytest.mark.parametrize("stop_at,upcycle", [(3, 0), (5, 0), (13, 0), (23, 0), (5, 10)])
def test_resume_after_interrupt_gives_bit_identical_weights(tmp_path, stop_at, upcycle):
    recipe = {"model": {"noise_std": 0.5}, "train": {"upcycle": upcycle}}
    reference = train_until(config(tmp_path / "ref", **recipe), None)
    cfg = config(tmp_path / "run", **recipe)  # router noise: the RNG state must be restored too
    with pytest.raises(Interrupt):
        train_until(cfg, stop_at)
    resumed = Trainer(cfg)
    resumed.fit(resume=True)
    assert resumed.step == 24
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    ref_lines = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    run_lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    drop_rate = [{k: v for k, v in json.loads(line).items() if k != "examples_per_s"} for line in ref_lines]
    assert drop_rate == [{k: v for k, v in json.loads(line).items() if k != "examples_per_s"} for line in run_lines]


def test_resuming_with_a_changed_config_is_refused_naming_the_setting(tmp_path):
    Trainer(config(tmp_path, train={"steps": 8})).fit()
    before = digest(tmp_path)
    changed = config(tmp_path, data={**FAST["data"], "task": "sequence_parity"}, train={"steps": 16, "lr": 0.5})
    with pytest.raises(CheckpointError, match=r"cannot resume with a changed config: data.task was 'prefix_sum', "
                                              r"the config says 'sequence_parity'") as caught:
        Trainer(changed).fit(resume=True)
    assert "\n" not in str(caught.value) and digest(tmp_path) == before
    longer = Trainer(config(tmp_path, train={"steps": 16, "eval_every": 4}))  # how long and how often may change
    longer.fit(resume=True)
    assert longer.step == 16


def test_a_resume_may_not_change_the_seed_that_draws_the_validation_examples(tmp_path):
    Trainer(config(tmp_path, train={"steps": 8})).fit()
    with pytest.raises(CheckpointError, match=r"changed config: eval.seed was 12345, the config says 7"):
        Trainer(config(tmp_path, train={"steps": 16}, eval={"seed": 7})).fit(resume=True)


def test_a_data_file_that_changed_since_training_is_refused_by_eval_and_resume(tmp_path):
    """Rows added to a CSV re-split and re-scale it: test rows could be training rows, with no word said."""
    table = tmp_path / "t.csv"
    rows = [f"{i % 7},{(i * 3) % 11},{i % 2}" for i in range(80)]
    table.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    run = tmp_path / "run"
    data = {"task": "csv", "path": str(table), "target": "label", "batch_size": 16}
    Trainer(config(run, data=data, model={"cell": "mlp"}, train={"steps": 8})).fit()
    assert evaluate_checkpoint(run, console=Console(quiet=True)).is_file()  # unchanged data: evaluated
    table.write_text(table.read_text() + "\n".join(rows[:20]) + "\n")
    with pytest.raises(CheckpointError, match=r"the task's data differ from those it was trained on .*data\.path"):
        evaluate_checkpoint(run, console=Console(quiet=True))
    with pytest.raises(CheckpointError, match=r"resume with the data the run was trained on"):
        Trainer(config(run, data=data, model={"cell": "mlp"}, train={"steps": 16})).fit(resume=True)


def test_a_relative_data_path_is_saved_absolute_so_eval_finds_it_from_another_folder(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    rows = [f"{i % 7},{(i * 3) % 11},{i % 2}" for i in range(80)]
    (tmp_path / "data" / "t.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path / "data")
    run = tmp_path / "run"
    data = {"task": "csv", "path": "t.csv", "target": "label", "batch_size": 16}
    Trainer(config(run, data=data, model={"cell": "mlp"}, train={"steps": 8})).fit()
    assert yaml.safe_load(checkpoint.load(run).config)["data"]["path"] == str(tmp_path / "data" / "t.csv")
    Trainer(config(run, data=data, model={"cell": "mlp"}, train={"steps": 10})).fit(resume=True)  # same config
    monkeypatch.chdir(tmp_path)
    assert evaluate_checkpoint(run, console=Console(quiet=True)).is_file()


def test_a_data_path_from_the_home_folder_is_saved_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "t.csv").write_text("a,b,label\n" + "\n".join(f"{i % 7},{i % 5},{i % 2}" for i in range(80)) + "\n")
    data = {"task": "csv", "path": "~/t.csv", "target": "label", "batch_size": 16}
    Trainer(config(tmp_path / "run", data=data, model={"cell": "mlp"}, train={"steps": 2})).fit()
    assert yaml.safe_load(checkpoint.load(tmp_path / "run").config)["data"]["path"] == str(tmp_path / "t.csv")


@pytest.mark.parametrize(("target", "changed"), [("price", lambda v: str(float(v) / 1000)),
                                                 ("kind", {"large": "big", "small": "tiny"}.get)],
                         ids=["rescaled values", "renamed classes"])
def test_a_served_model_refuses_a_training_file_whose_targets_changed_units_or_names(tmp_path, target, changed):
    """The same tensors, other answers: a regressor's values come back through the file's target scale, a
    classifier's through its class names; both changed with the file, so the model would answer in the new ones."""
    from mor.system.experts.predictor import TrainedModel

    rows = [(size, "large" if size > 150 else "small", 1000 * size + 50_000) for size in range(100, 200, 2)]
    table = tmp_path / "homes.csv"
    table.write_text("size,kind,price\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    data = {"task": "csv", "path": str(table), "target": target, "columns": ["size"], "batch_size": 16,
            "kind": "regression" if target == "price" else "classification"}
    Trainer(config(tmp_path / "run", data=data, model={"cell": "mlp"}, train={"steps": 2})).fit()
    assert TrainedModel(tmp_path / "run", "served").source
    column = ("size", "kind", "price").index(target)
    table.write_text("size,kind,price\n" + "\n".join(",".join(str(changed(str(v))) if i == column else str(v)
                                                              for i, v in enumerate(r)) for r in rows) + "\n")
    with pytest.raises(CheckpointError, match=r"data differ from those it was trained on.*restore it, or train"):
        TrainedModel(tmp_path / "run", "served")


def homes(path: Path, sizes: range, seed: int = 0) -> pd.DataFrame:
    """A small table of homes (size, city → kind, price), saved as CSV at `path`."""
    rng = np.random.default_rng(seed)
    size = np.array(sizes)
    frame = pd.DataFrame({"city": rng.choice(["north", "south"], len(size)), "size": size,
                          "kind": np.where(size > 150, "large", "small"), "price": 1000.0 * size + 50_000})
    frame.to_csv(path, index=False)
    return frame


@pytest.mark.parametrize("target", ["kind", "price"])
def test_mor_eval_scores_a_table_model_on_another_file_through_its_training_preprocessing(tmp_path, target):
    from mor.data.table_rows import encoded_rows

    homes(tmp_path / "train.csv", range(100, 200, 2))
    data = {"task": "csv", "path": str(tmp_path / "train.csv"), "target": target, "columns": ["size", "city"],
            "batch_size": 16, "kind": "classification" if target == "kind" else "regression"}
    Trainer(config(tmp_path / "run", data=data, model={"cell": "mlp"}, train={"steps": 4})).fit()
    later = homes(tmp_path / "later.csv", range(101, 201, 3), seed=1)
    later[["price", "kind", "size", "city"]].to_csv(tmp_path / "later.csv", index=False)  # columns in another order
    report = evaluate_checkpoint(tmp_path / "run", data=tmp_path / "later.csv", console=Console(quiet=True))
    assert report.parent == tmp_path / "run" / "eval-later" and f"on {tmp_path / 'later.csv'}" in report.read_text()
    (scored,) = json.loads((report.parent / "eval.json").read_text()).values()
    options = {k: v for k, v in data.items() if k not in ("task", "batch_size")}
    task, loaded = get_task("csv", **options), checkpoint.load(tmp_path / "run")
    model = build_model(config(tmp_path / "run", data=data, model={"cell": "mlp"}).model, task)
    checkpoint.restore(model, loaded.weights, loaded.path)
    x, y = encoded_rows(task, later, "later.csv")
    assert len(y) == len(later) == 34
    depth = next(r for r in scored["depth"] if r["max_steps"] == model.train_steps)
    with torch.no_grad():
        output = model.eval()(x, halting=Halting(model.train_steps))
    if target == "kind":  # classes by name, whatever their order in the new file
        assert y.tolist() == [task.classes.index(k) for k in later["kind"]]
        assert depth["accuracy"] == pytest.approx(float((output.argmax(-1) == y).float().mean()))
    else:  # values on the training file's scale
        assert y[:, 0].numpy() == pytest.approx(task.target_scaler.transform(later[["price"]].to_numpy())[:, 0])
        assert depth["mse"] == pytest.approx(float((output - y).square().mean()), rel=1e-5)


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.drop(columns=["city"]), r"--data: later.csv lacks column\(s\) 'city' that the model was trained on"),
    (lambda f: f.assign(kind=f["kind"].where(f.index != 3, "huge")),
     r"holds class\(es\) huge the model never saw \(it knows large, small\)"),
    (lambda f: f.assign(kind=f["kind"].where(f.index != 3, None)), r"has 1 missing values \(row 5, the header"),
    (lambda f: f.assign(size=f["size"].astype(object).where(f.index != 2, "?")),
     r"--data: later.csv, column 'size' \(row 4, the header being row 1\): '\?' is not a number"),
    (lambda f: f.assign(city=range(len(f))), r"column 'city': 0 is not text, and the model read categories there"),
])
def test_mor_eval_refuses_another_file_the_model_cannot_be_scored_on_in_one_line(tmp_path, change, message):
    homes(tmp_path / "train.csv", range(100, 200, 2))
    data = {"task": "csv", "path": str(tmp_path / "train.csv"), "target": "kind", "columns": ["size", "city"],
            "batch_size": 16}
    Trainer(config(tmp_path / "run", data=data, model={"cell": "mlp"}, train={"steps": 2})).fit()
    change(homes(tmp_path / "later.csv", range(101, 201, 3), seed=1)).to_csv(tmp_path / "later.csv", index=False)
    with pytest.raises(ConfigError, match=message):
        evaluate_checkpoint(tmp_path / "run", data=tmp_path / "later.csv", console=Console(quiet=True))


def test_mor_eval_scores_another_file_only_for_a_table_model(tmp_path):
    Trainer(config(tmp_path / "run", train={"steps": 2})).fit()
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match=r"--data: only a model trained on a table .* leave it out"):
        evaluate_checkpoint(tmp_path / "run", data=tmp_path / "t.csv", console=Console(quiet=True))


def test_a_table_checkpoint_saved_before_the_targets_units_were_fingerprinted_still_serves(tmp_path):
    """Checkpoints before 2026-11-23 hold the splits' digest alone; the same file must still match them."""
    from mor.data.base import DatasetTask
    from mor.system.experts.predictor import TrainedModel
    from mor.train.config import dump

    homes(tmp_path / "homes.csv", range(100, 200, 2))
    data = {"task": "csv", "path": str(tmp_path / "homes.csv"), "target": "kind", "columns": ["size"],
            "batch_size": 16}
    cfg = config(tmp_path / "run", data=data, model={"cell": "mlp"})
    task = get_task("csv", **{k: v for k, v in data.items() if k not in ("task", "batch_size")})
    legacy = DatasetTask.fingerprint(task)
    assert legacy != task.fingerprint() and task.fingerprints() == (task.fingerprint(), legacy)
    checkpoint.save(tmp_path / "run", 1, build_model(cfg.model, task), {"data": legacy}, dump(cfg), keep_last=1)
    assert TrainedModel(tmp_path / "run", "served").table is not None
    with pytest.raises(CheckpointError, match="data differ from those it was trained on"):
        checkpoint.check_data({"data": "0" * 16}, task.fingerprints(), tmp_path, "train again")


def test_a_run_saved_with_a_relative_data_path_still_resumes_from_its_folder(tmp_path, monkeypatch):
    """Runs trained before paths were saved absolute hold the relative path; the same config resumes them."""
    (tmp_path / "t.csv").write_text("a,b,label\n" + "\n".join(f"{i % 7},{i % 5},{i % 2}" for i in range(80)) + "\n")
    monkeypatch.chdir(tmp_path)
    data = {"task": "csv", "path": "t.csv", "target": "label", "batch_size": 16}
    old = config(tmp_path / "run", data=data, model={"cell": "mlp"})
    new = config(tmp_path / "run", data={**data, "path": str(tmp_path / "t.csv")}, model={"cell": "mlp"})
    assert config_change(old, new) is None
    assert "data.target" in config_change(old, config(tmp_path / "run", data={**data, "target": "a"}))


def test_a_corpus_too_short_to_split_says_how_short(tmp_path):
    (tmp_path / "a.txt").write_text("ab")
    with pytest.raises(ConfigError, match=r"^data\.root: 2 character\(s\) under .*, fewer than the 3 parts to split"):
        get_task("chars", root=str(tmp_path), context=1)


def test_a_chars_corpus_fingerprint_follows_its_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello world, " * 200)
    first = get_task("chars", root=str(tmp_path), context=8).fingerprint()
    assert get_task("chars", root=str(tmp_path), context=8).fingerprint() == first
    (tmp_path / "a.txt").write_text("hello world! " * 200)
    assert get_task("chars", root=str(tmp_path), context=8).fingerprint() != first
    assert get_task("prefix_sum").fingerprint() is None  # the config and seeds make generated data


@pytest.mark.parametrize("seed,train,message", [
    (0, {}, "eval.seed: 0 draws test examples with the generator of training batch 0 (micro-batch 0)"),
    (257 * 3 - 1, {}, "eval.seed: 770 draws validation examples with the generator of training batch 3"),
    (12345, {"grad_accum": 10, "steps": 50},
     "eval.seed: 12345 draws test examples with the generator of training batch 48 (micro-batch 9)"),
])
def test_evaluation_seeds_that_would_redraw_a_training_batch_are_refused(tmp_path, seed, train, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Trainer(config(tmp_path, train=train, eval={"seed": seed}))
    Trainer(config(tmp_path, train=train, eval={"seed": seed}, data={"task": "wine"}, model={"cell": "mlp"}))


def test_checkpoints_keep_last_k_and_best_and_refuse_to_clobber_a_run(tmp_path):
    cfg = config(tmp_path)
    Trainer(cfg).fit()
    steps = sorted(p.name for p in tmp_path.glob("step-*"))
    best = json.loads((tmp_path / "best.json").read_text())["dir"]
    assert steps[-2:] == ["step-00000020", "step-00000024"] and best in steps and len(steps) <= 3
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(CheckpointError, match="pass --resume"):
        Trainer(cfg).fit()


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_truncated_checkpoint_is_refused_and_left_untouched(tmp_path):
    cfg = config(tmp_path, train={"steps": 10})
    Trainer(cfg).fit()
    latest = checkpoint.resolve(tmp_path)
    weights = latest / checkpoint.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    before = digest(tmp_path)
    with pytest.raises(CheckpointError, match="corrupt or truncated weights") as err:
        Trainer(cfg).fit(resume=True)
    assert "\n" not in str(err.value)
    assert digest(tmp_path) == before


def test_state_file_that_is_not_plain_tensors_is_refused(tmp_path):
    cfg = config(tmp_path, train={"steps": 5})
    Trainer(cfg).fit()
    torch.save({"evil": Interrupt}, checkpoint.resolve(tmp_path) / checkpoint.STATE)  # would need unpickling
    with pytest.raises(CheckpointError, match="corrupt, truncated or unsafe"):
        checkpoint.load(tmp_path)


def test_checkpoint_of_another_model_gives_a_clear_mismatch_error(tmp_path):
    Trainer(config(tmp_path, train={"steps": 5})).fit()
    other = Trainer(config(tmp_path, model={"dim": 12}))
    with pytest.raises(CheckpointError, match=r"changed config: model\.dim was 8, the config says 12"):
        other.fit(resume=True)


def test_a_state_file_written_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    Trainer(config(tmp_path, train={"steps": 5})).fit()
    state_file = checkpoint.resolve(tmp_path) / checkpoint.STATE
    state = torch.load(state_file, weights_only=True)
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")  # as a CUDA run tags them
    torch.save(state, state_file)
    monkeypatch.undo()
    loaded = checkpoint.load(tmp_path)
    moments = [t for s in loaded.state["optimizer"]["state"].values() for t in s.values() if t.dim()]
    assert moments and all(t.device.type == "cpu" for t in moments)


@pytest.mark.parametrize("pointer", ["best", "latest"])
def test_an_interrupt_while_pointing_at_a_new_best_keeps_the_best_checkpoint(tmp_path, monkeypatch, pointer):
    cfg = {"train": {"eval_every": 4, "lr": 0.01}}
    reference = train_until(config(tmp_path / "ref", **cfg), None)
    best = json.loads((tmp_path / "ref" / "best.json").read_text())
    write = checkpoint.write_json

    def interrupted(path: Path, value: dict) -> None:
        if path.name == f"{pointer}.json" and value["step"] == best["step"]:
            raise Interrupt
        write(path, value)

    monkeypatch.setattr(checkpoint, "write_json", interrupted)
    with pytest.raises(Interrupt):
        train_until(config(tmp_path / "run", **cfg), None)
    monkeypatch.setattr(checkpoint, "write_json", write)
    resumed = Trainer(config(tmp_path / "run", **cfg))
    resumed.fit(resume=True)
    assert json.loads((tmp_path / "run" / "best.json").read_text()) == best
    assert (tmp_path / "run" / best["dir"]).is_dir() and resumed.step == reference.step


def test_a_swap_folder_left_by_a_crash_does_not_block_the_next_save_of_that_step(tmp_path):
    Trainer(config(tmp_path, train={"steps": 10})).fit()
    (tmp_path / ".old-step-00000010" / "leftover").mkdir(parents=True)  # a crash while the swap was deleted
    earlier = sorted(tmp_path.glob("step-*"))[0]  # and before latest.json moved on from an earlier step
    (tmp_path / "latest.json").write_text(json.dumps({"step": int(earlier.name[5:]), "dir": earlier.name}))
    resumed = Trainer(config(tmp_path, train={"steps": 10}))
    resumed.fit(resume=True)
    assert resumed.step == 10 and json.loads((tmp_path / "latest.json").read_text())["dir"] == "step-00000010"
    assert not (tmp_path / ".old-step-00000010").exists()


def test_a_metrics_line_cut_short_by_a_crash_does_not_block_resume(tmp_path):
    cfg = config(tmp_path, train={"steps": 5})
    Trainer(cfg).fit()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')
    resumed = Trainer(config(tmp_path, train={"steps": 10}))
    resumed.fit(resume=True)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert resumed.step == 10 and records[-1]["step"] == 10


def test_training_draws_do_not_depend_on_trainers_built_before_fit(tmp_path):
    recipe = {"model": {"progressive": 1.0, "noise_std": 0.5}}
    alone = Trainer(config(tmp_path / "alone", **recipe))
    alone.fit()
    main = Trainer(config(tmp_path / "main", **recipe))
    Trainer(config(tmp_path / "other", model={"dim": 12}))  # builds a model: draws from the global generator
    torch.manual_seed(123)
    main.fit()
    for (name, a), b in zip(alone.model.state_dict().items(), main.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_throughput_counts_training_steps_not_evaluations(tmp_path, monkeypatch):
    trainer = Trainer(config(tmp_path))
    validate = trainer.validate

    def slow_validate():
        time.sleep(1.0)  # charged to the next window, 4 steps of 16 examples would log at most 64 examples/s
        return validate()

    monkeypatch.setattr(trainer, "validate", slow_validate)
    trainer.fit()
    rates = [json.loads(line)["examples_per_s"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert min(rates) > 128


def test_each_process_takes_its_own_gpu_and_the_cpu_when_a_machine_has_fewer_gpus_than_processes(monkeypatch):

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert devices.training_device() == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # NCCL refuses two processes on one GPU
    assert devices.training_device() == torch.device("cpu") and len(chosen) == 1


def test_a_checkpoint_from_a_machine_with_more_gpus_restores_the_training_gpus_state(monkeypatch):

    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    states = [torch.full((4,), i, dtype=torch.uint8) for i in range(8)]  # as an 8-GPU run's rank 0 saved them
    devices.set_rng_state({"cpu": torch.get_rng_state(), "cuda": states}, torch.device("cuda", 0))
    assert len(restored) == 1 and torch.equal(restored[0][0], states[0]) and restored[0][1] == torch.device("cuda", 0)
    devices.set_rng_state({"cpu": torch.get_rng_state(), "cuda": states}, torch.device("cpu"))
    assert len(restored) == 1


@pytest.mark.parametrize("batch_size", [2, 6])
def test_a_batch_that_does_not_split_evenly_among_processes_is_refused(tmp_path, monkeypatch, batch_size):
    """Unequal shards weigh examples unequally once DDP averages the processes' mean losses."""
    monkeypatch.setattr("mor.train.trainer.process_group", lambda device: (0, 4))
    with pytest.raises(ConfigError, match=rf"data\.batch_size: {batch_size} cannot be shared evenly among 4 proc"):
        Trainer(config(tmp_path, data={**FAST["data"], "batch_size": batch_size}))


def test_metrics_hold_every_loss_term_and_eval_lines(tmp_path):
    Trainer(config(tmp_path)).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [4, 8, 12, 16, 20, 24]
    assert [r["step"] for r in evals] == [8, 16, 24]
    assert {"task", "ponder", "halting_kl", "critic", "load_balance", "z_loss", "lr"} <= set(train[0])
    assert {"accuracy", "position_accuracy", "mean_steps"} <= set(evals[0])
    cfg = config(tmp_path).train
    assert [r["lr"] for r in train] == pytest.approx([cfg.lr * lr_factor(r["step"] - 1, cfg) for r in train])


def test_dataset_tasks_train_from_shuffled_epochs(tmp_path):
    cfg = config(tmp_path, model={"cell": "mlp"}, data={"task": "wine", "batch_size": 32})
    trainer = Trainer(cfg)
    x0, _ = trainer.batch_at(0, 0)
    again, _ = trainer.batch_at(0, 0)
    assert torch.equal(x0, again) and x0.shape == (32, 13)
    split_x, split_y = trainer.task.split("train")
    size = split_x.shape[0]
    assert torch.unique(split_x, dim=0).shape[0] == size  # distinct rows, so a row tells where it came from
    batches = [trainer.batch_at(step, 0) for step in range(2 * size // 32 + 1)]  # two epochs and a bit
    xs, ys = torch.cat([b[0] for b in batches]).cpu(), torch.cat([b[1] for b in batches]).cpu()  # on the model's device
    epochs = [(xs[e * size:(e + 1) * size], ys[e * size:(e + 1) * size]) for e in range(2)]
    for x, y in epochs:  # each epoch is the whole training split once, labels kept with their rows, shuffled
        order = (x[:, None] == split_x[None]).all(-1).float().argmax(-1)
        assert torch.equal(split_x[order], x) and torch.equal(split_y[order], y)
        assert sorted(order.tolist()) == list(range(size))
        assert order.tolist() != list(range(size))
    assert not torch.equal(epochs[0][0], epochs[1][0])  # and each epoch in a new order
    trainer.fit()
    assert trainer.validate()["accuracy"] > 0.5  # three classes: it learned from those batches


def test_validation_runs_at_eval_size(tmp_path):
    trainer = Trainer(config(tmp_path, train={"eval_size": 40}))
    sizes = []
    eval_set = trainer.task.eval_set
    trainer.task.eval_set = lambda n, size=None, seed=0: sizes.append(size) or eval_set(n, size, seed)
    trainer.fit()
    assert sizes == [40, 40, 40]  # steps 8, 16, 24: longer than the 4–8 bits trained on
    assert Trainer(config(tmp_path / "default")).eval_size == 8


@pytest.mark.parametrize("data,size,message", [
    ({"task": "wine"}, 8, "train.eval_size: task 'wine' has no instance sizes to choose from; remove train.eval_size"),
    ({"task": "parity", "dim": 16}, 17, "train.eval_size: task 'parity' takes sizes 1–16, got 17"),
])
def test_an_eval_size_the_task_cannot_make_is_a_clear_error(tmp_path, data, size, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        Trainer(config(tmp_path, data=data, model={"cell": "mlp"}, train={"eval_size": size}))


@pytest.mark.parametrize("data,message", [
    ({"task": "regimes"}, "eval.sizes: task 'regimes' has no instance sizes to choose from; remove eval.sizes"),
    ({"task": "parity", "dim": 16}, "eval.sizes: task 'parity' takes sizes 1–16, got 32"),
])
def test_report_sizes_the_task_cannot_make_are_refused_before_training(tmp_path, data, message):
    """Checked when the trainer is built: before, the error came once every model had trained, and no report."""
    with pytest.raises(ConfigError, match=f"^{message}$"):
        Trainer(config(tmp_path, data=data, model={"cell": "mlp"}, eval={"sizes": [8, 32]}))


def test_an_example_count_for_a_dataset_task_is_refused(tmp_path):
    """A dataset task scores its whole test split; a count it would silently ignore is an error instead."""
    with pytest.raises(ConfigError, match=r"^eval\.examples: task 'wine' is a finite dataset, scored on its whole "
                                          r"test split \(\d+ examples\) whatever the count; remove eval\.examples$"):
        Trainer(config(tmp_path, data={"task": "wine"}, model={"cell": "mlp"}, eval={"examples": 10}))
    Trainer(config(tmp_path, data={"task": "wine"}, model={"cell": "mlp"}))  # the default count is not a choice


def test_eval_refuses_an_example_count_for_a_dataset_checkpoint(tmp_path):
    Trainer(config(tmp_path, data={"task": "wine"}, model={"cell": "mlp"})).fit()
    with pytest.raises(ConfigError, match=r"^--examples: task 'wine' is a finite dataset"):
        evaluate_checkpoint(tmp_path, examples=5)
    assert evaluate_checkpoint(tmp_path, out=tmp_path / "eval", console=Console(quiet=True)).is_file()


def expert_states(trainer: Trainer) -> list[dict]:
    return [{k: v.clone() for k, v in expert.state_dict().items()} for expert in trainer.model.experts]


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_upcycling_trains_copies_of_one_expert_then_lets_them_part(tmp_path):
    assert not same(*expert_states(Trainer(config(tmp_path / "plain"))))  # experts start apart without it
    trainer = Trainer(config(tmp_path / "up", train={"upcycle": 6}))
    start = expert_states(trainer)
    assert same(*start)
    for _ in range(6):
        trainer._train_step()
        first, second = expert_states(trainer)
        assert same(first, second) and not same(first, start[0])
    trainer._train_step()
    assert not same(*expert_states(trainer))  # each now learns from its own inputs


CHARS = {"task": "chars", "context": 16, "max_chars": 20_000, "batch_size": 16}
TINY_LM = {"dim": 16, "depth": 1, "heads": 2, "hidden": 16, "num_experts": 2, "k": 1, "train_steps": 2,
           "halting": {"max_steps": 2}}


def test_chars_validation_picks_from_the_validation_text_and_never_the_test_text(tmp_path):
    trainer = Trainer(config(tmp_path, data=CHARS, model=TINY_LM))
    trainer.task.eval_set = None  # the reported test windows: validation must not touch them
    seen = trainer.task.val_set(512, seed=trainer.config.eval.seed + 1)
    with torch.no_grad():
        x, y = (t.to(trainer.device) for t in seen)
        expected = token_score(trainer.model(x)[0], y)["bits_per_char"]
    assert trainer.validate()["bits_per_char"] == expected


@pytest.mark.parametrize("kind", ["mor", "moe", "dense"])
def test_token_models_train_on_chars_validate_in_bits_per_char_and_evaluate(tmp_path, kind):
    from mor.nn import TokenModel
    from mor.train.evaluate_cli import evaluate_checkpoint

    trainer = Trainer(config(tmp_path, data=CHARS, model={**TINY_LM, "kind": kind}, train={"lr": 0.01}))
    assert isinstance(trainer.model, TokenModel) and trainer.model.ffn_kind == kind
    before = trainer.validate()
    trainer.fit()
    after = trainer.validate()
    assert after["bits_per_char"] < before["bits_per_char"] - 0.5, (before, after)
    assert after["score"] == -after["bits_per_char"] and 0 < after["accuracy"] < 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["task"] < train[0]["task"]
    assert "halting_kl" not in train[0] and ("load_balance" in train[0]) == (kind != "dense")  # no halting to train
    assert [r["step"] for r in records if r["kind"] == "eval" and "bits_per_char" in r] == [8, 16, 24]
    with pytest.raises(ConfigError, match=r"^--threshold: the mor model at .* halts by no rule" if kind == "mor"
                       else rf"^--max-steps: the {kind} model at .* cannot reflect\); leave --max-steps out"):
        evaluate_checkpoint(tmp_path, examples=32, **({"thresholds": [0.9]} if kind == "mor" else {"max_steps": [3]}))
    sweep = {"max_steps": [1, 3]} if kind == "mor" else {}
    evaluated = json.loads((evaluate_checkpoint(tmp_path, examples=32, **sweep).parent / "eval.json").read_text())
    (rows,) = [ev["depth"] for ev in evaluated.values()]
    assert [r["max_steps"] for r in rows] == ([1, 2, 3] if kind == "mor" else [1])
    assert all(r["bits_per_char"] < before["bits_per_char"] for r in rows)


@pytest.mark.parametrize("name,value", [("score", "sigmoid"), ("noise_std", 1.0), ("mode", "attention"),
                                        ("cell", "transformer"), ("progressive", 0.5)])
def test_token_models_refuse_settings_they_would_ignore(tmp_path, name, value):
    with pytest.raises(ConfigError, match=rf"^model\.{name}: token models \(task 'chars'\) always use"):
        Trainer(config(tmp_path, data=CHARS, model={**TINY_LM, name: value}))


@pytest.mark.parametrize("halting", [{"threshold": 0.01}, {"stable_steps": 2}])
def test_token_models_refuse_halting_rules_nothing_trains_them_for(tmp_path, halting):
    """An untrained critic stopped every token at step 1 in validation, which chose the best checkpoint."""
    with pytest.raises(ConfigError, match=r"^model\.halting: token models \(task 'chars'\) reflect to a fixed depth"):
        Trainer(config(tmp_path, data=CHARS, model={**TINY_LM, "halting": {"max_steps": 3, **halting}}))


@pytest.mark.parametrize("data", [CHARS, FAST["data"]], ids=["tokens", "sequences"])
def test_without_a_halting_budget_reflection_stops_at_its_training_depth(tmp_path, data):
    from mor.nn import ReflectionExpert

    model = {key: value for key, value in TINY_LM.items() if key != "halting"} | {"train_steps": 5}
    trainer = Trainer(parse({"model": model, "data": data, "checkpoint": {"dir": str(tmp_path)}}))
    assert trainer.config.model.halting.max_steps is None  # saved with the run as "the training depth"
    assert {m.halting.max_steps for m in trainer.model.modules() if isinstance(m, ReflectionExpert)} == {5}


def test_token_tasks_refuse_a_reflection_model_and_heads_that_do_not_divide_dim(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.kind: 'reflection' has no token model") as err:
        Trainer(config(tmp_path, data=CHARS, model={**TINY_LM, "kind": "reflection"}))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"model\.heads: must divide model\.dim \(16\), got 3"):
        Trainer(config(tmp_path, data=CHARS, model={**TINY_LM, "heads": 3}))
    with pytest.raises(ConfigError, match=r"^train\.upcycle: applies to vector and sequence models"):
        Trainer(config(tmp_path, data=CHARS, model=TINY_LM, train={"upcycle": 4}))


def test_warmup_then_cosine_with_restarts():
    from mor.train.config import TrainConfig
    from mor.train.schedule import lr_factor

    cfg = TrainConfig(steps=110, warmup=10, restarts=1, min_lr_ratio=0.0)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0) and lr_factor(35, cfg) == pytest.approx(0.5)
    assert lr_factor(59, cfg) < 0.01 and lr_factor(60, cfg) == pytest.approx(1.0)  # warm restart
    assert lr_factor(110, cfg) == pytest.approx(0.0)  # the step after the last stays at the floor


# Training-run configs (they have a `data` section); the routing and serving configs have their own tests.
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
                 if "data" in yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_load_build_and_take_a_step(path, tmp_path):
    import yaml

    raw = yaml.safe_load(path.read_text())
    if raw["data"]["task"] in ("csv", "parquet"):
        table = tmp_path / "table.csv"
        table.write_text("a,b,colour,label\n" + "".join(f"{i},{i % 3},{'rg'[i % 2]},{i % 2}\n" for i in range(40)))
        raw["data"].update(path=str(table), target="label")
    trainer = Trainer(parse(raw, str(path)), tmp_path / "run")
    trainer._train_step()
    assert trainer.step == 1


def test_main_job_is_packaged_and_matches_the_example_config():
    from mor.train.config import main_job

    example = load(Path(__file__).resolve().parents[1] / "configs" / "prefix_sum.yaml")
    assert main_job() == example and main_job().compare == ["moe"]


def test_bf16_autocast_trains_on_cpu_and_fp16_needs_cuda(tmp_path):
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        trainer = Trainer(config(tmp_path / precision, train={"precision": precision, "steps": 3}))
        computed = set()  # the dtype every linear layer's output had in the training step
        for module in trainer.model.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda module, args, output, seen=computed: seen.add(output.dtype))
        before = [p.detach().clone() for p in trainer.model.parameters()]
        logged = trainer._train_step()
        assert all(torch.isfinite(torch.tensor(v)) for v in logged.values())
        assert computed == {dtype}, precision  # bf16: the forward really ran in bf16, on fp32 weights
        after = list(trainer.model.parameters())
        assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32) for p in after)
        assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
            Trainer(config(tmp_path / "fp16", train={"precision": "fp16"}))


def test_early_stopping_ends_the_run_after_evaluations_without_gain(tmp_path):
    trainer = Trainer(config(tmp_path, train={"lr": 1e-12, "eval_every": 2, "early_stop": 2, "warmup": 0}))
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4, 6] and trainer.step == 6
    assert checkpoint.resolve(tmp_path).name == "step-00000006"  # the stopping point is checkpointed
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    resumed = Trainer(config(tmp_path, train={"lr": 1e-12, "eval_every": 2, "early_stop": 2, "warmup": 0}))
    resumed.fit(resume=True)  # e.g. after a crash in a later baseline: the stopped run stays stopped
    assert resumed.step == 6 and all(torch.equal(v, weights[k]) for k, v in resumed.model.state_dict().items())


def test_a_run_stopped_early_is_scored_with_its_best_checkpoint_and_says_so(tmp_path, monkeypatch):
    from mor.train import run as runs

    scored = []

    def scoring(model, *args):
        scored.append({k: v.cpu().clone() for k, v in model.state_dict().items()})  # checkpoints load on the CPU
        return evaluate(model, *args)

    monkeypatch.setattr(runs, "evaluate", scoring)
    cfg = config(tmp_path, train={"eval_every": 2, "early_stop": 1, "warmup": 0, "grad_accum": 2})
    report = runs.run(cfg, console=Console(file=io.StringIO())).read_text()
    best, stopped = json.loads((tmp_path / "best.json").read_text())["step"], checkpoint.load(tmp_path).state["step"]
    assert best < stopped < 24
    assert all(torch.equal(v, scored[0][k]) for k, v in checkpoint.load(tmp_path / "best").weights.items())
    assert f"MoR stopped early at step {stopped} (1 evaluations without gain)" in report
    assert f"scored with its best checkpoint, step {best}." in report and "steps of batch 16 × 2 accumulated" in report
    assert f"seed 0, on {devices.described(devices.training_device())};" in report
    said = io.StringIO()  # `mor eval RUN` scores the checkpoint the report scored, and says so
    evaluated = json.loads((evaluate_checkpoint(tmp_path, console=Console(file=said)).parent / "eval.json").read_text())
    assert list(evaluated) == [f"mor @ step {best}"] and "stopped early: scoring its best checkpoint" in said.getvalue()
    assert list(json.loads((evaluate_checkpoint(tmp_path / f"step-{stopped:08d}", out=tmp_path / "last",
                                                console=Console(quiet=True)).parent / "eval.json").read_text())) \
        == [f"mor @ step {stopped}"]


def test_validation_never_draws_the_reported_test_examples(tmp_path, monkeypatch):
    """The examples that choose the best checkpoint must not be the ones the report scores."""
    from mor.train.evaluate import _dataset

    trainer = Trainer(config(tmp_path))
    seen = []
    real = type(trainer.task).eval_set
    monkeypatch.setattr(type(trainer.task), "eval_set", lambda task, *a, **k: seen.append(real(task, *a, **k))
                        or seen[-1])
    trainer.validate()
    test_x, _ = _dataset(trainer.task, trainer.config.eval, trainer.eval_size)
    validation_x = seen[0][0]
    assert validation_x.shape[1:] == test_x.shape[1:]  # the same size: the top of the training range
    assert not torch.equal(validation_x, test_x[:len(validation_x)])  # same seed: the test set's first 512
