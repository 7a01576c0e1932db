"""mor serve after the second review: expert failures reach clients as one short line each (their whole text goes
to the log), a streamed chat that fails before any content gets a real error status, every expert in cooldown is a
503 with Retry-After for chat as for /v1/route, the micro-batcher survives results a future cannot carry and times
its waits from each item's arrival, and the serve config refuses shared keys, origins that are not origins and
rate limits that are not finite."""

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from mor.errors import ConfigError
from mor.serve import hash_key, load_settings
from mor.serve.batching import MicroBatcher
from mor.serve.errors import REASON_CHARS, brief
from mor.serve.service import Service
from test_chat_streaming import WORDS, system_yaml
from test_serve import metric
from test_serve_robustness import ASK, one_line_error, run, system_file
from test_serve_support import Clock, write_settings

SECRET = "sk-live-123"
CHAT = {"model": "mor", **ASK}
WAIT_S = 30  # what a test waits at most for an answer that should come at once (the CI machine is loaded)


def leaky(question: str) -> str:
    """An expert that fails with what a careless upstream puts in its error: a traceback, a file and a secret."""
    raise RuntimeError(f'upstream said:\nTraceback (most recent call last):\n  File "/srv/app/db.py", line 3\n'
                       f"API key {SECRET} rejected")


# ---- expert failures: one short line per expert for clients, the whole text in the log ----

@pytest.mark.parametrize("text,shown", [
    ("RuntimeError: upstream said:\nTraceback (most recent call last):\n  File", "RuntimeError: upstream said"),
    ("OSError: cannot open /srv/app/secret/config.yaml", "OSError: cannot open …/config.yaml"),
    ("HTTPError: POST http://10.0.0.7:8080/v1/chat failed", "HTTPError: POST <url> failed"),
    (f"RuntimeError: API key {SECRET} rejected", "RuntimeError: API key <secret> rejected"),
    ("\n\n", "failed"),
], ids=["traceback", "path", "url", "secret", "empty"])
def test_brief_keeps_the_first_line_without_paths_urls_or_secrets(text, shown):
    assert brief(text) == shown


def test_brief_cuts_a_long_line():
    line = brief("ValueError: " + "x" * 5000)
    assert len(line) == REASON_CHARS and line.endswith("…")


def test_a_failing_experts_traceback_and_secret_stay_in_the_log(tmp_path, caplog):
    system = system_file(tmp_path, [{"name": "db", "kind": "callable", "function": "test_serve_review:leaky",
                                     "hints": {"keywords": ["hello"]}},
                                    {"name": "guide", "kind": "callable", "function": "mor.serve.guide:guide"}],
                         router={"default": "guide", "top_k": 1}, breaker={"failures_to_open": 100})
    (tmp_path / "lone").mkdir()
    lone = system_file(tmp_path / "lone", [{"name": "db", "kind": "callable", "function": "test_serve_review:leaky"}])

    async def ask(client: httpx.AsyncClient, service: Service) -> httpx.Response:
        return await client.post("/v1/chat/completions", json=CHAT)

    with caplog.at_level(logging.WARNING, logger="mor.serve"):
        answered = run(write_settings(tmp_path, system=str(system)), ask)
        failed = run(write_settings(tmp_path / "lone", system=str(lone)), ask)
    (error,) = [a["error"] for a in answered.json()["mor"]["answers"] if a["error"]]
    assert answered.status_code == 200 and error == "RuntimeError: upstream said", answered.text
    assert failed.status_code == 502
    assert one_line_error(failed)["message"] == "no expert could answer: db: RuntimeError: upstream said"
    for response in (answered, failed):
        assert SECRET not in response.text and "Traceback" not in response.text and "db.py" not in response.text
    assert SECRET in caplog.text and "/srv/app/db.py" in caplog.text


# ---- streamed chats: no 200 before there is content; failures after it are counted ----

def test_a_streamed_chat_failing_before_any_content_gets_a_502_not_a_200(tmp_path):
    system = system_file(tmp_path, [{"name": "b", "kind": "callable", "function": "test_serve_robustness:broken"}],
                         breaker={"failures_to_open": 100})

    async def body(client: httpx.AsyncClient, service: Service) -> tuple[httpx.Response, str]:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        return response, (await client.get("/metrics")).text

    response, metrics = run(write_settings(tmp_path, system=str(system)), body)
    error = one_line_error(response)
    assert response.status_code == 502 and response.headers["content-type"] == "application/json", response.text
    assert error["code"] == "experts_failed" and error["message"] == "no expert could answer: b: RuntimeError: " \
                                                                     "broken on purpose"
    endpoint = "/v1/chat/completions"
    assert metric(metrics, "mor_requests_total", endpoint=endpoint, status="502") == 1
    assert metric(metrics, "mor_requests_total", endpoint=endpoint, status="200") == 0


