"""The README's Ray Serve deployment of mor serve, run as written: two replicas behind Ray's proxy answer the
official `openai` client. Skipped where Ray Serve is not installed (it is not a dependency of mor)."""

import re
import socket
import subprocess
import sys

import pytest

from test_serve_support import ROOT

pytestmark = pytest.mark.slow
pytest.importorskip("ray.serve")
SNIPPET = next(block for block in re.findall(r"```py\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
               if "from ray import serve" in block)

CHECK = """
import openai
client = openai.OpenAI(base_url=f"http://127.0.0.1:{PORT}/v1", api_key="sk-mor-demo", max_retries=3)
reply = client.chat.completions.create(model="mor", messages=[{"role": "user", "content": "solve 2x + 3 = 11"}])
assert reply.choices[0].message.content == "x = 4" and reply.model_extra["mor"]["experts"] == ["sympy"], reply
assert serve.status().applications["default"].deployments["mor"].replica_states == {"RUNNING": 2}
print("ok")
serve.shutdown()
"""


def test_the_readme_ray_serve_deployment_answers_the_openai_client():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = f"from ray import serve\nPORT = {port}\nserve.start(http_options={{'host': '127.0.0.1', 'port': PORT}})\n"
    done = subprocess.run([sys.executable, "-c", start + SNIPPET + CHECK], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout.splitlines(), done.stdout[-3000:] + done.stderr[-3000:]
