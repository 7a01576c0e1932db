"""Pass-through streaming on a real `mor serve`: the official `openai` client gets an OpenAI-compatible expert's
deltas (tests/fake_llm_server.py) while the expert is still answering; a failure before the first delta falls back,
a later one ends the stream with an error event; statistics, cost and the `mor` extension are kept; systems that
need the whole answer first stream it post-hoc."""

import json
import logging
import math
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from fake_llm_server import LEAK, TOKEN_LOGPROB, State
from mor.serve.chat import pieces
from test_serve import metric
from test_serve_support import KEY, serve, write_settings

CAPITAL = "What is the capital of France?"  # the fake server answers "Paris"
WORDS = "stream one two three"  # echoed as "echo: stream one two three", one chunk per word
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


def system_yaml(folder: Path, url: str, **sections) -> Path:
    """Two OpenAI experts on the fake server: `llm`, which these questions route to, and `backup`, ranked next."""
    common = {"kind": "openai", "base_url": url, "model": "tiny-model", "timeout_s": 1.5, "retries": 1,
              "backoff_s": 0.01}
    content = {"experts": [{"name": "llm", "capabilities": ["tool"], **common,
                            "hints": {"keywords": ["capital", "stream", "look"]}}, {"name": "backup", **common}],
               "router": {"weights": {"hints": 1.0}}, "breaker": {"failures_to_open": 100}, **sections}
    path = folder / "system.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def started(folder: Path, url: str, **sections):
    """A real `mor serve` on loopback whose system is `system_yaml(folder, url, **sections)`."""
    return serve(write_settings(folder, system=str(system_yaml(folder, url, **sections))))


@pytest.fixture(scope="module")
def server(tmp_path_factory, llm_server):
    with started(tmp_path_factory.mktemp("streaming"), llm_server.url) as running:
        yield running


@pytest.fixture
def upstream(llm_server) -> State:
    llm_server.state.reset()
    return llm_server.state


def connect(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=30)


def ask(server, question: str, **options) -> list:
    """Every chunk of a streamed answer, through the official client."""
    return list(connect(server).chat.completions.create(
        model="mor", messages=[{"role": "user", "content": question}], stream=True, **options))


def text_of(chunks: list) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def last(chunks: list):
    """The last chunk with a choice: it carries the finish reason and the `mor` extension."""
    return [c for c in chunks if c.choices][-1]


def test_deltas_reach_the_client_while_the_upstream_is_still_answering(server, upstream):
    upstream.reset("drip:0.2")  # 0.2 s before each of 5 words, the finish reason and the usage
    start, arrivals = time.perf_counter(), []
    for chunk in connect(server).chat.completions.create(model="mor", stream=True,
                                                          messages=[{"role": "user", "content": WORDS}]):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append((time.perf_counter() - start, chunk.choices[0].delta.content))
    total = time.perf_counter() - start
    assert "".join(text for _, text in arrivals) == f"echo: {WORDS}" and len(arrivals) == 5
    assert total >= 1.2 and arrivals[0][0] < total / 2 and arrivals[-1][0] - arrivals[0][0] >= 0.6, arrivals
    (body,) = upstream.bodies
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True} and body["logprobs"] is True


