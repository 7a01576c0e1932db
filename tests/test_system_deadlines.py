"""MoRSystem's bounds on expert calls: a retrying expert's deadline covers all its attempts, a timed-out worker thread
keeps its expert's slot until it really ends (on the expert's own threads, never the shared default pool), and the
HTTP expert works from one event loop after another; with real threads and a real OpenAI-compatible server."""

import asyncio
import os
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse
from sklearn.linear_model import LogisticRegression

from fake_llm_server import Server, completion
from mor.system import ExpertInfo, Request
from mor.system.experts.base import Expert
from mor.system.experts.callable import CallableExpert
from mor.system.experts.openai_chat import OpenAIChatExpert
from mor.system.experts.predictor import SklearnExpert
from mor.system.experts.registry import build_expert
from mor.system.experts.retrieval import RetrievalExpert
from mor.system.router import SystemRouter
from mor.system.system import MoRSystem

ROUTE_CONFIG = Path(__file__).parent.parent / "configs" / "route.yaml"
QUESTION = "What is the capital of France?"


def system_of(*experts: Expert) -> MoRSystem:
    return MoRSystem(list(experts), SystemRouter([e.info for e in experts]))


def run(coroutine, within_s: float = 10.0):
    """Run `coroutine` in a new event loop, failing instead of hanging past `within_s`."""
    return asyncio.run(asyncio.wait_for(coroutine, within_s))


def call(system: MoRSystem, name: str, question: str = QUESTION, within_s: float = 10.0):
    """One call of expert `name` through the system (its slot, deadline and statistics), in a new event loop."""
    return run(system._call(name, Request.of(question)), within_s)


# ---- a retrying expert's deadline covers every attempt ----

def llm_spec(url: str, **fields) -> dict:
    """configs/route.yaml's OpenAI-compatible expert, pointed at `url`, with `fields` changed."""
    (spec,) = [e for e in yaml.safe_load(ROUTE_CONFIG.read_text())["experts"] if e["kind"] == "openai"]
    return {**spec, "base_url": url, **fields}


def test_the_route_config_s_deadline_leaves_room_for_its_retry_and_a_retry_after():
    llm = build_expert(llm_spec("http://localhost:8000/v1"))
    assert (llm.timeout_s, llm.retries) == (20, 1)
    assert llm.deadline_s == 20 + 20 + 20  # two attempts and the longest wait before the second


def test_a_timed_out_attempt_is_retried_inside_the_system(llm_server):
    llm_server.state.reset("sleep:5")  # the first attempt hangs, the second answers at once
    llm = build_expert(llm_spec(llm_server.url, timeout_s=0.3, backoff_s=0.01))  # retries: 1, as in the config
    start = time.perf_counter()
    answer = call(system_of(llm), "llm")
    assert answer.text == "Paris" and answer.details["attempts"] == 2 and len(llm_server.state.bodies) == 2
    assert 0.3 <= time.perf_counter() - start < 2.0


def test_a_stream_s_timed_out_first_attempt_is_retried_inside_the_system(llm_server):
    llm_server.state.reset("sleep:5")  # the first attempt times out; 1.5 s leaves the retry room on a loaded machine
    llm = build_expert(llm_spec(llm_server.url, timeout_s=1.5, backoff_s=0.01))

    async def pieces():
        return [piece async for piece in system_of(llm).stream(QUESTION)]

    *deltas, reply = run(pieces())
    assert "".join(d.text for d in deltas) == "Paris" and reply.answer.details["attempts"] == 2