def test_a_stream_broken_after_its_first_delta_ends_in_an_error_event_and_is_counted(tmp_path, llm_server):
    llm_server.state.reset("cut:2")  # the upstream drops the connection after two words
    system = system_yaml(tmp_path, llm_server.url)

    async def body(client: httpx.AsyncClient, service: Service) -> tuple[httpx.Response, str]:
        response = await client.post("/v1/chat/completions", json={
            "model": "mor", "stream": True, "messages": [{"role": "user", "content": WORDS}]})
        return response, (await client.get("/metrics")).text

    response, metrics = run(write_settings(tmp_path, system=str(system)), body)
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert response.status_code == 200 and events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(events[-2])["error"]["code"] == "stream_broken"
    assert metric(metrics, "mor_stream_errors_total", endpoint="/v1/chat/completions", code="stream_broken") == 1


# ---- every expert in cooldown: 503 with Retry-After for chat too, without the operator's advice ----

def test_chat_while_every_expert_is_in_cooldown_gets_503_with_retry_after(tmp_path, caplog):
    system = system_file(tmp_path, [{"name": "b", "kind": "callable", "function": "test_serve_robustness:broken"}],
                         breaker={"failures_to_open": 1, "cooldown_s": 60})

    async def body(client: httpx.AsyncClient, service: Service) -> list[httpx.Response]:
        await client.post("/v1/chat/completions", json=CHAT)  # fails, and opens the breaker
        return [await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
                for stream in (False, True, False)]

    with caplog.at_level(logging.WARNING, logger="mor.serve"):
        responses = run(write_settings(tmp_path, system=str(system)), body)
    for response in responses:
        error = one_line_error(response)
        assert response.status_code == 503 and error["code"] == "no_expert_available", response.text
        assert error["type"] == "unavailable_error" and "every expert is in cooldown" in error["message"]
        assert "router.default" not in response.text and 50 <= int(response.headers["retry-after"]) <= 60
    assert caplog.text.count("set router.default") == 1  # once per cooldown, not per request
    assert caplog.text.count("expert b: in cooldown for 60 s after 1 failures") == 1


# ---- the micro-batcher ----

async def batcher(run_batch: Callable[[list], list], **options: Any) -> MicroBatcher:
    """A started MicroBatcher over `run_batch` (one item per batch, no wait, unless `options` say otherwise)."""
    batching = MicroBatcher(run_batch, **{"max_batch": 1, "max_wait_s": 0.0, **options})
    batching.start()
    return batching


def stop_iteration_in_place(items: list[int]) -> list:
    """A batch function whose item 7 fails with StopIteration, which a future cannot carry."""
    return [StopIteration() if item == 7 else item * 10 for item in items]


def raises_stop_iteration(items: list[int]) -> list:
    """A batch function that raises StopIteration on item 7, as a `next()` deep in a model might."""
    if 7 in items:
        raise StopIteration
    return [item * 10 for item in items]


@pytest.mark.parametrize("run_batch", [stop_iteration_in_place, raises_stop_iteration], ids=["in place", "raised"])
def test_a_stop_iteration_from_the_model_fails_its_caller_and_the_batcher_goes_on(run_batch):
    async def main() -> tuple[BaseException, int]:
        batching = await batcher(run_batch)
        with pytest.raises(RuntimeError) as caught:
            await asyncio.wait_for(batching.submit(7), WAIT_S)
        after = await asyncio.wait_for(batching.submit(2), WAIT_S)
        await batching.stop()
        return caught.value, after

    error, after = asyncio.run(main())
    assert "StopIteration" in str(error) and "\n" not in str(error) and after == 20


def test_a_worker_that_dies_fails_its_callers_instead_of_leaving_them_waiting():
    async def broken_run(batch: list) -> None:
        raise RuntimeError("a bug in the worker")

    async def main() -> tuple[list, str]:
        batching = await batcher(lambda items: items, max_batch=2, max_wait_s=WAIT_S)
        batching._run = broken_run
        outcomes = await asyncio.wait_for(asyncio.gather(*(batching.submit(i) for i in range(3)),
                                                         return_exceptions=True), WAIT_S)
        with pytest.raises(RuntimeError) as later:
            await asyncio.wait_for(batching.submit(4), WAIT_S)
        await batching.stop()
        return outcomes, str(later.value)

    outcomes, later = asyncio.run(main())
    assert all(isinstance(o, RuntimeError) for o in outcomes) and "a bug in the worker" in str(outcomes[0]), outcomes
    assert "worker is not running" in later


