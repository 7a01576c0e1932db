"""`mor route` after review: a config's own router (or none) is scored and asked as `mor serve` routes, training
checks its flags and --out before it starts and keeps temperature 1 where the held-out tenth cannot fit one,
calibration refuses a one-label sample, unreadable input is one line, and macro-F1 says what it averages."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mor.cli import app
from mor.errors import MorError
from mor.system.commands import _tools, calibrate
from mor.system.dataset import read_labeled
from mor.system.evaluation import evaluate, markdown
from mor.system.experts.base import ExpertInfo
from mor.system.head import HeadConfig, LabelHead
from mor.system.request import Request
from mor.system.router import SystemRouter
from routing_data import generated, write_jsonl

DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's JSON reader recurses


@pytest.fixture(scope="module")
def router(tmp_path_factory) -> Path:
    """A TF-IDF router over the six generated labels, right on its whole held-out tenth."""
    rows = generated(10)
    folder = tmp_path_factory.mktemp("review") / "router"
    LabelHead.fit([r["text"] for r in rows], [r["label"] for r in rows], HeadConfig(encoder="tfidf")).save(folder)
    return folder


def route(*args: str, **invoke):
    return CliRunner().invoke(app, ["route", *args], **invoke)


def config(folder: Path, capabilities: list[str]) -> Path:
    """A system YAML with one expert (it echoes the request) serving `capabilities`, and no router.path."""
    path = folder / "system.yaml"
    path.write_text(f"experts:\n  - {{name: all, kind: callable, function: 'builtins:str', "
                    f"capabilities: {capabilities}}}\n")
    return path


def test_eval_of_a_config_without_router_path_routes_without_a_head_as_serve_does(tmp_path, monkeypatch):
    """It used to add ./runs/router and refuse when that folder was missing, so such a config could not be scored."""
    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "what is 2 + 3", "label": "math"},
                                              {"text": "who built the first lighthouse", "label": "knowledge"}])
    result = route("eval", "--config", str(config(tmp_path, ["math", "knowledge"])), "--data", str(data))
    assert result.exit_code == 0, result.exception
    assert json.loads((tmp_path / "runs/route-eval/route-eval.json").read_text())["calibration_error"] is None


def test_ask_with_a_config_does_not_attach_a_router_that_happens_to_be_in_the_folder(router, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(router, tmp_path / "runs/router")  # unrelated to the config, which names no router
    result = route("ask", "--config", str(config(tmp_path, ["math"])), "--json", "what is 2 + 3")
    assert result.exit_code == 0, result.exception
    assert json.loads(result.output)["routing"]["labels"] == {}  # no head scored the labels
    result = route("ask", "--config", "system.yaml", "--router", "runs/router", "--json", "what is 2 + 3")
    assert result.exit_code == 0 and json.loads(result.output)["routing"]["labels"], result.exception  # asked for


@pytest.fixture
def no_training(monkeypatch) -> list:
    """Training replaced by a recorder: a check that comes after it shows up as a call."""
    calls = []
    monkeypatch.setattr(LabelHead, "fit", classmethod(lambda *args, **kwargs: calls.append(args)))
    return calls


@pytest.mark.parametrize("out,message", [
    ("mine/router", "holds files that are not a router's (notes.txt)"),  # the folder holds other files
    ("file.txt/router", "--out: '{out}' inside '{tmp}/file.txt', which is a file; give a folder"),
])
def test_train_checks_out_before_it_trains(tmp_path, no_training, out, message):
    (tmp_path / "mine/router").mkdir(parents=True)
    (tmp_path / "mine/router/notes.txt").write_text("mine")
    (tmp_path / "file.txt").write_text("")
    data = write_jsonl(tmp_path / "d.jsonl", generated(10))
    result = route("train", "--data", str(data), "--encoder", "tfidf", "--out", str(tmp_path / out))
    assert isinstance(result.exception, MorError), result.output
    assert message.format(out=tmp_path / out, tmp=tmp_path) in str(result.exception)
    assert no_training == [] and "Training" not in result.output


@pytest.mark.parametrize("flags,message", [
    (["--layers", "2"], "--layers only applies to the MiniLM encoder; leave it out or use --encoder minilm or "
                        "minilm+tfidf"),
    (["--tune-epochs", "7", "--precision", "bf16"], "--tune-epochs, --precision only apply to the MiniLM encoder; "
                                                    "leave them out"),
    (["--layers", "9"], "--layers: 9 is outside 1–6"),
    (["--layers", "2", "--tune-layers", "3"], "--tune-layers: 3 is outside 0–2 (--layers)"),
])
def test_train_refuses_minilm_flags_without_minilm_and_names_the_flag(tmp_path, no_training, flags, message):
    data = write_jsonl(tmp_path / "d.jsonl", generated(10))
    result = route("train", "--data", str(data), "--encoder", "tfidf", "--out", str(tmp_path / "r"), *flags)
    assert isinstance(result.exception, MorError) and message in str(result.exception), result.exception
    assert no_training == [] and not (tmp_path / "r").exists()


def test_training_keeps_temperature_one_where_the_head_is_right_on_every_held_out_request(tmp_path):
    """The log-loss of an all-right tenth only falls as the temperature does, so the fit landed on an arbitrary
    0.08: a router sure of everything, whose min_confidence fallback never fires."""
    data = write_jsonl(tmp_path / "d.jsonl", generated(10))
    result = route("train", "--data", str(data), "--encoder", "tfidf", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.exception
    assert "temperature not fitted: the head is right on 100% of the 6 held-out requests" in result.output
    assert "`mor route calibrate`" in result.output and "(temperature 1.000)" in result.output
    assert json.loads((tmp_path / "r/head.json").read_text())["temperature"] == 1.0


def test_a_held_out_tenth_right_on_some_fits_the_temperature_and_all_wrong_keeps_one():
    from mor.system.head import _held_out_temperature

    logits, said = np.array([[3.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), []
    fitted = _held_out_temperature(logits, np.array([0, 0, 1, 1]), said.append)
    assert fitted != 1.0 and said == []
    assert _held_out_temperature(logits, np.array([1, 1, 0, 1]), said.append) == 1.0
    assert said and "right on 0% of the 4 held-out requests" in said[0]


@pytest.mark.parametrize("command", ["eval", "ask"])
def test_router_help_shows_its_default(command):
    """Rich read the help's "[default: …]" as markup and dropped it."""
    result = route(command, "--help", env={"COLUMNS": "300"})
    assert result.exit_code == 0 and "no trained router where it has none; else runs/router" in result.output


