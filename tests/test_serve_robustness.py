"""mor serve where things go wrong: every expert in cooldown, unreadable checkpoints, a slow shutdown, internal URLs
in error messages, anonymous callers without a rate limit, invented HTTP methods and cross-origin browsers
(in-process through httpx's ASGI transport with the app's lifespan, or on a real uvicorn server where shutdown itself
is tested)."""

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import save_file

from mor.errors import CheckpointError, ConfigError
from mor.serve import create_app, load_settings, served_model
from mor.serve.errors import public
from mor.serve.metrics import METHODS
from mor.serve.service import Service
from mor.system.store import StateStore
from mor.train.checkpoint import CONFIG, LATEST, STATE, WEIGHTS, resolve
from test_serve_support import KEY, Clock, serve, write_settings

AUTH = {"Authorization": f"Bearer {KEY}"}
ASK = {"messages": [{"role": "user", "content": "hello"}]}


def broken(question: str) -> str:
    """An expert that always fails."""
    raise RuntimeError("broken on purpose")


def echo(question: str) -> tuple[str, float]:
    """An expert that answers at once."""
    return f"echo: {question}", 0.9


async def stuck(question: str) -> tuple[str, float]:
    """An expert far slower than the shutdown budget of the tests."""
    await asyncio.sleep(5)
    return "too late", 0.9


