"""OpenAIChatExpert against a real OpenAI-compatible server on loopback: answers, usage, faults and retries."""

import asyncio
import logging
import math
import subprocess
import sys
import time
from collections.abc import Callable
from email.utils import formatdate

import httpx
import pytest

from fake_llm_server import LEAK, TOKEN_LOGPROB, State
from mor.errors import ConfigError
from mor.system import ExpertInfo, Request
from mor.system.experts.errors import ExpertError, RequestError
from mor.system.experts.openai_chat import DEFAULT_CONFIDENCE, OpenAIChatExpert, _retry_after

CAPITAL = "What is the capital of France?"  # the fake server answers "Paris"


@pytest.fixture
def state(llm_server) -> State:
    llm_server.state.reset()
    return llm_server.state


def expert(url: str, **options) -> OpenAIChatExpert:
    options = {"backoff_s": 0.01, "timeout_s": 2.0, **options}
    return OpenAIChatExpert(ExpertInfo("llm"), url, "tiny-model", **options)


def ask(llm: OpenAIChatExpert, question: str = CAPITAL, **request) -> object:
    """Answer one request and close the client; never waits more than 10 s."""
    async def go():
        try:
            return await llm.answer(Request.of(question, **request))
        finally:
            await llm.aclose()
    return asyncio.run(asyncio.wait_for(go(), timeout=10))


def streamed(llm: OpenAIChatExpert) -> list:
    """Every delta and the answer of one streamed request, then close the client; never waits more than 10 s."""
    async def go():
        try:
            return [piece async for piece in llm.stream(Request.of(CAPITAL))]
        finally:
            await llm.aclose()
    return asyncio.run(asyncio.wait_for(go(), timeout=10))


def fails(llm: OpenAIChatExpert, call: Callable[[OpenAIChatExpert], object] = ask, refused: bool = False) -> str:
    """The one-line error `call` raises: a RequestError (the request's fault) when `refused`, else the expert's."""
    with pytest.raises(ExpertError) as caught:
        call(llm)
    message = str(caught.value)
    assert isinstance(caught.value, RequestError) is refused, message
    assert "\n" not in message and message.startswith("expert llm: ")
    return message


def test_answer_usage_money_and_logprob_confidence(llm_server, state):
    answer = ask(expert(llm_server.url, price_in=2.0, price_out=4.0, max_tokens=16))
    assert answer.text == "Paris" and answer.expert == "llm" and answer.ok
    assert (answer.cost.tokens_in, answer.cost.tokens_out) == (6, 1)
    assert answer.cost.money == pytest.approx((6 * 2.0 + 1 * 4.0) / 1000)
    assert answer.confidence == pytest.approx(math.exp(TOKEN_LOGPROB))
    assert answer.details["attempts"] == 1 and answer.details["model"] == "tiny-model"
    (body,) = state.bodies  # the server accepted it against the openai package's request schema
    assert body == {"model": "tiny-model", "messages": [{"role": "user", "content": "What is the capital of France?"}],
                    "temperature": 0.0, "max_tokens": 16, "logprobs": True}


def test_without_logprobs_confidence_is_the_declared_default(llm_server, state):
    answer = ask(expert(llm_server.url, logprobs=False), "hello there")
    assert answer.text == "echo: hello there" and answer.confidence == DEFAULT_CONFIDENCE
    assert "logprobs" not in state.bodies[0]


def test_tools_pass_through_and_tool_calls_come_back(llm_server, state):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
    answer = ask(expert(llm_server.url), "look it up", tools=tools)
    assert state.bodies[0]["tools"] == tools
    assert answer.text is None and answer.details["finish_reason"] == "tool_calls"
    assert answer.details["tool_calls"][0]["function"]["name"] == "lookup"


def test_api_key_comes_from_the_named_environment_variable(llm_server, state, monkeypatch):
    monkeypatch.setenv("MOR_TEST_KEY", "sk-secret")
    ask(expert(llm_server.url, api_key_env="MOR_TEST_KEY"))
    assert state.headers[0]["authorization"] == "Bearer sk-secret"
    monkeypatch.delenv("MOR_TEST_KEY")
    with pytest.raises(ConfigError, match="MOR_TEST_KEY"):
        expert(llm_server.url, api_key_env="MOR_TEST_KEY")


@pytest.mark.parametrize("status", ["429", "408"])
def test_429_and_408_then_success_are_retried(llm_server, state, status):
    state.reset(status, status)
    answer = ask(expert(llm_server.url, retries=2))
    assert answer.text == "Paris" and answer.details["attempts"] == 3 and len(state.bodies) == 3


@pytest.mark.parametrize(("value", "low", "high"), [("2", 2.0, 2.0), ("-3", 0.0, 0.0), ("soon", 0.0, 0.0),
                                                    ("in 3 s", 1.5, 3.0), ("a second ago", 0.0, 0.0)])
