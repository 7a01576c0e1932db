"""Review fixes in mor.system: voting compares numbers exactly and reads a leading label's lone bracket, `mor route
eval --config` builds no expert, and an ensemble whose synthesis request cannot fit falls back to `weighted`."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mor.errors import ConfigError
from mor.system import Answer, ExpertInfo, Hints, Request
from mor.system.commands import _router
from mor.system.experts.callable import CallableExpert
from mor.system.head import HeadConfig, LabelHead
from mor.system.integration import synthesis_request, voting
from mor.system.normalise import normalise
from mor.system.request import MAX_REQUEST_CHARS
from mor.system.router import Selection, SystemRouter
from mor.system.system import Combine, MoRSystem
from routing_data import TEMPLATES, generated, write_jsonl

UNSET_KEY = "MOR_REVIEW2_UNSET_KEY"  # an API key variable no test sets

# ---- A: normalise ----


@pytest.mark.parametrize(("left", "right"), [("B)", "(B)"), ("B)", "B"), ("1) Paris", "(1) Paris"),
                                             ("1e20", "100000000000000000000"), ("2.50", "2.5"), ("1E3", "1000"),
                                             ("-0.0", "0")])
def test_normalise_makes_equal_values_and_option_labels_equal(left: str, right: str) -> None:
    """`.10g` wrote 1e20 as 1e+20 apart from its digits, and `B)` kept its bracket while `(B)` lost it."""
    assert normalise(left) == normalise(right)


@pytest.mark.parametrize(("left", "right"), [("12345678902.5", "12345678903.5"),
                                             ("$12,345,678,901.25", "12345678904.75"), ("1.00000000001", "1"),
                                             ("3.14159265358979", "3.141592654"), ("1e200", "1e201"),
                                             ("0.1", "0.1000000000000000000000000000001"), ("f(x)", "f(x))")])
def test_normalise_keeps_different_values_apart(left: str, right: str) -> None:
    """Rounding to 10 significant digits merged values that differ past the tenth digit."""
    assert normalise(left) != normalise(right)


def test_normalise_reads_a_number_longer_than_pythons_int_limit() -> None:
    """int() refuses strings of more than 4,300 digits: a long numeric answer made voting raise."""
    assert normalise("1" * 5000) != normalise("1" * 4999 + "2")


def test_normalise_writes_a_huge_exponent_short() -> None:
    """Exact is not written out: 1e999999999 in full would be a gigabyte."""
    assert normalise("1E999999999") == "1e999999999"


def test_voting_does_not_merge_numbers_that_differ_past_the_tenth_digit() -> None:
    answers = [Answer("x", text="$12,345,678,901.25", confidence=0.6),
               Answer("y", text="12345678904.75", confidence=0.6), Answer("z", text="12345678903", confidence=0.9)]
    combined = voting(answers)
    assert combined.expert == "z" and len(combined.details["votes"]) == 3


# ---- B: mor route eval --config ----


def mor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command line, without `UNSET_KEY` in its environment."""
    env = {k: v for k, v in os.environ.items() if k != UNSET_KEY}
    return subprocess.run([sys.executable, "-c", "from mor.cli import run; run()", *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def eval_folder(tmp_path_factory) -> Path:
    """A trained router, requests to score it on, and a config whose experts cannot be built: an API key that is
    not set and a function that cannot be imported."""
    folder = tmp_path_factory.mktemp("route_eval")
    rows = generated(10)
    LabelHead.fit([r["text"] for r in rows], [r["label"] for r in rows], HeadConfig(encoder="tfidf")).save(
        folder / "router")
    write_jsonl(folder / "small.jsonl", generated(2, seed=3))
    labels = sorted(TEMPLATES)
    (folder / "system.yaml").write_text(
        "experts:\n"
        f"  - {{name: llm, kind: openai, base_url: 'http://127.0.0.1:9/v1', model: m, api_key_env: {UNSET_KEY}, "
        f"capabilities: {labels[:3]}, hints: {{keywords: [poem]}}}}\n"
        f"  - {{name: local, kind: callable, function: 'no_such_module_anywhere:answer', capabilities: {labels[3:]}}}\n"
        "router: {path: router}\n")
    return folder


def test_route_eval_scores_a_config_whose_experts_cannot_be_built(eval_folder: Path) -> None:
    """Routing calls no expert: it used to build every adapter, so an unset API key failed the evaluation."""
    result = mor("route", "eval", "--data", "small.jsonl", "--config", "system.yaml", "--out", "out",
                 cwd=eval_folder)
    assert result.returncode == 0, result.stderr
    assert "| accuracy |" in result.stdout
    assert json.loads((eval_folder / "out" / "route-eval.json").read_text())


def test_the_eval_router_has_what_the_experts_declare(eval_folder: Path) -> None:
    router = _router(None, eval_folder / "system.yaml")
    assert sorted(router.experts) == ["llm", "local"]
    assert router.experts["llm"].capabilities == sorted(TEMPLATES)[:3]
    assert router.experts["llm"].hints.keywords == ["poem"]
    assert router.head is not None


@pytest.mark.parametrize(("experts", "message"), [
    ("  - {name: a, kind: math}\n  - {name: a, kind: math}\n", "experts[1].name: 'a' is already used"),
    ("  - {name: a, kind: nope}\n", "experts[0].kind: must be one of"),
    ("  - {name: a, kind: openai, model: m}\n", "experts[0].base_url"),
    ("  - {name: a, kind: math, hints: {patterns: ['(']}}\n", "experts[0]: hints.patterns: '(' is not a valid"),
])
def test_the_eval_router_still_refuses_a_bad_expert_spec_naming_the_field(eval_folder: Path, tmp_path: Path,
                                                                          experts: str, message: str) -> None:
    """Not building the adapters must not skip validating the specs: each error is one line naming the field."""
    config = tmp_path / "config.yaml"
    config.write_text(f"experts:\n{experts}router: {{path: {eval_folder / 'router'}}}\n")
    with pytest.raises(ConfigError) as caught:
        _router(None, config)
    error = str(caught.value)
    assert message in error and error.startswith(f"{config}: ") and "\n" not in error


def test_the_eval_router_refuses_a_default_that_is_not_an_expert(eval_folder: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"experts:\n  - {{name: a, kind: math, capabilities: [math]}}\n"
                      f"router: {{path: {eval_folder / 'router'}, default: nobody, min_confidence: 0.3}}\n")
    with pytest.raises(ConfigError, match=r"router.default: 'nobody' is not an expert; experts are: a"):
        _router(None, config)


# ---- C: synthesis_request near the limit ----


def empty_answers(n: int) -> list[Answer]:
    return [Answer(f"e{i}", text="", confidence=0.5) for i in range(n)]


@pytest.mark.parametrize("question_chars", [MAX_REQUEST_CHARS - 100, MAX_REQUEST_CHARS - 150, MAX_REQUEST_CHARS - 300])
def test_a_synthesis_request_that_cannot_fit_is_none_even_for_empty_answers(question_chars: int) -> None:
    """With empty answers the room for them went negative, `_cut("", 0)` kept them, and the request built was over
    the limit: a ConfigError instead of the fallback."""
    synthesis = synthesis_request(Request.of("q" * question_chars), empty_answers(2))
    assert synthesis is None or len(synthesis.text) <= MAX_REQUEST_CHARS


def test_a_synthesis_request_over_the_limit_is_none() -> None:
    assert synthesis_request(Request.of("q" * 199_900), empty_answers(2)) is None


def test_an_ensemble_whose_synthesis_cannot_fit_answers_weighted_without_the_synthesizer() -> None:
    asked: list[str] = []

    def expert(name: str, text: str, confidence: float, keywords: tuple[str, ...] = ()) -> CallableExpert:
        async def answer(question: str) -> tuple[str, float]:
            asked.append(name)
            return text, confidence
        return CallableExpert(ExpertInfo(name, capabilities=["general"], hints=Hints(keywords=list(keywords))),
                              answer)

    experts = [expert("a", "", 0.6, ("q",)), expert("b", "", 0.5, ("q",)), expert("judge", "fused", 0.9)]
    router = SystemRouter([e.info for e in experts], selection=Selection(top_k=2))
    system = MoRSystem(experts, router, Combine("ensemble", "judge"))
    reply = asyncio.run(asyncio.wait_for(system.ask("q" * 199_900), 10))
    assert reply.answer.expert == "a" and reply.answer.details["mode"] == "weighted"
    assert "judge" not in asked
