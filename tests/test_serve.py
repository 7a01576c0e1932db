"""mor serve on a real uvicorn server on loopback: the official `openai` client (plain and streaming), keys,
limits, validation errors, fallbacks, routing explanations, micro-batched predictions, metrics and the page."""

import asyncio
import gc
import json
import logging
import socket
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from mor import cli
from mor.errors import ConfigError, MorError
from mor.serve import chat, hash_key, load_settings
from mor.system.experts.predictor import TrainedModel
from mor.system.store import StateStore
from test_serve_support import KEY, ROOT, serve, train_tiny, write_settings

LIMITED = "sk-test-limited"
BODY_LIMIT = 262_144  # room for a body nested past every Python's JSON recursion limit (3.12.3: over 3,000)
MATH = "solve 2x + 3 = 11"


def broken(question: str) -> str:
    """An expert that always fails (for the fallback test)."""
    raise RuntimeError("broken on purpose")


async def slow(question: str) -> tuple[str, float]:
    """An expert that takes half a second (for the graceful-shutdown test)."""
    await asyncio.sleep(0.5)
    return f"slowly: {question}", 0.9


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("tiny") / "run")


@pytest.fixture(scope="module")
def server(tmp_path_factory, run_dir):
    folder = tmp_path_factory.mktemp("serve")
    system = yaml_system(folder, [{"name": "flaky", "kind": "callable", "function": "test_serve:broken",
                                   "hints": {"keywords": ["flaky"]}}])
    path = write_settings(
        folder, system=str(system), max_body_bytes=BODY_LIMIT,
        api_keys=[{"name": "main", "sha256": hash_key(KEY)},
                  {"name": "limited", "sha256": hash_key(LIMITED), "rate_limit": {"requests_per_s": 0.2, "burst": 2}}],
        models=[{"name": "tiny", "checkpoint": str(run_dir)}, {"name": "missing", "checkpoint": "no-such-run"}],
        batching={"max_batch": 64, "max_wait_ms": 20})
    with serve(path) as running:
        yield running


def yaml_system(folder, extra: list[dict], **sections):
    """The repository's example system (configs/serve-system.yaml) with `extra` experts added."""
    import yaml

    content = yaml.safe_load((ROOT / "configs" / "serve-system.yaml").read_text())
    for spec in content["experts"]:
        if spec["kind"] == "retrieval":
            spec["folder"] = str(ROOT / "docs")
    content["experts"] += extra
    content.update(sections)
    path = folder / "system.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=30)


def post(server, path: str, body, key: str | None = KEY, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, str | bytes) else json.dumps(body)
    return httpx.post(server.root + path, content=content, headers={"Content-Type": "application/json", **headers},
                      timeout=30, **kwargs)


def clean(response: httpx.Response) -> dict:
    """The error body, checked to hold one line and nothing of the server's insides."""
    text = response.text
    assert "Traceback" not in text and 'File "' not in text and str(ROOT) not in text and "/tmp/" not in text, text
    error = response.json()["error"]
    assert "\n" not in error["message"] and error["type"]
    return error


# ---- the openai client, unchanged but for base_url and api_key ----

def test_the_openai_client_gets_a_routed_answer_with_the_mor_extension(client):
    completion = client.chat.completions.create(model="mor", messages=[{"role": "user", "content": MATH}])
    assert completion.choices[0].message.content == "x = 4" and completion.choices[0].finish_reason == "stop"
    mor = completion.model_extra["mor"]
    assert mor["experts"] == ["sympy"] and mor["answered_by"] == "sympy" and mor["confidence"] > 0.9
    assert mor["steps"] >= 1 and mor["rounds"] == 0 and not mor["fallback"] and mor["cost"]["latency_s"] > 0
    assert {s["name"] for s in mor["scores"]} == {"sympy", "docs", "guide", "flaky"}
    assert {m.id for m in client.models.list()} == {"mor", "tiny", "missing"}
    assert client.models.retrieve("tiny").model_extra["kind"] == "predict"