def test_a_streamed_answer_records_statistics_cost_and_confidence(server, upstream):
    stats = server.service.system.stats["llm"]
    calls, errors = stats.calls, stats.errors
    ok = metric(httpx.get(server.root + "/metrics").text, "mor_expert_activations_total", expert="llm", outcome="ok")
    chunks = ask(server, CAPITAL, stream_options={"include_usage": True})
    assert text_of(chunks) == "Paris" and chunks[0].choices[0].delta.role == "assistant"
    assert last(chunks).choices[0].finish_reason == "stop"
    mor = last(chunks).model_extra["mor"]
    assert mor["experts"] == ["llm"] and mor["answered_by"] == "llm" and not mor["fallback"]
    assert mor["steps"] == 1 and mor["rounds"] == 0 and mor["confidence"] == pytest.approx(math.exp(TOKEN_LOGPROB))
    assert {s["name"] for s in mor["scores"]} == {"llm", "backup"}
    assert (mor["cost"]["tokens_in"], mor["cost"]["tokens_out"]) == (6, 1) and mor["cost"]["latency_s"] > 0
    usage = chunks[-1]
    assert not usage.choices and (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (6, 1)
    assert (stats.calls, stats.errors, stats.in_flight) == (calls + 1, errors, 0) and stats.latency_ewma_s > 0
    assert upstream.bodies[0]["stream"] is True
    text = httpx.get(server.root + "/metrics").text
    assert metric(text, "mor_expert_activations_total", expert="llm", outcome="ok") == ok + 1


def test_tool_call_deltas_reach_the_client_with_their_index(server, upstream):
    chunks = ask(server, "look it up", tools=TOOLS)
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert [c.index for c in calls] == [0, 0] and calls[0].id == "call_1" and calls[0].function.name == "lookup"
    assert "".join(c.function.arguments or "" for c in calls) == "{}"
    assert last(chunks).choices[0].finish_reason == "tool_calls" and text_of(chunks) == ""
    assert upstream.bodies[0]["stream"] is True and upstream.bodies[0]["tools"] == TOOLS


@pytest.mark.parametrize("faults", [("500", "500"), ("cut:0", "cut:0")], ids=["HTTP 500", "dropped before a delta"])
def test_an_upstream_failing_before_its_first_delta_is_replaced(server, upstream, faults):
    upstream.reset(*faults)
    errors = server.service.system.stats["llm"].errors
    chunks = ask(server, CAPITAL)
    mor = last(chunks).model_extra["mor"]
    assert text_of(chunks) == "Paris" and mor["experts"] == ["llm"] and mor["answered_by"] == "backup"
    assert mor["fallback"] and "after 2 attempt(s)" in next(a["error"] for a in mor["answers"] if a["expert"] == "llm")
    assert [b.get("stream") for b in upstream.bodies] == [True, True, None]  # two streamed attempts, then backup
    assert server.service.system.stats["llm"].errors == errors + 1


@pytest.mark.parametrize("faults,stream", [(("500", "500"), True), (("junk:0",), True), (("html",), False)],
                         ids=["streamed HTTP 500", "non-JSON event", "whole non-JSON reply"])
def test_what_a_failing_upstream_sent_reaches_the_log_not_the_client(server, upstream, caplog, faults, stream):
    upstream.reset(*faults)  # the failure bodies carry LEAK; `backup` answers instead
    body = {"model": "mor", "stream": stream, "messages": [{"role": "user", "content": CAPITAL}]}
    with caplog.at_level(logging.WARNING, logger="mor.system"):
        reply = httpx.post(server.url + "/chat/completions", json=body, timeout=30,
                           headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status_code == 200 and LEAK not in reply.text and LEAK in caplog.text
    assert '"Paris"' in reply.text and "its reply is in the server log" in reply.text


@pytest.mark.parametrize("fault,reason", [("cut:2", "RemoteProtocolError"), ("stall:2", "nothing came for 1.5 s")])
def test_an_upstream_failing_mid_way_ends_the_stream_with_an_error_event(server, upstream, fault, reason):
    upstream.reset(fault)
    stats = server.service.system.stats["llm"]
    errors, start = stats.errors, time.perf_counter()
    body = {"model": "mor", "stream": True, "messages": [{"role": "user", "content": WORDS}]}
    with httpx.stream("POST", server.url + "/chat/completions", json=body, timeout=10,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert time.perf_counter() - start < 5 and events[-1] == "[DONE]"
    sent = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:-2]]
    assert sent == ["echo:", " stream"]
    error = json.loads(events[-2])["error"]
    assert error["type"] == "upstream_error" and "broke off after 2 delta(s)" in error["message"]
    assert reason in error["message"] and (stats.errors, stats.in_flight) == (errors + 1, 0)
    upstream.reset(fault)
    with pytest.raises(openai.APIError, match="broke off after 2 delta"):
        ask(server, WORDS)


WHOLE = {"reflection rounds": {"reflection": {"rounds": 1}},
         "two experts": {"router": {"weights": {"hints": 1.0}, "top_k": 2}}}


@pytest.mark.parametrize("sections", WHOLE.values(), ids=WHOLE.keys())
def test_systems_that_need_the_whole_answer_stream_it_post_hoc(tmp_path, llm_server, upstream, sections):
    with started(tmp_path, llm_server.url, **sections) as server:
        chunks = ask(server, WORDS)
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert contents == pieces(f"echo: {WORDS}")  # the whole answer, cut after it came
    mor = last(chunks).model_extra["mor"]
    assert mor["answered_by"] == "llm" and mor["confidence"] == pytest.approx(math.exp(TOKEN_LOGPROB))
    assert upstream.bodies and all("stream" not in b for b in upstream.bodies)
    assert len(upstream.bodies) == len(mor["experts"])


def test_an_answer_the_upstream_cut_at_its_token_limit_says_length(tmp_path, llm_server, upstream):
    """A client must see that an answer was cut short; "stop" would pass a truncated answer off as whole."""
    path = system_yaml(tmp_path, llm_server.url)
    content = yaml.safe_load(path.read_text())
    for expert in content["experts"]:
        expert["max_tokens"] = 2
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    with serve(write_settings(tmp_path, system=str(path))) as server:
        chunks = ask(server, WORDS)
        whole = connect(server).chat.completions.create(model="mor", messages=[{"role": "user", "content": WORDS}])
        called = connect(server).chat.completions.create(model="mor", tools=TOOLS,
                                                         messages=[{"role": "user", "content": "look it up"}])
    assert text_of(chunks) == whole.choices[0].message.content == "echo: stream"
    assert last(chunks).choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    assert called.choices[0].finish_reason == "tool_calls"
