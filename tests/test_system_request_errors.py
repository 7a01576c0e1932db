"""Requests an expert cannot take, through a real MoRSystem: an HTTP expert whose endpoint answers 400 (the fake
OpenAI-compatible server on loopback) and a scikit-learn predictor sent the wrong features fall back without
opening the expert's circuit breaker, while an endpoint or a model that is itself broken still opens it, and so
does a run of refusals."""

import asyncio

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from mor.system.experts.openai_chat import OpenAIChatExpert
from mor.system.experts.predictor import SklearnExpert
from mor.system.reply import Reply
from mor.system.stats import Breaker
from mor.system.system import MoRSystem
from test_system_core import expert, info, make_system

BREAKER = Breaker(failures_to_open=2, cooldown_s=60)


def asked(system: MoRSystem, questions: list[str], stream: bool = False) -> list[Reply]:
    """Each question's Reply, asked one after another (streamed: the Reply that ends the stream), then close."""
    async def go() -> list[Reply]:
        try:
            if not stream:
                return [await system.ask(q) for q in questions]
            return [[piece async for piece in system.stream(q)][-1] for q in questions]
        finally:
            await system.aclose()
    return asyncio.run(asyncio.wait_for(go(), timeout=20))


def http_system(url: str) -> MoRSystem:
    """An OpenAI-compatible expert preferred for 'capital' questions, with a local backup."""
    llm = OpenAIChatExpert(info("llm", keywords=["capital"]), url, "tiny-model", timeout_s=2.0, retries=2,
                           backoff_s=0.01)
    return make_system(llm, expert("backup"), breaker=BREAKER)


def health(system: MoRSystem, name: str) -> tuple[bool, int, int]:
    """Whether `name` may be called, its errors and its refusals."""
    stats = system.stats[name]
    return stats.available(), stats.errors, stats.refusals


@pytest.mark.parametrize("stream", [False, True], ids=["ask", "stream"])
def test_http_400s_fall_back_without_opening_the_breaker(llm_server, stream):
    llm_server.state.reset("400", "400", "400")
    system = http_system(llm_server.url)
    replies = asked(system, ["What is the capital of France?"] * 4, stream)
    assert all([(a.expert, a.ok) for a in r.answers] == [("llm", False), ("backup", True)] for r in replies[:3])
    assert all(r.answers[0].details == {"request_error": True, "endpoint_refusal": True} for r in replies[:3])
    assert "HTTP 400" in replies[0].answers[0].error and len(llm_server.state.bodies) == 4  # never retried
    assert health(system, "llm") == (True, 0, 3) and replies[3].answer.text == "Paris"


def test_an_endpoint_that_refuses_every_request_is_put_in_cooldown(llm_server):
    llm_server.state.reset(*["400"] * 3)
    llm = OpenAIChatExpert(info("llm", keywords=["capital"]), llm_server.url, "no-such-parameter", timeout_s=2.0)
    system = make_system(llm, expert("backup"), breaker=Breaker(failures_to_open=2, cooldown_s=60, refusals_to_open=3))
    replies = asked(system, ["What is the capital of France?"] * 4)
    assert [r.answers[0].expert for r in replies] == ["llm"] * 3 + ["backup"]
    assert health(system, "llm") == (False, 0, 3)


def test_http_401s_still_open_the_breaker(llm_server):
    llm_server.state.reset("401", "401")
    system = http_system(llm_server.url)
    replies = asked(system, ["What is the capital of France?"] * 3)
    assert [r.answers[0].expert for r in replies] == ["llm", "llm", "backup"]  # open after two failures
    assert health(system, "llm") == (False, 2, 0)


def fitted() -> LogisticRegression:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    return LogisticRegression().fit(x, x[:, 0] > 0)


def predictor_system(model: LogisticRegression) -> MoRSystem:
    """A classifier over 4 features preferred for 'classify' questions, with a local backup."""
    return make_system(SklearnExpert(info("clf", keywords=["classify"]), model), expert("backup"), breaker=BREAKER)


def test_features_the_predictor_cannot_read_fall_back_without_opening_the_breaker():
    system = predictor_system(fitted())
    replies = asked(system, ["classify [1, 2, 3]", "classify this photo", "classify [1, 2, NaN, 4]",
                             "classify [1, 2, 3, 4]"])
    assert [(r.answers[0].expert, r.answers[0].ok) for r in replies] == [("clf", False)] * 3 + [("clf", True)]
    assert "expected [4]; send 4 features as a JSON array" in replies[0].answers[0].error
    assert health(system, "clf") == (True, 0, 3)


def test_a_predictor_that_fails_on_well_formed_features_still_opens_the_breaker():
    model = fitted()
    model.coef_ = model.coef_[:, :3]  # a broken model: it no longer fits the 4 features it declares
    system = predictor_system(model)
    replies = asked(system, ["classify [1, 2, 3, 4]"] * 3)
    assert [r.answers[0].expert for r in replies] == ["clf", "clf", "backup"]
    assert health(system, "clf") == (False, 2, 0)