def test_the_openai_client_streams_the_same_answer(client):
    question = [{"role": "user", "content": "what does the reflection halting rule do"}]
    whole = client.chat.completions.create(model="mor", messages=question)
    chunks = list(client.chat.completions.create(model="mor", messages=question, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len(chunks) > 3
    assert chunks[0].choices[0].delta.role == "assistant"
    last = [c for c in chunks if c.choices][-1]
    assert last.choices[0].finish_reason == "stop" and last.model_extra["mor"]["answered_by"] == "docs"
    assert chunks[-1].usage is not None and not chunks[-1].choices


def test_a_bug_before_a_stream_has_content_is_a_plain_500(server, monkeypatch):
    def route(request, stats):
        raise RuntimeError(f"a bug in {ROOT}/router.py")

    monkeypatch.setattr(server.service.system.router, "route", route)
    ask = {"model": "mor", "messages": [{"role": "user", "content": MATH}]}
    whole, streamed = (post(server, "/v1/chat/completions", {**ask, "stream": stream}) for stream in (False, True))
    assert whole.status_code == streamed.status_code == 500 and clean(whole)["code"] == "internal_error"
    assert streamed.json() == whole.json()


def test_a_bug_while_streaming_ends_the_stream_with_an_error_event_then_done(server, client, monkeypatch, caplog):
    def extension(reply):
        raise RuntimeError(f"a bug in {ROOT}/views.py")

    monkeypatch.setattr(chat, "extension", extension)  # the last chunk's: after the answer's content was sent
    ask = {"model": "mor", "messages": [{"role": "user", "content": MATH}], "stream": True}
    whole = post(server, "/v1/chat/completions", {**ask, "stream": False})
    assert whole.status_code == 500 and clean(whole)["code"] == "internal_error"
    with caplog.at_level(logging.ERROR, logger="mor.serve"), \
            httpx.stream("POST", server.root + "/v1/chat/completions", json=ask, timeout=30,
                         headers={"Authorization": f"Bearer {KEY}"}) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert response.status_code == 200 and events[-1] == "[DONE]", events
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(events[1])["choices"][0]["delta"]["content"]  # the answer had started
    assert json.loads(events[-2]) == whole.json()  # the body a whole reply gets for the same bug
    assert any(r.exc_info and "a bug in" in str(r.exc_info[1]) for r in caplog.records)  # the traceback is logged
    with pytest.raises(openai.APIError, match="internal error; it has been logged"):
        list(client.chat.completions.create(model="mor", messages=ask["messages"], stream=True))
    metrics = httpx.get(server.root + "/metrics").text
    assert metric(metrics, "mor_stream_errors_total", endpoint="/v1/chat/completions", code="internal_error") == 2


def test_a_failing_expert_falls_back_instead_of_failing_the_request(client):
    completion = client.chat.completions.create(model="mor", messages=[{"role": "user", "content": "a flaky one"}])
    mor = completion.model_extra["mor"]
    assert mor["experts"] == ["flaky"] and mor["answered_by"] != "flaky" and completion.choices[0].message.content
    assert any(a["expert"] == "flaky" and a["error"] == "RuntimeError: broken on purpose" for a in mor["answers"])


# ---- keys and limits ----

def test_requests_without_a_valid_key_get_401(server):
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        openai.OpenAI(base_url=server.url, api_key="sk-wrong", max_retries=0).models.list()
    for key in (None, "sk-wrong"):
        response = post(server, "/v1/chat/completions", {"model": "mor", "messages": []}, key=key)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert clean(response)["code"] == ("missing_api_key" if key is None else "invalid_api_key")
    assert httpx.get(server.root + "/healthz").status_code == 200  # operations endpoints take no key


def test_the_401_for_a_missing_key_says_how_to_send_one_without_being_redacted(server):
    response = httpx.get(server.root + "/v1/models")
    message = "missing API key; send the header 'Authorization: Bearer <your key>'"
    assert response.status_code == 401 and clean(response)["message"] == message


def test_a_body_over_the_limit_gets_413_by_length_or_while_streamed(server):
    def counted() -> float:  # refused before routing, yet counted under the endpoint it was sent to
        text = httpx.get(server.root + "/metrics").text
        return metric(text, "mor_errors_total", endpoint="/v1/chat/completions", status="413")

    before = counted()
    body = json.dumps({"model": "mor", "messages": [{"role": "user", "content": "x" * BODY_LIMIT}]})
    response = post(server, "/v1/chat/completions", body)
    assert response.status_code == 413 and f"over the limit of {BODY_LIMIT} bytes" in clean(response)["message"]

    def chunked():
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000].encode()
    response = httpx.post(server.root + "/v1/chat/completions", content=chunked(),
                          headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 413 and clean(response)["code"] == "body_too_large"
    assert counted() == before + 2
    assert post(server, "/v1/nowhere", body).status_code == 413
    assert metric(httpx.get(server.root + "/metrics").text, "mor_errors_total", endpoint="unmatched", status="413") >= 1


def test_a_caller_over_its_rate_gets_429_and_others_do_not(server):
    codes = [httpx.get(server.root + "/v1/models", headers={"Authorization": f"Bearer {LIMITED}"}) for _ in range(4)]
    assert [r.status_code for r in codes] == [200, 200, 429, 429]
    assert "rate limit exceeded for limited" in clean(codes[2])["message"] and int(codes[2].headers["retry-after"]) >= 1
    assert httpx.get(server.root + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_guessing_keys_from_one_address_gets_429_after_the_failure_burst(server):
    def guess():
        return httpx.get(server.root + "/v1/models", headers={"Authorization": "Bearer sk-guess"})
    codes = [guess() for _ in range(25)]  # the default failed_auth_limit: burst 20, 1 per second
    refused = next(r for r in codes if r.status_code != 401)  # exact counts: test_serve_robustness, on a held clock
    assert refused.status_code == 429
    assert "too many requests without a valid API key from 127.0.0.1" in clean(refused)["message"]
    time.sleep(int(refused.headers["retry-after"]))  # refilled: the right key works again
    assert httpx.get(server.root + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


# ---- validation ----

BAD = [
    ("/v1/predict", '{"model": "tiny", "inputs": [[[1, 1], [0, NaN]]]}', 400, "inputs[0][1][1]", "nan is not a finite"),
    ("/v1/predict", '{"model": "tiny", "inputs": [[[1, Infinity]]]}', 400, "inputs[0][0][1]", "inf is not a finite"),
    ("/v1/predict", '{"model": "tiny", "inputs": [[[1, 1e999]]]}', 400, "inputs[0][0][1]", "inf is not a finite"),
    ("/v1/predict", {"model": "tiny", "inputs": [[1, 1]]}, 400, "inputs[0]", "got shape [2]; this model takes a seq"),
    ("/v1/predict", {"model": "tiny", "inputs": [[["1", 1]]]}, 400, "inputs[0][0][0]", "valid number, got '1'"),
    ("/v1/predict", {"model": "tiny", "inputs": [[[True, 1]]]}, 400, "inputs[0][0][0]", "valid number, got True"),
    ("/v1/chat/completions", {"model": "mor", "stream": "yes", "messages": [{"role": "user", "content": "hi"}]}, 400,
     "stream", "must be a valid boolean, got 'yes'"),
    ("/v1/predict", {"model": "tiny", "inputs": [[[1, 1, 1]]]}, 400, "inputs[0]", "got shape [1, 3]"),
    ("/v1/predict", {"model": "tiny", "inputs": [[[1, 1], [1]]]}, 400, "inputs[0]", "rows of different lengths"),
    ("/v1/predict", {"model": "tiny", "inputs": [[["a", 1]]]}, 400, "inputs[0][0][0]", "must be a valid number"),
    ("/v1/predict", {"model": "tiny", "inputs": []}, 400, "inputs", "inputs: empty; send at least 1"),
    ("/v1/predict", {"model": "tiny", "inputs": [[[1, 1]], [[3e38, 3e38]] * 3]}, 422, "inputs[1]",  # overflows inside
     "inputs[1]: model 'tiny' gives no finite output for it"),
    ("/v1/predict", {"model": "gpt", "inputs": [[1]]}, 404, "model", "'gpt' is not a prediction model here"),
    ("/v1/predict", {"inputs": [[1]]}, 400, "model", "model: required"),
    ("/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model",
     "'gpt-4o' does not exist; the chat model is 'mor'"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}, 400, "model",
     "is a prediction model"),
    ("/v1/chat/completions", {"model": "mor", "messages": []}, 400, "messages", "messages: empty"),
    ("/v1/chat/completions", {"model": "mor", "messages": [{"role": "user", "content": " "}]}, 400, "messages",
     "every message is empty"),
    ("/v1/chat/completions", {"model": "mor", "messages": [{"role": "robot", "content": "hi"}]}, 400,
     "messages[0].role", "must be 'system', 'developer'"),
    ("/v1/chat/completions", {"model": "mor", "n": 2, "messages": [{"role": "user", "content": "hi"}]}, 400, "n",
     "n: must be <= 1, got 2"),
    ("/v1/chat/completions", '{"model": "mor", ', 400, "body", "not valid JSON"),
    ("/v1/predict", '{"model": "tiny", "inputs": [[[' + "1" * 5000 + ', 1]]]}', 400, "body",
     "body: not valid JSON (a number of more than"),
    ("/v1/route", '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}", 400, "body",
     "body: not valid JSON (nested too deeply)"),
    ("/v1/chat/completions", '{"model": "mor", "temperature": NaN, "messages": [{"role": "user", "content": "hi"}]}',
     400, "temperature", "temperature: must be a finite number"),
    ("/v1/route", {"messages": "hello"}, 400, "messages", "must be a valid list"),
]


@pytest.mark.parametrize("path,body,status,param,fragment", BAD, ids=[f"{b[0]} {b[4]}" for b in BAD])
def test_bad_requests_are_4xx_naming_the_field_and_the_reason(server, path, body, status, param, fragment):
    response = post(server, path, body)
    error = clean(response)
    assert response.status_code == status and error["param"] == param and fragment in error["message"], error


def test_a_missing_checkpoint_makes_the_service_unready_and_its_model_503(server):
    ready = httpx.get(server.root + "/readyz")
    assert ready.status_code == 503 and ready.json()["ready"] is False
    checks = ready.json()["checks"]
    assert checks["system"] == checks["model:tiny"] == "ok" and "no checkpoint here" in checks["model:missing"]
    assert "/tmp/" not in ready.text
    response = post(server, "/v1/predict", {"model": "missing", "inputs": [[[1, 1]]]})
    assert response.status_code == 503 and "model 'missing' is not available" in clean(response)["message"]


# ---- routing, batching, metrics, page ----

def test_route_explains_the_decision_without_calling_an_expert(server):
    calls = server.service.system.stats["sympy"].calls
    route = post(server, "/v1/route", {"messages": [{"role": "user", "content": "integrate x^2 from 0 to 1"}]}).json()
    assert route["selected"] == ["sympy"] and route["explanation"].startswith("chose sympy"), route["explanation"]
    assert route["scores"][0]["name"] == "sympy" and route["scores"][0]["hints"] == 1.0
    assert "sympy            score +1.000" in route["explanation"]
    assert server.service.system.stats["sympy"].calls == calls


def test_concurrent_predictions_share_forward_passes_and_equal_unbatched_ones(server, run_dir):
    rng = np.random.default_rng(0)
    inputs = [[[int(b), 1] for b in rng.integers(0, 2, size=int(n))] for n in rng.choice([5, 9], size=48)]

    async def all_at_once():
        async with httpx.AsyncClient(base_url=server.root, headers={"Authorization": f"Bearer {KEY}"},
                                     timeout=30, limits=httpx.Limits(max_connections=64)) as http:
            replies = await asyncio.gather(*(http.post("/v1/predict", json={"model": "tiny", "inputs": [x]})
                                             for x in inputs))
        return [r.json()["outputs"][0] for r in replies]

    outputs = asyncio.run(all_at_once())
    assert max(o["batch_size"] for o in outputs) > 1
    alone = TrainedModel(run_dir, "reference")
    for x, out in zip(inputs, outputs, strict=True):
        (expected,) = alone.predict(torch.tensor([x], dtype=torch.float32))
        assert out["prediction"] == expected.value and out["steps"] == expected.steps
        assert out["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
    several = post(server, "/v1/predict", {"model": "tiny", "inputs": inputs[:3]}).json()["outputs"]
    assert [o["prediction"] for o in several] == [o["prediction"] for o in outputs[:3]]


def test_a_failing_forward_pass_fails_only_the_inputs_of_its_shape(server, monkeypatch):
    model = server.service.models["tiny"]
    predict, run, batches = model.trained.predict, model.batcher.run, []

    def out_of_memory_on_long_sequences(x: torch.Tensor) -> list:
        if x.shape[1] > 8:
            raise RuntimeError(f"CUDA out of memory in {ROOT}/model.py")
        return predict(x)

    def counted(items: list) -> list:
        batches.append(len(items))
        return run(items)

    monkeypatch.setattr(model.trained, "predict", out_of_memory_on_long_sequences)
    monkeypatch.setattr(model.batcher, "run", counted)
    monkeypatch.setattr(model.batcher, "max_wait_s", 1.0)  # both requests surely join one batch

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.root, headers={"Authorization": f"Bearer {KEY}"},
                                     timeout=30) as http:
            return await asyncio.gather(*(http.post("/v1/predict", json={"model": "tiny", "inputs": [[[1, 1]] * n]})
                                          for n in (5, 12)))

    short, long = asyncio.run(together())
    assert batches == [2]
    assert short.status_code == 200 and short.json()["outputs"][0]["steps"] >= 1
    assert long.status_code == 500 and clean(long)["code"] == "internal_error" and "CUDA" not in long.text


def test_a_result_a_future_cannot_carry_fails_its_request_and_later_ones_are_answered(server, monkeypatch):
    model = server.service.models["tiny"]
    predict = model.trained.predict

    def stop_on_seven_positions(x: torch.Tensor) -> list:
        if x.shape[1] == 7:
            raise StopIteration  # as a `next()` on an empty iterator deep in model code would
        return predict(x)

    monkeypatch.setattr(model.trained, "predict", stop_on_seven_positions)
    bad = post(server, "/v1/predict", {"model": "tiny", "inputs": [[[1, 1]] * 7]})
    good = post(server, "/v1/predict", {"model": "tiny", "inputs": [[[1, 1]] * 5]})
    assert bad.status_code == 500 and clean(bad)["code"] == "internal_error"
    assert good.status_code == 200 and not model.batcher.worker.done()


def metric(text: str, name: str, **labels) -> float:
    """The value of sample `name` with `labels` in a Prometheus exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_metrics_count_requests_errors_experts_depth_and_batches(server, client):
    client.chat.completions.create(model="mor", messages=[{"role": "user", "content": MATH}])
    post(server, "/v1/predict", {"model": "tiny", "inputs": [[[1, 1]], [[0, 1]]]})
    post(server, "/v1/predict", {"model": "tiny", "inputs": [[1]]})
    httpx.get(server.root + "/v1/models")
    text = httpx.get(server.root + "/metrics").text
    assert metric(text, "mor_requests_total", endpoint="/v1/chat/completions", status="200") >= 1
    assert metric(text, "mor_requests_total", endpoint="/v1/predict", status="400") >= 1
    assert metric(text, "mor_errors_total", endpoint="/v1/models", status="401") >= 1
    assert metric(text, "mor_request_seconds_count", endpoint="/v1/predict") >= 2
    assert metric(text, "mor_expert_activations_total", expert="sympy", outcome="ok") >= 1
    assert metric(text, "mor_expert_selected_total", expert="sympy") >= 1
    assert metric(text, "mor_reflection_steps_count", model="mor") >= 1
    assert metric(text, "mor_reflection_steps_count", model="tiny") >= 2
    assert metric(text, "mor_model_expert_activations_total", model="tiny", expert="0") + \
        metric(text, "mor_model_expert_activations_total", model="tiny", expert="1") + \
        metric(text, "mor_model_expert_activations_total", model="tiny", expert="2") >= 4  # 2 inputs × k=2
    assert metric(text, "mor_batch_size_count", model="tiny") >= 1
    assert metric(text, "mor_batch_size_sum", model="tiny") >= 2


def test_a_client_that_leaves_before_the_response_counts_as_499_not_500(server):
    def count(status: str) -> float:
        text = httpx.get(server.root + "/metrics").text
        return metric(text, "mor_requests_total", endpoint="/v1/predict", method="POST", status=status)

    before = {status: count(status) for status in ("499", "500")}
    port = int(server.root.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as gone:  # half a body, then the connection closes
        gone.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: mor\r\nAuthorization: Bearer {KEY}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\"".encode())
    deadline = time.monotonic() + 10
    while count("499") == before["499"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count("499") == before["499"] + 1 and count("500") == before["500"]
    text = httpx.get(server.root + "/metrics").text
    assert metric(text, "mor_errors_total", endpoint="/v1/predict", status="499") >= 1


def test_what_the_service_loaded_is_out_of_the_garbage_collectors_way(server):
    assert gc.get_freeze_count() > 0  # frozen once start-up is done (the app's lifespan); thawed when it stops


def test_the_page_is_served_with_its_script_and_a_strict_policy(server):
    page = httpx.get(server.root + "/")
    assert page.status_code == 200 and 'id="question"' in page.text and '<script src="/static/app.js"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = httpx.get(server.root + "/static/app.js")
    assert script.headers["content-type"].startswith("text/javascript") and "/v1/route" in script.text
    assert "innerHTML" not in script.text
    assert httpx.get(server.root + "/static/../settings.py").status_code == 404


# ---- life cycle ----

def test_shutdown_lets_in_flight_requests_finish_and_saves_state(tmp_path):
    system = yaml_system(tmp_path, [{"name": "slow", "kind": "callable", "function": "test_serve:slow",
                                     "hints": {"keywords": ["slowly"]}}], state={"path": str(tmp_path / "state.db")})
    server = serve(write_settings(tmp_path, system=str(system)))
    result = {}
    with server:
        def ask():
            result["response"] = post(server, "/v1/chat/completions",
                                      {"model": "mor", "messages": [{"role": "user", "content": "answer slowly"}]})
        asker = threading.Thread(target=ask)
        asker.start()
        deadline = time.monotonic() + 10
        while server.service.system.stats["slow"].in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.server.should_exit = True  # what SIGTERM does
        asker.join(timeout=10)
    assert result["response"].status_code == 200
    assert result["response"].json()["choices"][0]["message"]["content"] == "slowly: answer slowly"
    store = StateStore(tmp_path / "state.db")
    assert store.load()["slow"].calls == 1
    store.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn's exit, in its thread
def test_a_system_that_cannot_be_built_stops_the_start_up(tmp_path):
    system = yaml_system(tmp_path, [{"name": "lost", "kind": "retrieval", "folder": str(tmp_path / "nowhere")}])
    with pytest.raises(RuntimeError, match="did not start"), serve(write_settings(tmp_path, system=str(system))):
        pass


# ---- config and command line ----

def test_serve_configs_resolve_paths_and_refuse_what_would_not_work(tmp_path):
    path = write_settings(tmp_path, system="system.yaml", models=[{"name": "m", "checkpoint": "runs/m"}])
    settings = load_settings(path)
    assert settings.system == tmp_path / "system.yaml" and settings.models[0].checkpoint == tmp_path / "runs" / "m"
    cases = [({"api_keys": []}, "api_keys: empty, so every request would be refused"),
             ({"api_keys": [{"name": "a", "sha256": "abc"}]}, "api_keys.0.sha256: String should match"),
             ({"models": [{"name": "mor", "checkpoint": "x"}]}, "models: names must be unique"),
             ({"batching": {"max_batch": 0}}, "batching.max_batch: must be >= 1, got 0"),
             ({"rate": 3}, "rate: unknown key")]
    for fields, message in cases:
        with pytest.raises(ConfigError, match="^" + str(tmp_path)) as caught:
            load_settings(write_settings(tmp_path, **fields))
        assert message in str(caught.value) and "\n" not in str(caught.value)


def test_hash_key_makes_or_hashes_a_key():
    runner = CliRunner()
    assert runner.invoke(cli.app, ["serve", "hash-key", "-"], input="sk-abc\n").stdout.split() == \
        ["sha256:", hash_key("sk-abc")]
    made = runner.invoke(cli.app, ["serve", "hash-key"]).stdout.split()
    assert made[0] == "key:" and made[1].startswith("sk-mor-") and made[-1] == hash_key(made[1])


def test_mor_serve_refuses_a_bad_config_before_starting(tmp_path):
    result = CliRunner().invoke(cli.app, ["serve", "--config", str(write_settings(tmp_path, api_keys=[]))])
    assert isinstance(result.exception, ConfigError) and "api_keys: empty" in str(result.exception)
    config = write_settings(tmp_path, system="nope.yaml")  # the error says which setting names the missing file
    result = CliRunner().invoke(cli.app, ["serve", "--config", str(config)])
    assert str(result.exception).startswith(f"{config}: system: {tmp_path.resolve() / 'nope.yaml'}: config file not")


def test_mor_serve_refuses_a_port_in_use_or_a_host_it_cannot_resolve_before_starting(tmp_path):
    """uvicorn would print "startup complete", then fail to bind and exit 3: one line with the fix instead."""
    config = str(write_settings(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli.app, ["serve", "--config", config, "--host", "127.0.0.1", "--port", str(port)])
    assert isinstance(result.exception, MorError), result.output
    assert str(result.exception).startswith(f"mor serve: cannot listen on 127.0.0.1:{port} (Address already in use)")
    assert "pass another --port" in str(result.exception)
    result = CliRunner().invoke(cli.app, ["serve", "--config", config, "--host", "192.0.2.1"])  # not this machine's
    assert isinstance(result.exception, MorError) and "(Cannot assign requested address); give an address of this " \
        "machine (--host)" in str(result.exception)
    result = CliRunner().invoke(cli.app, ["serve", "--config", config, "--host", "no-such-host.invalid"])
    assert isinstance(result.exception, MorError) and "--host: cannot resolve 'no-such-host.invalid'" in str(
        result.exception)