def test_a_tools_file_that_is_not_utf8_or_is_nested_too_deeply_is_one_line(tmp_path):
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'[{"type": "function", "function": {"name": "caf\xe9"}}]')
    with pytest.raises(MorError, match=r"--tools .*latin\.json: not UTF-8 text; save the file as UTF-8"):
        _tools(latin)
    (tmp_path / "deep.json").write_text(DEEP)
    with pytest.raises(MorError, match=r"--tools .*deep\.json: nested too deeply to read"):
        _tools(tmp_path / "deep.json")


def test_a_jsonl_line_nested_too_deeply_is_one_line_naming_it(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": "solve it", "label": "math"}\n' + DEEP + "\n")
    with pytest.raises(MorError, match=rf"{path}:2: nested too deeply to read"):
        read_labeled(path)


def test_calibrating_on_a_sample_with_one_label_is_refused_and_changes_nothing(router, tmp_path):
    saved = (router / "head.json").read_bytes()
    data = write_jsonl(tmp_path / "math.jsonl", [r for r in generated(20, seed=4) if r["label"] == "math"] * 3)
    with pytest.raises(MorError, match=r"every request is labeled \['math'\].*at least two of its labels"):
        calibrate(data=data, router=router)
    assert (router / "head.json").read_bytes() == saved


def test_evaluation_says_macro_f1_is_over_the_labels_in_the_data(router):
    head = LabelHead.load(router)
    system = SystemRouter([ExpertInfo(name=label, capabilities=[label]) for label in head.labels], head)
    texts = ["Solve 3x + 4 = 10 for x.", "What is 4 times 5 plus 6?", "Write a haiku about a river."]
    result = evaluate(system, [Request.of(t) for t in texts], ["math"] * 3)
    assert result["macro_f1_labels"] == ["math"] and "creative" in result["labels"]
    assert ("Macro-F1 over the labels in the data (math); creative, only routed to, count in accuracy and the "
            "confusion matrix.") in markdown(result, "t")
