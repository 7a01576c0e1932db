"""The README's `mor serve` examples, copied as written, against a real server of configs/serve.yaml: the curl
commands and the `openai` client code (only the host and port are changed, and the prediction model's checkpoint
is a tiny trained one instead of the main job's, which takes minutes to train)."""

import contextlib
import io
import json
import re
import shutil
import subprocess

import pytest

from fake_llm_server import Server
from mor.serve import create_app, load_settings
from test_serve_support import ROOT, train_tiny

SECTION = (ROOT / "README.md").read_text().split("## Serving (`mor serve`)", 1)[1].split("\n## ", 1)[0]
CURL = next(b for b in re.findall(r"```bash\n(.*?)```", SECTION, re.S) if "curl" in b)
CLIENT = next(b for b in re.findall(r"```py\n(.*?)```", SECTION, re.S) if "from openai import OpenAI" in b)


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    settings = load_settings(ROOT / "configs" / "serve.yaml")
    settings.models[0].checkpoint = train_tiny(tmp_path_factory.mktemp("tiny") / "run")
    with Server(create_app(settings)) as server:
        yield server.url.removeprefix("http://").removesuffix("/v1")


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_curl_examples_work_against_configs_serve_yaml(address):
    commands = CURL.replace("\\\n", " ").replace("127.0.0.1:8000", address).strip().splitlines()
    chat, route, predict = (json.loads(subprocess.run(c, shell=True, capture_output=True, text=True, timeout=60,
                                                      check=True).stdout) for c in commands)
    assert chat["choices"][0]["message"]["content"] == "x = 4" and chat["mor"]["experts"] == ["sympy"]
    assert route["selected"] == ["sympy"] and route["explanation"].startswith("chose sympy")
    (output,) = predict["outputs"]
    assert len(output["prediction"]) == 4 and set(output["prediction"]) <= {0, 1} and output["steps"] >= 1


def test_the_openai_client_example_works_against_configs_serve_yaml(address):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(CLIENT.replace("127.0.0.1:8000", address), "README.md mor serve example", "exec"), {})
    answer, experts, streamed = printed.getvalue().split("\n", 2)
    assert answer == "x = 4" and experts == "['sympy']" and len(streamed.strip()) > 20