def system_file(folder: Path, experts: list[dict], **sections: Any) -> Path:
    """A mor.system YAML in `folder` with just `experts` and `sections`."""
    path = folder / "system.yaml"
    path.write_text(yaml.safe_dump({"experts": experts, **sections}, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def started(path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Service]]:
    """The app of serve config `path`, started (lifespan) and reached in-process, with the test key."""
    app = create_app(load_settings(path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://mor", headers=AUTH, timeout=30) as client:
            yield client, app.state.service


def run(path: Path, body: Callable[[httpx.AsyncClient, Service], Coroutine[Any, Any, Any]]) -> Any:
    """`body(client, service)` against a started app of serve config `path`."""
    async def main() -> Any:
        async with started(path) as (client, service):
            return await body(client, service)
    return asyncio.run(main())


def one_line_error(response: httpx.Response) -> dict:
    """The error body, checked to be one line without a traceback, a temporary path or a URL."""
    assert "Traceback" not in response.text and "/tmp/" not in response.text and "://" not in response.text
    error = response.json()["error"]
    assert "\n" not in error["message"], error
    return error


# ---- finding 5: /v1/route while every expert is in cooldown ----

def test_route_answers_503_with_retry_after_while_every_expert_is_in_cooldown(tmp_path):
    system = system_file(tmp_path, [{"name": "b", "kind": "callable", "function": "test_serve_robustness:broken"}],
                         breaker={"failures_to_open": 1, "cooldown_s": 60})

    async def body(client: httpx.AsyncClient, service: Service) -> tuple[httpx.Response, httpx.Response, dict]:
        chat = await client.post("/v1/chat/completions", json={"model": "mor", **ASK})
        route = await client.post("/v1/route", json=ASK)
        return chat, route, (await client.get("/openapi.json")).json()

    chat, route, schema = run(write_settings(tmp_path, system=str(system)), body)
    assert chat.status_code == 502
    error = one_line_error(route)
    assert route.status_code == 503 and error["code"] == "no_expert_available", route.text
    assert error["type"] == "unavailable_error" and "every expert is in cooldown" in error["message"]
    assert 50 <= int(route.headers["retry-after"]) <= 60
    assert "503" in schema["paths"]["/v1/route"]["post"]["responses"]


# ---- a caller that leaves mid-stream: the experts it started are still counted ----

async def slow(question: str) -> tuple[str, float]:
    """An expert that takes a moment, so a streaming caller can leave before it answers."""
    await asyncio.sleep(0.3)
    return "slow answer", 0.9


async def leaving_stream(app: Any, leave_after_s: float) -> None:
    """POST a streamed chat completion straight to the ASGI app and disconnect after `leave_after_s`."""
    body = json.dumps({"model": "mor", "stream": True, **ASK}).encode()
    gone, sent = asyncio.Event(), False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        pass

    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {KEY}".encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("mor", 80)}
    call = asyncio.create_task(app(scope, receive, send))
    await asyncio.sleep(leave_after_s)
    gone.set()
    await call


def test_an_expert_call_a_streaming_caller_left_is_still_counted_in_the_metrics(tmp_path):
    system = system_file(tmp_path, [{"name": "slow", "kind": "callable", "function": "test_serve_robustness:slow"}])

    async def main() -> tuple[int, str]:
        app = create_app(load_settings(write_settings(tmp_path, system=str(system))))
        async with app.router.lifespan_context(app):
            await leaving_stream(app, leave_after_s=0.05)
            await asyncio.sleep(0.6)  # the shielded call finishes after its caller left
            service = app.state.service
            return service.system.stats["slow"].calls, service.metrics.render().decode()

    calls, metrics = asyncio.run(main())
    assert calls == 1
    assert 'mor_expert_activations_total{expert="slow",outcome="ok"} 1.0' in metrics, metrics


def test_expert_calls_are_counted_when_every_expert_failed(tmp_path):
    experts = [{"name": n, "kind": "callable", "function": "test_serve_robustness:broken"} for n in ("a", "b")]
    system = system_file(tmp_path, experts, router={"top_k": 2})

    async def body(client: httpx.AsyncClient, service: Service) -> tuple[list[int], str]:
        codes = [(await client.post("/v1/chat/completions", json={"model": "mor", **ASK, **extra})).status_code
                 for extra in ({}, {"stream": True})]
        return codes, service.metrics.render().decode()

    codes, metrics = run(write_settings(tmp_path, system=str(system)), body)
    assert codes == [502, 502]  # a stream starts only once there is content: before it, a failure is a plain 502
    for name in ("a", "b"):
        assert f'mor_expert_activations_total{{expert="{name}",outcome="error"}} 2.0' in metrics, metrics


def test_the_routers_selection_is_counted_when_every_expert_failed_but_not_for_route(tmp_path):
    system = system_file(tmp_path, [{"name": "b", "kind": "callable", "function": "test_serve_robustness:broken"}])

    async def body(client: httpx.AsyncClient, service: Service) -> tuple[list[int], str]:
        codes = [(await client.post("/v1/chat/completions", json={"model": "mor", **ASK, **extra})).status_code
                 for extra in ({}, {"stream": True})]
        codes.append((await client.post("/v1/route", json=ASK)).status_code)  # explains; selects for no answer
        return codes, service.metrics.render().decode()

    codes, metrics = run(write_settings(tmp_path, system=str(system)), body)
    assert codes == [502, 502, 200]
    assert 'mor_expert_selected_total{expert="b"} 2.0' in metrics, metrics


# ---- a legacy `functions` array counts as carrying tools ----

def test_a_legacy_functions_array_routes_like_tools(tmp_path):
    system = system_file(tmp_path, [{"name": "chat", "kind": "callable", "function": "builtins:str.upper",
                                     "hints": {"keywords": ["weather"]}},
                                    {"name": "agent", "kind": "callable", "function": "builtins:str.lower",
                                     "capabilities": ["tool"]}], router={"default": "chat"})
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    functions = [{"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]

    async def body(client: httpx.AsyncClient, service: Service) -> list[httpx.Response]:
        return [await client.post("/v1/route", json={"messages": messages}),
                await client.post("/v1/route", json={"messages": messages, "functions": functions}),
                await client.post("/v1/chat/completions", json={"model": "mor", "messages": messages,
                                                                "functions": functions})]

    plain, legacy, chat = run(write_settings(tmp_path, system=str(system)), body)
    assert plain.json()["selected"] == ["chat"]
    assert legacy.json()["selected"] == ["agent"] and "request carries tools" in legacy.json()["explanation"]
    assert chat.json()["choices"][0]["message"]["content"] == "weather in oslo?"


# ---- finding 8: checkpoints that cannot be read leave their model unready ----

def fake_checkpoint(folder: Path, config: str) -> Path:
    """A step folder with loadable weights and state beside `config` as its config.yaml."""
    folder.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, folder / WEIGHTS)
    torch.save({}, folder / STATE)
    (folder / CONFIG).write_text(config)
    return folder


def test_unreadable_checkpoints_leave_their_models_unready_instead_of_stopping_start_up(tmp_path, caplog):
    bad_yaml = fake_checkpoint(tmp_path / "bad-yaml", "model: [unclosed\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LATEST).write_text("[]")
    models = [{"name": "bad-yaml", "checkpoint": str(bad_yaml)}, {"name": "bad-pointer", "checkpoint": "run"}]

    async def body(client: httpx.AsyncClient, service: Service) -> tuple[httpx.Response, httpx.Response]:
        predict = await client.post("/v1/predict", json={"model": "bad-yaml", "inputs": [[1.0]]})
        return await client.get("/readyz"), predict

    with caplog.at_level(logging.ERROR, logger="mor.serve"):
        ready, predict = run(write_settings(tmp_path, system=None, models=models), body)
    checks = ready.json()["checks"]
    assert ready.status_code == 503 and "Traceback" not in ready.text and str(tmp_path) not in ready.text
    assert "config.yaml: not valid YAML at line 2, column 1" in checks["model:bad-yaml"]
    assert "the checkpoint is damaged: use another step-* folder or train again" in checks["model:bad-yaml"]
    assert "unreadable pointer file" in checks["model:bad-pointer"]
    assert predict.status_code == 503 and one_line_error(predict)["code"] == "model_unavailable"
    assert any("bad-yaml" in r.getMessage() and "not valid YAML" in r.getMessage() for r in caplog.records)


def test_an_unforeseen_failure_while_loading_leaves_the_model_unready_and_logs_its_traceback(tmp_path, caplog,
                                                                                          monkeypatch):
    def broken(checkpoint, where):
        raise RuntimeError(f"a bug while loading {tmp_path}/secret")

    monkeypatch.setattr(served_model, "TrainedModel", broken)
    models = [{"name": "buggy", "checkpoint": str(tmp_path)}]

    async def body(client: httpx.AsyncClient, service: Service) -> httpx.Response:
        return await client.get("/readyz")

    with caplog.at_level(logging.ERROR, logger="mor.serve"):
        ready = run(write_settings(tmp_path, system=None, models=models), body)
    reason = ready.json()["checks"]["model:buggy"]
    assert ready.status_code == 503 and "cannot load it (RuntimeError: a bug while loading" in reason
    assert str(tmp_path) not in reason and "Traceback" not in ready.text
    assert any(r.exc_info and "buggy" in r.getMessage() for r in caplog.records)  # the traceback is logged


@pytest.mark.parametrize("pointer", ["[]", '"step-1"', '{"dir": 5}', '{"dir": null}'])
def test_a_pointer_file_that_is_json_but_not_a_pointer_is_a_checkpoint_error(tmp_path, pointer):
    (tmp_path / LATEST).write_text(pointer)
    with pytest.raises(CheckpointError, match="unreadable pointer file"):
        resolve(tmp_path)


# ---- finding 10: shutdown is bounded by server.graceful_shutdown_s ----

def test_shutdown_cancels_work_left_after_the_graceful_period_and_still_saves_state(tmp_path):
    system = system_file(tmp_path, [{"name": "stuck", "kind": "callable", "function": "test_serve_robustness:stuck"}],
                         state={"path": str(tmp_path / "state.db")})
    server = serve(write_settings(tmp_path, system=str(system), server={"graceful_shutdown_s": 0.3}))
    with server:
        stats = server.service.system.stats["stuck"]
        for stream in (False, True):
            threading.Thread(target=_ask, args=(server.root, stream), daemon=True).start()
        deadline = time.monotonic() + 10
        while stats.in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stats.in_flight == 2
        began = time.monotonic()
        server.server.should_exit = True  # what SIGTERM does
        server.thread.join(timeout=10)
        took = time.monotonic() - began
    assert took < 3, f"shutdown took {took:.1f} s: uvicorn's 1 s, then 0.3 s, not the expert's 5 s"
    assert stats.in_flight == 0  # the cancelled calls gave their load back
    store = StateStore(tmp_path / "state.db")
    assert store.load()["stuck"].calls == 2
    store.close()


def _ask(root: str, stream: bool) -> None:
    """A chat request that the server's shutdown cuts off (its outcome does not matter)."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(root + "/v1/chat/completions", headers=AUTH, timeout=30,
                   json={"model": "mor", "stream": stream, **ASK})


# ---- finding 11: URLs never reach clients ----

@pytest.mark.parametrize("message,shown", [
    ("POST http://10.0.0.7:8000/v1/chat/completions failed", "POST <url> failed"),
    ("open /etc/mor/key.yaml failed; GET https://gpu.corp:8443/health: 503", "open …/key.yaml failed; GET <url>: 503"),
    ("upstream at (http://[fd00::7]:9000/v1).", "upstream at (<url>)."),
    ("see /v1/models for the names", "see /v1/models for the names"),
    ("/srv/home dir/j+doe@corp/~x/run=1,lr=0.1/best: no checkpoint here; see /v1/models",
     "…/best: no checkpoint here; see /v1/models"),
])
def test_public_messages_hide_urls_and_paths(message, shown):
    assert public(message) == shown


def test_public_takes_linear_time_on_a_long_run_of_scheme_characters():
    text = "a." * 500_000  # 1 MB: a URL match tried from each of its characters took minutes
    began = time.perf_counter()
    assert public(f"model: {text!r} does not exist") == f"model: {text!r} does not exist"
    assert time.perf_counter() - began < 1


LONG = "a." * 20_000  # a name of 40 kB (httpx sends URLs up to 64 kB)


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v1/chat/completions", {"model": LONG, **ASK}),
    ("POST", "/v1/predict", {"model": LONG, "inputs": [[1]]}),
    ("GET", "/v1/models/" + LONG, None),
    ("GET", "/static/" + LONG, None),
], ids=["chat", "predict", "models", "static"])
def test_an_over_long_name_is_cut_short_in_the_error(tmp_path, method, path, body):
    async def call(client: httpx.AsyncClient, service: Service) -> httpx.Response:
        return await client.request(method, path, json=body)

    response = run(write_settings(tmp_path), call)
    message = one_line_error(response)["message"]
    assert response.status_code == 404 and "'a.a.a." in message and "…" in message and len(message) < 200, message


def test_an_upstream_url_is_not_shown_in_a_failed_experts_error(tmp_path):
    with socket.socket() as closed:  # a port nothing listens on once the socket is closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    experts = [{"name": "llm", "kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m", "retries": 0,
                "hints": {"keywords": ["hello"]}},
               {"name": "echo", "kind": "callable", "function": "test_serve_robustness:echo"}]
    path = write_settings(tmp_path, system=str(system_file(tmp_path, experts)))

    async def body(client: httpx.AsyncClient, service: Service) -> httpx.Response:
        return await client.post("/v1/chat/completions", json={"model": "mor", **ASK})

    reply = run(path, body)
    (failed,) = [a for a in reply.json()["mor"]["answers"] if a["expert"] == "llm"]
    assert reply.status_code == 200 and "POST <url> failed" in failed["error"], failed
    assert str(port) not in reply.text and "127.0.0.1" not in reply.text


def test_readiness_and_503s_name_a_missing_checkpoint_by_its_field_not_its_path(tmp_path):
    folder = tmp_path / "home dir" / "j+doe@corp" / "runs"
    path = write_settings(tmp_path, system=None, models=[{"name": "m1", "checkpoint": str(folder / "main")}])

    async def body(client: httpx.AsyncClient, service: Service) -> tuple[httpx.Response, httpx.Response]:
        return await client.get("/readyz"), await client.post("/v1/predict", json={"model": "m1", "inputs": [[1]]})

    ready, predicted = run(path, body)
    reason = "models[0].checkpoint: no checkpoint here; give a run folder (with latest.json), RUN/best, or a step-*"
    assert ready.status_code == 503 and ready.json()["checks"]["model:m1"].startswith(reason), ready.text
    message = one_line_error(predicted)["message"]
    assert predicted.status_code == 503 and message.startswith(f"model 'm1' is not available: {reason}"), message
    for response in (ready, predicted):
        assert "home dir" not in response.text and "doe" not in response.text and "runs" not in response.text


def test_a_body_that_is_not_json_gets_401_without_a_key_and_counts_against_the_failure_limit(tmp_path):
    path = write_settings(tmp_path, system=None, failed_auth_limit={"requests_per_s": 0.5, "burst": 2})
    broken, deep = '{"model": "tiny", ', '{"inputs": ' + "[" * 3000 + "]" * 3000 + "}"  # JSON's error; FastAPI's
    bare = {"Authorization": "", "Content-Type": "application/json"}
    keyed = {**AUTH, "Content-Type": "application/json"}  # the right key, from an address already refused

    async def body(client: httpx.AsyncClient, service: Service) -> list[tuple[int, str]]:
        service.limiter.clock = Clock()
        replies = [await client.post("/v1/predict", content=content, headers=headers)
                   for content, headers in [(broken, bare), (deep, bare), (broken, bare), (broken, keyed)]]
        return [(r.status_code, r.json()["error"]["code"]) for r in replies]

    assert run(path, body) == [(401, "missing_api_key"), (401, "missing_api_key"), (429, "rate_limit_exceeded"),
                               (429, "rate_limit_exceeded")]


# ---- finding 12: anonymous callers need a rate limit ----

def test_anonymous_callers_without_a_rate_limit_are_refused_by_the_config(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_settings(write_settings(tmp_path, system=None, allow_anonymous=True))
    message = str(caught.value)
    assert "allow_anonymous: true without a rate_limit" in message and "set rate_limit" in message
    assert "\n" not in message
    path = write_settings(tmp_path, system=None, allow_anonymous=True, rate_limit={"requests_per_s": 0.01, "burst": 3})

    async def body(client: httpx.AsyncClient, service: Service) -> list[int]:
        return [(await client.get("/v1/models", headers={"Authorization": ""})).status_code for _ in range(5)]

    assert run(path, body) == [200, 200, 200, 429, 429]


# ---- key guessing: one address's failures, counted on a clock the test holds ----

def test_an_address_over_its_failure_limit_is_refused_even_with_the_right_key_until_a_token_is_back(tmp_path):
    path = write_settings(tmp_path, system=None, failed_auth_limit={"requests_per_s": 0.5, "burst": 3})
    guess = {"Authorization": "Bearer sk-guess"}

    async def body(client: httpx.AsyncClient, service: Service) -> list[tuple[int, str]]:
        clock = service.limiter.clock = Clock()
        codes = []
        for headers in [guess] * 4 + [AUTH] + ["later"] + [AUTH, guess, AUTH]:
            if headers == "later":
                clock.now += 2.0  # one token back at 0.5 per second
                continue
            response = await client.get("/v1/models", headers=headers)
            codes.append((response.status_code, response.headers.get("retry-after", "")))
        return codes

    assert run(path, body) == [(401, ""), (401, ""), (401, ""), (429, "2"), (429, "2"), (200, ""), (401, ""),
                               (429, "2")], "the right key among the 429s would tell a guess at full speed"


# ---- finding 14: invented HTTP methods share one metric label ----

def test_invented_http_methods_share_the_metric_label_other(tmp_path):
    async def body(client: httpx.AsyncClient, service: Service) -> str:
        for i in range(30):
            await client.request(f"X{i}", "/v1/models", headers={"Authorization": ""})
        await client.get("/v1/models")
        return (await client.get("/metrics")).text

    text = run(write_settings(tmp_path, system=None), body)
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == "mor_requests_total"]
    assert {s.labels["method"] for s in samples} <= METHODS | {"other"}
    assert sum(s.value for s in samples if s.labels["method"] == "other") == 30
    assert sum(s.value for s in samples if s.labels["method"] == "GET") >= 1


# ---- CORS is off unless configured (issue 6, security) ----

def cors_replies(path: Path, origin: str) -> tuple[httpx.Response, httpx.Response]:
    """A cross-origin GET of /v1/models and the browser's preflight of a chat POST, both from `origin`."""
    async def body(client: httpx.AsyncClient, service: Service) -> tuple[httpx.Response, httpx.Response]:
        get = await client.get("/v1/models", headers={"Origin": origin})
        preflight = await client.options("/v1/chat/completions", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        return get, preflight

    return run(path, body)


def test_cors_is_off_unless_configured(tmp_path):
    get, preflight = cors_replies(write_settings(tmp_path, system=None), "https://example.com")
    assert get.status_code == 200 and preflight.status_code != 200  # no CORS handler answers the preflight
    for reply in (get, preflight):
        assert not any(h.startswith("access-control-") for h in reply.headers), reply.headers


def test_cors_allows_only_the_configured_origins(tmp_path):
    path = write_settings(tmp_path, system=None, cors_origins=["https://example.com"])
    get, preflight = cors_replies(path, "https://example.com")
    assert get.status_code == 200 and get.headers["access-control-allow-origin"] == "https://example.com"
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == "https://example.com"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    get, preflight = cors_replies(path, "https://evil.example")
    assert get.status_code == 200 and preflight.status_code == 400  # Starlette: "Disallowed CORS origin"
    for reply in (get, preflight):
        assert "access-control-allow-origin" not in reply.headers, reply.headers