def test_a_batch_waits_max_wait_from_when_it_opens_so_queued_callers_are_joined():
    clock, release, seen = Clock(), threading.Event(), []

    def held(items: list[int]) -> list[int]:
        seen.append(list(items))
        if 1 in items:
            release.wait(WAIT_S)  # the first batch runs until the test lets it finish
        return items

    async def main() -> None:
        batching = await batcher(held, clock=clock, max_batch=2, max_wait_s=60.0)
        first = asyncio.gather(batching.submit(1), batching.submit(2))  # full at once: runs without waiting
        while not batching.batch:
            await asyncio.sleep(0)
        late = asyncio.ensure_future(batching.submit(3))  # queues while the first batch runs
        await asyncio.sleep(0)
        clock.now += 61.0  # more than max_wait after 3 arrived, before its batch opens
        release.set()
        await asyncio.wait_for(first, WAIT_S)
        for _ in range(100):  # the worker opens the next batch with 3 and waits for more
            await asyncio.sleep(0)
        assert await asyncio.wait_for(asyncio.gather(late, batching.submit(4)), WAIT_S) == [3, 4]
        await batching.stop()

    asyncio.run(main())
    assert seen == [[1, 2], [3, 4]]


# ---- the serve config ----

def refused(tmp_path: Path, **fields) -> str:
    """The one-line ConfigError loading a serve config with `fields` gives."""
    with pytest.raises(ConfigError) as caught:
        load_settings(write_settings(tmp_path, **fields))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_two_keys_with_one_hash_are_refused_naming_both(tmp_path):
    keys = [{"name": "alice", "sha256": hash_key("sk-shared")}, {"name": "bob", "sha256": hash_key("sk-shared")}]
    message = refused(tmp_path, api_keys=keys)
    assert "api_keys: alice and bob have the same sha256" in message and "mor serve hash-key" in message


@pytest.mark.parametrize("origin", ["example.com", "https://a.example/", "https://a.example/app", "http://a:port"])
def test_cors_origins_that_are_not_origins_are_refused(tmp_path, origin):
    message = refused(tmp_path, cors_origins=["https://ok.example", origin])
    assert f"cors_origins[1]: {origin!r} is not an origin" in message and "scheme://host[:port]" in message


def test_origins_with_ports_ipv6_hosts_or_a_star_are_accepted(tmp_path):
    origins = ["*", "http://localhost:3000", "http://[::1]:8000", "https://app.example.com"]
    assert load_settings(write_settings(tmp_path, cors_origins=origins)).cors_origins == origins


@pytest.mark.parametrize("where", ["rate_limit", "api_keys"])
@pytest.mark.parametrize("rate", [float("inf"), float("nan"), 0.0])
def test_rate_limits_that_are_not_finite_and_positive_are_refused(tmp_path, where, rate):
    limit = {"requests_per_s": rate, "burst": 1}
    if where == "rate_limit":
        message = refused(tmp_path, rate_limit=limit)
    else:
        message = refused(tmp_path, api_keys=[{"name": "main", "sha256": hash_key("k"), "rate_limit": limit}])
    field = "rate_limit" if where == "rate_limit" else "api_keys.0.rate_limit"
    assert f"{field}.requests_per_s: must be" in message, message


def test_a_rate_so_slow_its_wait_would_overflow_is_refused_naming_the_field(tmp_path):
    message = refused(tmp_path, failed_auth_limit={"requests_per_s": 1e-320, "burst": 1})
    assert "failed_auth_limit.requests_per_s: must be >= 1e-06, got 1e-320" in message, message


@pytest.mark.parametrize("server,field", [({"graceful_shutdown_s": float("inf")}, "server.graceful_shutdown_s"),
                                          ({"graceful_shutdown_s": float("nan")}, "server.graceful_shutdown_s"),
                                          ({"host": ""}, "server.host")], ids=["inf-grace", "nan-grace", "empty-host"])
def test_server_settings_that_cannot_work_are_refused(tmp_path, server, field):
    assert f"{field}: " in refused(tmp_path, server=server)
