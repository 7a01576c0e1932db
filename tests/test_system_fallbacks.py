"""MoRSystem after review: stacking predictors that answer no number fall back and trip their breaker, stacking
settings under which the fitted formula could never apply are refused, a synthesizer in cooldown is not called,
a re-registered expert starts with a closed breaker, and a router without adapters or options it never reads are
one-line errors."""

import asyncio
import time

import pytest

from mor.errors import ConfigError, MorError
from mor.system import ExpertInfo, Hints
from mor.system.config import build_system, load_config
from mor.system.experts.callable import CallableExpert
from mor.system.router import Selection, SystemRouter
from mor.system.stats import Breaker
from mor.system.store import StateStore
from mor.system.system import Combine, MoRSystem, Reflection


def expert(name: str, fn, *, keywords=(), timeout_s: float = 5.0) -> CallableExpert:
    return CallableExpert(ExpertInfo(name, capabilities=["general"], timeout_s=timeout_s,
                                     hints=Hints(keywords=list(keywords))), fn)


def replying(value, confidence: float = 0.8):
    async def fn(question: str):
        return value, confidence
    return fn


def system(*experts, top_k: int = 1, default: str | None = None, combine: Combine | None = None,
           reflection: Reflection | None = None, breaker: Breaker | None = None, store=None) -> MoRSystem:
    router = SystemRouter([e.info for e in experts], selection=Selection(top_k, None, 0.0, default))
    return MoRSystem(list(experts), router, combine, reflection, breaker, store)


@pytest.mark.parametrize("bad", [float("nan"), "not a number"])
def test_a_stacking_predictor_that_answers_no_number_falls_back_and_counts_as_failed(bad):
    s = system(expert("a", replying(bad, 0.9), keywords=["predict"]), expert("b", replying(3.0)),
               combine=Combine("stacking"), breaker=Breaker(failures_to_open=2, cooldown_s=60))
    reply = asyncio.run(s.ask("predict this"))
    assert reply.answer.expert == "b" and reply.answer.value == pytest.approx(3.0)
    asyncio.run(s.ask("predict this"))
    assert s.stats["a"].errors == 2 and not s.stats["a"].available()  # its breaker opened
    assert s.route("predict this").selected == ["b"]


def test_stacking_coefficients_need_every_fitted_expert_selected_and_no_reflection():
    a, b = expert("a", replying(10.0)), expert("b", replying(2.0))
    with pytest.raises(ConfigError, match=r"router.top_k: 1 expert\(s\) answer, but integration.coefficients "
                                          r"combine 2; set router.top_k to 2"):
        system(a, b, combine=Combine("stacking", coefficients={"a": 1.0, "b": 1.0}, intercept=100.0))
    with pytest.raises(ConfigError, match=r"reflection.rounds: 1, but a stacking formula takes exactly the experts"):
        system(a, b, top_k=2, combine=Combine("stacking", coefficients={"a": 1.0, "b": 1.0}),
               reflection=Reflection(rounds=1))
    s = system(a, b, top_k=2, combine=Combine("stacking", coefficients={"a": 1.0, "b": 1.0}, intercept=100.0))
    assert asyncio.run(s.ask("q")).answer.value == 112.0


def test_an_ensemble_does_not_call_a_synthesizer_in_cooldown():
    calls = []

    async def hanging(question: str):
        calls.append(question)
        await asyncio.sleep(10)

    s = system(expert("a", replying("4", 0.6)), expert("b", replying("5", 0.6)),
               expert("syn", hanging, timeout_s=0.2), top_k=2, combine=Combine("ensemble", "syn"),
               breaker=Breaker(failures_to_open=2, cooldown_s=60))
    for _ in range(2):
        asyncio.run(s.ask("q"))
    assert len(calls) == 2 and not s.stats["syn"].available()
    start = time.perf_counter()
    reply = asyncio.run(s.ask("q"))
    assert len(calls) == 2 and reply.syntheses == [] and time.perf_counter() - start < 0.2  # weighted at once
    assert reply.answer.content in ("4", "5")


async def broken(question: str):
    raise RuntimeError("down")


def test_an_expert_registered_in_place_of_a_removed_one_starts_with_a_closed_breaker():
    s = system(expert("main", broken, keywords=["q"]), expert("backup", replying("other", 0.5)),
               breaker=Breaker(failures_to_open=1, cooldown_s=600))
    asyncio.run(s.ask("q"))
    assert not s.stats["main"].available()
    s.remove("main")
    s.register(expert("main", replying("fixed", 0.9), keywords=["q"]))
    reply = asyncio.run(s.ask("q"))
    assert reply.answer.content == "fixed" and s.stats["main"].errors == 1  # its history is kept


def test_a_router_expert_without_an_adapter_is_a_one_line_error():
    router = SystemRouter([ExpertInfo("a"), ExpertInfo("b")])
    with pytest.raises(MorError, match=r"router: expert\(s\) b have no adapter"):
        MoRSystem([expert("a", replying("a"))], router)


def test_feedback_on_an_expert_removed_since_it_answered_is_kept(tmp_path):
    store = StateStore(tmp_path / "state.sqlite")
    s = system(expert("a", replying("a", 0.9), keywords=["q"]), expert("b", replying("b", 0.5)), store=store)
    reply = asyncio.run(s.ask("q"))
    s.remove(reply.answer.expert)
    s.feedback(reply.answer.expert, False, "q")
    assert len(store.feedback()) == 1 and s.stats["a"].failures == 1
    with pytest.raises(MorError, match=r"feedback: unknown expert 'zzz'"):
        s.feedback("zzz", True)


@pytest.mark.parametrize("router,message", [
    ("{threshold: 0.5, top_k: 2}", "router.top_k: router.threshold picks every expert scoring above it"),
    ("{min_confidence: 0.6, default: b}", "router.min_confidence: 0.6 compares the trained head's probability, but "
                                         "there is no head"),
])
def test_router_options_that_would_never_be_read_are_refused(tmp_path, router, message):
    path = tmp_path / "system.yaml"
    path.write_text("experts:\n  - {name: a, kind: math}\n  - {name: b, kind: math}\nrouter: " + router + "\n")
    with pytest.raises(ConfigError, match=message):
        build_system(load_config(path), str(path))
