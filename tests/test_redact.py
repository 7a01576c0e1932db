"""Credentials never reach a client: remembered keys and credential-shaped text are cut, ordinary words stay."""

import pytest

from mor.redact import redact, remember
from mor.serve.errors import brief
from mor.system.experts.openai_chat import OpenAIChatExpert
from test_system_core import info


@pytest.mark.parametrize("text,shown", [
    ("API key sk-live-123 rejected", "API key <secret> rejected"),
    ("sent Authorization: Bearer eyJhbGciOi.J9x-y_z== and failed", "sent Authorization: Bearer <secret> and failed"),
    ("GET /data?api_key=abc123&x=1 failed", "GET /data?api_key=<secret>&x=1 failed"),
    ("password: 'hunter2', user: bob", "password: '<secret>', user: bob"),
    ("login with hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789 failed", "login with <secret> failed"),
    ("""{"api_key": "abc123xyz789"}""", """{"api_key": "<secret>"}"""),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic <secret>"),
    ("Incorrect API key provided: sk-proj-abcdefghijklmnop", "Incorrect API key provided: <secret>"),
], ids=["prefix", "bearer", "query", "quoted", "hub-token", "json", "basic", "openai"])
def test_credential_shaped_text_is_cut(text, shown):
    assert redact(text) == shown


@pytest.mark.parametrize("text", ["max_tokens=512 exceeds the context", "token limit exceeded: 4096 tokens",
                                  "model Qwen2-7B-Instruct-GPTQ-Int4 not found", "task-level risk is low",
                                  "model 'hf-internal-testing/tiny-random-gpt2' not found",
                                  "Unexpected token: '}' at position 12", "missing Bearer token",
                                  "invalid value for pk_user_id: expected int"])
def test_ordinary_text_is_left_alone(text):
    assert redact(text) == text


def test_a_key_read_from_the_environment_is_cut_wherever_it_appears(monkeypatch):
    monkeypatch.setenv("MOR_TEST_UPSTREAM_KEY", "Zq81plainLookingValue")
    OpenAIChatExpert(info("llm"), "http://127.0.0.1:9/v1", "m", api_key_env="MOR_TEST_UPSTREAM_KEY")
    assert brief("RuntimeError: upstream rejected Zq81plainLookingValue (quota)") == (
        "RuntimeError: upstream rejected <secret> (quota)")


def test_too_short_a_value_is_not_remembered():
    remember("none")  # a dummy key would cut "none" out of every message
    assert redact("none of the experts could answer") == "none of the experts could answer"


def test_a_key_in_a_url_goes_with_the_url():
    assert brief("GET https://api.example.com/v1?api_key=abcdef123456 failed") == "GET <url> failed"