def test_retry_after_is_read_in_seconds_or_as_an_http_date(value, low, high):
    dates = {"in 3 s": formatdate(time.time() + 3, usegmt=True),
             "a second ago": formatdate(time.time() - 1, usegmt=True)}
    response = httpx.Response(503, headers={"retry-after": dates.get(value, value)})
    assert low <= _retry_after(response) <= high


def test_500s_are_retried_then_fail_with_one_line(llm_server, state):
    state.reset("500", "500", "500", "500")
    message = fails(expert(llm_server.url, retries=2))
    assert len(state.bodies) == 3
    assert f"{llm_server.url}/chat/completions" in message and "after 3 attempt(s)" in message and "HTTP 500" in message


def wizard(llm: OpenAIChatExpert) -> object:
    """Send a message whose role the endpoint does not know: the fake server's schema check answers 422."""
    return ask(llm, Request(messages=({"role": "wizard", "content": "hello"},)))


@pytest.mark.parametrize(("faults", "call", "status"), [
    (("400",) * 3, ask, 400), (("400",) * 3, streamed, 400), (("413",) * 3, ask, 413), (("413",) * 3, streamed, 413),
    ((), wizard, 422),
], ids=["400", "400 streamed", "413", "413 streamed", "422 from the schema check"])
def test_a_request_the_endpoint_refuses_is_a_request_error_sent_once(llm_server, state, faults, call, status):
    """400, 413 and 422 blame the request (too long, malformed): not retried, and not counted against the expert."""
    state.reset(*faults)
    message = fails(expert(llm_server.url, retries=2), call, refused=True)
    assert len(state.bodies) == 1 and f"failed: HTTP {status} (its reply is in the server log)" in message
    assert "shorten or fix the request" in message


@pytest.mark.parametrize("call", [ask, streamed], ids=["answer", "stream"])
def test_a_wrong_api_key_or_url_is_the_experts_fault_and_fails_at_once(llm_server, state, call):
    state.reset("401")
    message = fails(expert(llm_server.url, retries=1), call)
    assert len(state.bodies) == 1 and "HTTP 401" in message and "check the model name, base_url and API key" in message
    assert "HTTP 404" in fails(expert(f"{llm_server.url}/nowhere", retries=1), call)


@pytest.mark.parametrize("faults,call,failure,refused", [
    (("500",) * 3, ask, "after 3 attempt(s): HTTP 500", False), (("400",), ask, "failed: HTTP 400", True),
    (("html",), ask, "replied with non-JSON", False), (("junk:0",), streamed, "sent an event that is not JSON", False),
], ids=["HTTP 500", "HTTP 400", "non-JSON reply", "non-JSON event"])
def test_what_a_failing_upstream_sent_is_logged_not_put_in_the_error(llm_server, state, caplog, faults, call, failure,
                                                                     refused):
    state.reset(*faults)
    with caplog.at_level(logging.WARNING, logger="mor.system"):
        message = fails(expert(llm_server.url, retries=2), call, refused)
    assert LEAK not in message and f"{failure} (its reply is in the server log)" in message
    logged = [r.getMessage() for r in caplog.records if r.name == "mor.system" and r.levelno == logging.WARNING]
    what = failure.split(": ")[-1]  # the status or the kind of failure, without the attempts
    assert len(logged) == len(faults) and all(m.startswith("expert llm: ") and what in m and LEAK in m for m in logged)


def test_timeouts_are_retried_and_never_hang(llm_server, state):
    state.reset("sleep:5", "sleep:5")
    start = time.perf_counter()
    message = fails(expert(llm_server.url, timeout_s=0.2, retries=1))
    assert time.perf_counter() - start < 2.5
    assert len(state.bodies) == 2 and "timed out after 0.2 s" in message


def test_slow_but_within_the_timeout_succeeds(llm_server, state):
    state.reset("sleep:0.3")
    answer = ask(expert(llm_server.url, timeout_s=2.0, retries=0))
    assert answer.text == "Paris" and answer.cost.latency_s >= 0.3


def test_a_reply_that_is_not_a_completion_is_an_error(llm_server, state):
    state.reset("garbage")
    assert "invalid chat completion (choices: Field required)" in fails(expert(llm_server.url))


def test_connection_refused_is_retried_then_fails():
    import socket

    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{free.getsockname()[1]}/v1"
    message = fails(expert(url, retries=1))
    assert "connection failed" in message and "after 2 attempt(s)" in message


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="base_url must start with http"):
        expert("localhost:8000/v1")
    with pytest.raises(ConfigError, match="retries and backoff_s"):
        expert("http://x/v1", retries=-1)


def test_the_adapter_does_not_need_the_openai_package():
    code = "import sys, mor.system.experts.openai_chat; assert 'openai' not in sys.modules, 'openai imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