def throttling_app(retry_after: deque[str]) -> FastAPI:
    """A chat server that answers 429 with each Retry-After of `retry_after` in turn, then completions."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: HttpRequest) -> JSONResponse:
        body = await request.json()
        if retry_after:
            return JSONResponse({"error": {"message": "slow down"}}, 429, {"retry-after": retry_after.popleft()})
        return JSONResponse(completion(body))

    return app


def test_a_retry_after_up_to_one_attempt_s_timeout_is_waited_out_inside_the_system():
    with Server(throttling_app(deque(["30"]))) as server:  # honoured up to timeout_s: 0.4 s
        llm = OpenAIChatExpert(ExpertInfo("llm", timeout_s=0.4), server.url, "m", retries=1, backoff_s=0.01)
        start = time.perf_counter()
        answer = call(system_of(llm), "llm")
    assert answer.text == "Paris" and answer.details["attempts"] == 2
    assert 0.4 <= time.perf_counter() - start < 2.0


# ---- a timed-out thread keeps its slot; experts run on threads of their own ----

class Blocking:
    """A sync function for a CallableExpert: 'block' holds its thread until `release`; anything else answers at
    once. It records the most threads running it at once and their names."""

    def __init__(self) -> None:
        self.release, self.lock = threading.Event(), threading.Lock()
        self.running = self.peak = 0
        self.names: set[str] = set()

    def __call__(self, question: str) -> str:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.names.add(threading.current_thread().name)
        try:
            if question == "block":
                self.release.wait(10)
            return "done"
        finally:
            with self.lock:
                self.running -= 1

    def wait_idle(self) -> None:
        """Let the blocked threads go and wait until none runs."""
        self.release.set()
        deadline = time.monotonic() + 5
        while self.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not self.running


@pytest.fixture
def blocking():
    fn = Blocking()
    yield fn
    fn.wait_idle()


def test_a_timed_out_thread_keeps_its_slot_until_it_ends(blocking):
    expert = CallableExpert(ExpertInfo("slow", timeout_s=0.1, max_concurrency=1), blocking)
    system = system_of(expert)

    async def four_at_once():
        return await asyncio.gather(*(system.ask("block") for _ in range(4)), return_exceptions=True)

    start = time.perf_counter()
    failed = "integration: every selected expert failed: slow: "
    errors = sorted(str(r).removeprefix(failed) for r in run(four_at_once()))
    busy = "busy: its 1 slot(s) stayed taken for 0.1 s; raise its max_concurrency or timeout_s"
    assert errors == [busy, busy, busy, "timed out after 0.1 s"]
    assert time.perf_counter() - start < 1.0  # the calls waiting for the slot time out too instead of queueing
    assert blocking.peak == 1 and system.stats["slow"].in_flight == 0
    assert call(system, "slow", "quick").error == "timed out after 0.1 s"  # the thread still holds the slot: hung
    assert (system.stats["slow"].errors, system.stats["slow"].busy) == (2, 3)  # queued behind a live call: busy
    blocking.wait_idle()
    assert call(system, "slow", "quick").text == "done" and blocking.peak == 1
    assert blocking.names == {"mor-expert-slow_0"}


def test_a_busy_expert_that_answers_every_call_is_not_put_in_cooldown():
    """Calls that wait out their deadline for a slot say the expert is loaded, not failing: they must not open its
    breaker, or a burst of traffic would shut a healthy expert off for the cooldown."""
    async def healthy(question: str):
        await asyncio.sleep(0.3)
        return "fine", 0.9

    system = system_of(CallableExpert(ExpertInfo("a", max_concurrency=1, timeout_s=0.5), healthy))

    async def burst():
        return await asyncio.gather(*(system.ask(f"q{i}") for i in range(6)), return_exceptions=True)

    replies = run(burst())
    assert sum(not isinstance(r, Exception) for r in replies) >= 1
    stats = system.stats["a"]
    assert stats.errors == 0 and stats.busy >= 3 and stats.available() and stats.in_flight == 0
    assert run(system.ask("next")).answer.text == "fine"


def test_a_cancelled_call_gives_its_load_back_at_once_and_its_slot_when_its_thread_ends(blocking):
    expert = CallableExpert(ExpertInfo("slow", timeout_s=0.5, max_concurrency=1), blocking)
    system = system_of(expert)

    async def cancel_then_call():
        with pytest.raises(TimeoutError):  # the caller gives up first, cancelling the call mid-thread
            await asyncio.wait_for(system.ask("block"), 0.1)
        assert system.stats["slow"].in_flight == 0
        assert (await system._call("slow", Request.of("quick"))).error == "timed out after 0.5 s"
        blocking.release.set()
        return await system._call("slow", Request.of("quick"))

    assert run(cancel_then_call()).text == "done"
    assert blocking.peak == 1 and system.stats["slow"].in_flight == 0 and system.stats["slow"].errors == 1


def test_threads_left_by_timeouts_do_not_starve_other_experts(blocking):
    hung = CallableExpert(ExpertInfo("hung", timeout_s=0.05, max_concurrency=1), blocking)
    fast = CallableExpert(ExpertInfo("fast", timeout_s=0.5), str.upper)
    system = system_of(hung, fast)

    async def hung_calls_then_a_fast_one():
        for _ in range(min(32, (os.cpu_count() or 1) + 4)):  # as many as asyncio's default executor has threads
            assert (await system._call("hung", Request.of("block"))).error == "timed out after 0.05 s"
        return await system._call("fast", Request.of("hello"))

    assert run(hung_calls_then_a_fast_one()).text == "HELLO"
    assert blocking.peak == 1


def blocking_experts(tmp_path: Path) -> dict[str, tuple[Expert, str, str]]:
    """An expert of each thread-based kind, the name of its blocking method, and a question it answers."""
    (tmp_path / "notes.md").write_text("Paris is the capital of France.\n")
    classifier = LogisticRegression().fit(np.array([[0.0], [1.0]]), [0, 1])
    return {"docs": (RetrievalExpert(ExpertInfo("docs"), tmp_path), "_search", "capital of France"),
            "clf": (SklearnExpert(ExpertInfo("clf"), classifier), "_predict", "[0.9]")}


@pytest.mark.parametrize("name", ["docs", "clf"])  # math runs in a child process it can kill (its own test)
def test_each_thread_based_expert_blocks_on_threads_of_its_own(tmp_path, name):
    expert, method, question = blocking_experts(tmp_path)[name]
    threads = []
    blocking_work = getattr(expert, method)

    def recorded(*args):
        threads.append(threading.current_thread().name)
        return blocking_work(*args)

    setattr(expert, method, recorded)
    answer = call(system_of(expert), name, question)
    assert answer.ok and threads == [f"mor-expert-{name}_0"]
    run(expert.aclose())


def test_a_predictor_s_feature_function_runs_on_its_threads_within_the_deadline():
    """`feature_fn` is user code: on the event loop, a slow one would stall every request and outlast the deadline."""
    threads = []

    def slow_features(text: str) -> list[float]:
        threads.append(threading.current_thread().name)
        time.sleep(0.0 if text == "quick" else 1.0)
        return [0.9]

    classifier = LogisticRegression().fit(np.array([[0.0], [1.0]]), [0, 1])
    expert = SklearnExpert(ExpertInfo("clf", timeout_s=0.2), classifier, feature_fn=slow_features)
    system = system_of(expert)
    assert call(system, "clf", "quick").value == 1 and threads == ["mor-expert-clf_0"]
    start = time.perf_counter()
    assert call(system, "clf", "slow").error == "timed out after 0.2 s" and time.perf_counter() - start < 0.6
    run(expert.aclose())


# ---- the HTTP expert from one event loop after another ----

def test_the_http_expert_answers_from_one_event_loop_after_another(llm_server):
    llm_server.state.reset()
    llm = OpenAIChatExpert(ExpertInfo("llm", timeout_s=5), llm_server.url, "tiny-model", retries=0)
    system = system_of(llm)
    for _ in range(2):
        assert run(system.ask(QUESTION)).answer.text == "Paris"
    assert system.stats["llm"].errors == 0 and len(llm_server.state.bodies) == 2
    run(system.aclose())  # a client from an earlier loop is dropped, not closed from the wrong loop
