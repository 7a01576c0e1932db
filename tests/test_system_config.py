"""A routing system from YAML (mor.system.config) and labeled requests from JSONL (mor.system.dataset): what a valid
file builds, and the one-line errors that name the field or the file:line of a bad one."""

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from mor.errors import ConfigError, MorError
from mor.system.config import load_config, load_system
from mor.system.dataset import read_labeled
from mor.system.router import RouterWeights, Selection
from mor.system.stats import Breaker
from mor.system.system import Combine, Reflection

SHARED_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "routing" / "dev.jsonl"
UPPER, LOWER = "builtins:str.upper", "builtins:str.lower"


def write_yaml(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def one_line_error(error: type[Exception], path: Path, *, within: str = "") -> str:
    """The message of the error `load_system(path)` raises; it must be one line naming the file."""
    with pytest.raises(error) as caught:
        load_system(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert within in message, message
    return message


# ---- a valid config ----

@pytest.fixture
def config_file(tmp_path) -> Path:
    """conf/system.yaml with a callable, a SymPy and a retrieval expert, state and documents relative to it."""
    docs = tmp_path / "conf" / "docs"
    docs.mkdir(parents=True)
    (docs / "capitals.md").write_text("Paris is the capital of France.\n\nBerlin is the capital of Germany.\n")
    return write_yaml(tmp_path / "conf" / "system.yaml", {
        "experts": [
            {"name": "shout", "kind": "callable", "function": UPPER, "description": "says it louder"},
            {"name": "math", "kind": "math", "capabilities": ["math"], "timeout_s": 20,
             "hints": {"keywords": ["solve"]}},
            {"name": "docs", "kind": "retrieval", "folder": "docs", "capabilities": ["knowledge"],
             "hints": {"patterns": ["capital of"]}},
        ],
        "router": {"weights": {"hints": 0.5, "load": 0.1}, "top_k": 1, "default": "shout"},
        "integration": {"mode": "weighted"},
        "reflection": {"rounds": 1, "min_confidence": 0.4},
        "breaker": {"failures_to_open": 2, "cooldown_s": 5},
        "state": {"path": "state/mor.db"},
    })


def test_a_valid_config_builds_the_system_it_describes(config_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths inside resolve against the config's folder, not here
    system = load_system(Path("conf") / "system.yaml")
    try:
        assert list(system.experts) == ["shout", "math", "docs"]
        assert system.experts["docs"].info.capabilities == ["knowledge"]
        assert system.router.head is None
        assert system.router.weights == RouterWeights(head=1.0, hints=0.5, tools=2.0, feedback=0.3, load=0.1)
        assert system.router.selection == Selection(top_k=1, threshold=None, min_confidence=0.0, default="shout")
        assert system.combine == Combine(mode="weighted")
        assert (system.reflection, system.breaker) == (Reflection(1, 0.4), Breaker(2, 5.0))
        assert system.store.path == tmp_path.resolve() / "conf" / "state" / "mor.db" and system.store.path.is_file()
    finally:
        system.store.close()


def test_the_configured_system_answers_with_its_tool_experts(config_file):
    system = load_system(config_file)

    async def questions():
        try:
            return [await system.ask("solve 2x + 3 = 11"), await system.ask("What is the capital of France?")]
        finally:
            await system.aclose()

    solved, looked_up = asyncio.run(asyncio.wait_for(questions(), 60))
    assert (solved.answer.expert, solved.answer.text, solved.answer.confidence) == ("math", "x = 4", 1.0)
    assert looked_up.answer.expert == "docs" and looked_up.answer.text.startswith("Paris is the capital of France.")
    system.store.close()


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    absolute = tmp_path / "elsewhere" / "lm"
    path = write_yaml(tmp_path / "conf" / "system.yaml", {
        "experts": [{"name": "docs", "kind": "retrieval", "folder": "docs"},
                    {"name": "lm", "kind": "transformers", "path": "models/lm"},
                    {"name": "net", "kind": "mor", "checkpoint": "ckpt/model.safetensors"},
                    {"name": "abs", "kind": "transformers", "path": str(absolute)}],
        "router": {"path": "runs/router"},
        "state": {"path": "state.db"},
    })
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("conf/system.yaml"))
    conf = path.parent.resolve()
    assert config.router.path == conf / "runs" / "router" and config.state.path == conf / "state.db"
    assert [e.get("folder") or e.get("path") or e.get("checkpoint") for e in config.experts] == [
        str(conf / "docs"), str(conf / "models" / "lm"), str(conf / "ckpt" / "model.safetensors"), str(absolute)]


# ---- bad configs: one-line ConfigErrors that name the field ----

def base() -> dict:
    return {"experts": [{"name": "a", "kind": "callable", "function": UPPER},
                        {"name": "b", "kind": "callable", "function": LOWER}]}


def with_expert_field(index: int, key: str, value) -> dict:
    config = base()
    config["experts"][index][key] = value
    return config


BAD_CONFIGS = {
    "unknown key": ({**base(), "router": {"topk": 2}}, "router.topk: unknown key"),
    "unknown section": ({**base(), "routers": {}}, "routers: unknown key"),
    "wrong type": ({**base(), "router": {"top_k": "many"}}, "router.top_k: must be a valid integer"),
    "experts not a list": ({"experts": {"name": "a"}}, "experts: must be a valid list"),
    "no experts": ({"router": {"top_k": 1}}, "experts: required; add it"),
    "out of range": ({**base(), "reflection": {"min_confidence": 2}},
                     "reflection.min_confidence: must be <= 1, got 2"),
    "negative weight": ({**base(), "router": {"weights": {"load": -1}}}, "router.weights.load: must be >= 0, got -1"),
    "unknown mode": ({**base(), "integration": {"mode": "magic"}},
                     "integration.mode: 'magic' is not one of weighted, voting, sequential, ensemble, stacking"),
    "ensemble without synthesizer": ({**base(), "integration": {"mode": "ensemble"}},
                                     "integration.synthesizer: required for mode 'ensemble'"),
    "duplicate names": (with_expert_field(1, "name", "a"), "experts[1].name: 'a' is already used"),
    "unknown expert kind": (with_expert_field(0, "kind", "oracle"), "experts[0].kind: must be one of openai"),
    "unknown expert option": (with_expert_field(1, "colour", "red"), "experts[1].colour: unknown key"),
    "bad expert option": (with_expert_field(0, "timeout_s", 0), "experts[0].timeout_s: must be > 0, got 0"),
    "function not importable": (with_expert_field(0, "function", "nowhere.module:fn"),
                                "experts[0].function: cannot import 'nowhere.module:fn'"),
    "bad hint pattern": (with_expert_field(0, "hints", {"patterns": ["("]}),
                         "experts[0]: hints.patterns: '(' is not a valid regular expression"),
}


@pytest.mark.parametrize(("content", "expected"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_a_bad_config_is_a_one_line_config_error_naming_the_field(tmp_path, content, expected):
    one_line_error(ConfigError, write_yaml(tmp_path / "system.yaml", content), within=expected)


def test_a_missing_router_folder_is_named(tmp_path):
    path = write_yaml(tmp_path / "system.yaml", {**base(), "router": {"path": "trained"}})
    message = one_line_error(ConfigError, path, within="router.path: ")
    assert f"{tmp_path.resolve() / 'trained'} holds no trained router; train one first" in message


@pytest.mark.parametrize(("section", "field"), [("router", "default"), ("integration", "synthesizer")])
def test_naming_a_missing_expert_names_the_field(tmp_path, section, field):
    content = {**base(), section: {field: "ghost"}}
    one_line_error(ConfigError, write_yaml(tmp_path / "system.yaml", content), within=f"{section}.{field}: ")


def test_a_config_that_is_not_yaml_or_not_there(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("experts: [\n  {name: a, kind: callable\n")
    one_line_error(ConfigError, broken, within="not valid YAML at line")
    one_line_error(ConfigError, tmp_path / "absent.yaml", within="config file not found")


def test_a_corrupt_state_file_fails_in_one_line_and_is_kept(tmp_path):
    state = tmp_path / "state.db"
    state.write_bytes(b"definitely not sqlite" * 50)
    path = write_yaml(tmp_path / "system.yaml", {**base(), "state": {"path": "state.db"}})
    with pytest.raises(MorError, match="cannot open it as SQLite") as caught:
        load_system(path)
    assert "\n" not in str(caught.value) and state.read_bytes() == b"definitely not sqlite" * 50


# ---- labeled JSONL ----

def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_labeled_jsonl_with_text_and_with_messages_and_tools(tmp_path):
    tools = [{"type": "function", "function": {"name": "weather"}}]
    path = write_lines(tmp_path / "data.jsonl", [
        {"text": "solve 2x = 4", "label": "math", "source": "ignored"},
        "",
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather in Oslo?"}],
         "tools": tools, "label": "tool"},
        {"text": "write a haiku", "label": "creative", "tools": tools},
    ])
    requests, labels, sources = read_labeled(path)
    assert labels == ["math", "tool", "creative"] and sources == ["ignored", None, None]
    assert requests[0].messages == ({"role": "user", "content": "solve 2x = 4"},) and requests[0].tools == ()
    assert requests[1].question == "weather in Oslo?" and requests[1].text == "be brief\nweather in Oslo?"
    assert requests[1].tools == tuple(tools) and requests[2].tools == tuple(tools)


BAD_LINES = {
    "invalid JSON": ("{not json", "not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    "missing label": ({"text": "hello"}, "expected an object with a string 'label'"),
    "label not a string": ({"text": "hello", "label": 3}, "expected an object with a string 'label'"),
    "source not a string": ({"text": "hello", "label": "math", "source": 7}, "'source' must be a string"),
    "not an object": (["hello", "math"], "expected an object with a string 'label'"),
    "empty text": ({"text": "   ", "label": "math"}, "request: every message is empty"),
    "no text": ({"label": "math"}, "give the request as 'text' (a string) or 'messages' (OpenAI's array), found "
                                   "neither"),
    "messages null": ({"messages": None, "label": "math"}, "found neither"),
    "text and messages": ({"text": "hi", "messages": [{"role": "user", "content": "hi"}], "label": "math"},
                          "or 'messages' (OpenAI's array), not both"),
    "label with a space": ({"text": "hi", "label": "math "}, "label 'math ' is empty or has spaces around it"),
    "empty label": ({"text": "hi", "label": ""}, "label '' is empty"),
    "no messages": ({"messages": [], "label": "math"}, "request: no messages"),
    "message not an object": ({"messages": ["hi"], "label": "math"}, "request.messages[0]: expected an object"),
    "messages not a list": ({"messages": 5, "label": "math"}, "'messages' must be a JSON array (OpenAI's form)"),
    "messages a string": ({"messages": "hi", "label": "math"}, "'messages' must be a JSON array"),
    "tools an object": ({"text": "hi", "tools": {"type": "function"}, "label": "tool"}, "'tools' must be a JSON array"),
    "part text not a string": ({"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}],
                                "label": "math"}, "a content part must be an object whose 'text' is a string"),
    "parts not objects": ({"messages": [{"role": "user", "content": ["hi"]}], "label": "math"},
                          "a content part must be an object"),
    "content not text": ({"messages": [{"role": "user", "content": 5}], "label": "math"},
                         "message content must be a string or a list of parts"),
}


@pytest.mark.parametrize(("line", "expected"), BAD_LINES.values(), ids=BAD_LINES.keys())
def test_a_bad_line_is_a_one_line_error_naming_file_and_line(tmp_path, line, expected):
    path = write_lines(tmp_path / "data.jsonl", [{"text": "fine", "label": "math"}, "", line])
    with pytest.raises(MorError) as caught:
        read_labeled(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}:3: ") and expected in message, message


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes('\ufeff{"text": "fine", "label": "math"}\n'.encode())
    assert read_labeled(path).labels == ["math"]


def test_a_line_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"text": "fine", "label": "math"}\n{"text": "caf\xe9", "label": "knowledge"}\n')
    with pytest.raises(MorError, match=f"^{path}:2: "):
        read_labeled(path)


def test_a_legacy_functions_array_reads_as_function_tools(tmp_path):
    function = {"name": "weather", "parameters": {"type": "object", "properties": {}}}
    path = write_lines(tmp_path / "data.jsonl", [
        {"text": "weather in Oslo?", "label": "tool", "functions": [function]},
        {"messages": [{"role": "user", "content": "and in Bergen?"}], "label": "tool", "functions": [function],
         "tools": [{"type": "function", "function": {"name": "search"}}]},
    ])
    requests = read_labeled(path).requests
    assert requests[0].tools == ({"type": "function", "function": function},)
    assert [t["function"]["name"] for t in requests[1].tools] == ["search", "weather"]
    bad = write_lines(tmp_path / "bad.jsonl", [{"text": "weather?", "label": "tool", "functions": ["weather"]}])
    with pytest.raises(MorError, match=rf"^{bad}:1: request.functions\[0\]: expected an OpenAI function object"):
        read_labeled(bad)


def test_tools_that_are_not_a_list_of_objects_are_named(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [{"text": "add 2 and 3", "label": "tool", "tools": "calc"}])
    with pytest.raises(MorError, match=f"^{path}:1: "):
        read_labeled(path)


def test_a_missing_or_empty_file_is_a_one_line_error(tmp_path):
    with pytest.raises(MorError, match="no such file"):
        read_labeled(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(MorError, match="no labeled requests"):
        read_labeled(tmp_path / "empty.jsonl")


@pytest.mark.skipif(not SHARED_DEV.is_file(), reason="../shared/data/routing/dev.jsonl is not present")
def test_the_shared_dev_set_reads_cleanly():
    requests, labels, sources = read_labeled(SHARED_DEV)
    assert len(requests) == len(labels) == len(sources) > 900 and all(sources)
    assert set(labels) == {"math", "code", "reasoning", "creative", "knowledge", "tool"}
