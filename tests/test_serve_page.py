"""The page at / in headless Chromium, driven over the DevTools protocol (Node's WebSocket; no npm packages):
type a request, press Ask, and see the chosen expert, the router's scores, the reflection steps and the answer."""

import json
import shutil
import subprocess
import time

import pytest

from test_serve_support import KEY, serve, write_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(not (CHROMIUM and NODE), reason="needs chromium and node (apt-get install chromium)")

# Opens the page, types KEY and the question, clicks Ask, waits for the answer; prints what the page shows.
DRIVER = r"""
const [devtools, page, key, question] = process.argv.slice(1);
const targets = await (await fetch(`${devtools}/json/list`)).json();
const socket = new WebSocket(targets.find((t) => t.type === "page").webSocketDebuggerUrl);
await new Promise((ok) => socket.addEventListener("open", ok));
let next = 0;
const pending = new Map();
socket.addEventListener("message", (e) => {
  const reply = JSON.parse(e.data);
  if (pending.has(reply.id)) { pending.get(reply.id)(reply); pending.delete(reply.id); }
});
const send = (method, params = {}) => new Promise((ok) => {
  pending.set(++next, ok);
  socket.send(JSON.stringify({ id: next, method, params }));
});
const run = async (expression) =>
  (await send("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true })).result.result.value;
const until = async (expression, seconds) => {
  for (const end = Date.now() + 1000 * seconds; Date.now() < end; await new Promise((ok) => setTimeout(ok, 50)))
    if (await run(expression)) return true;
  return false;
};
await send("Page.navigate", { url: page });
await until("document.readyState === 'complete' && !!document.getElementById('ask')", 20);
await run(`(() => {
  const key = document.getElementById("key");
  key.value = ${JSON.stringify(key)};
  key.dispatchEvent(new Event("change"));
  document.getElementById("question").value = ${JSON.stringify(question)};
  document.getElementById("ask").click();
})()`);
await until("document.getElementById('answered-by').textContent !== '—' || document.getElementById('status')" +
            ".textContent.includes(':')", 30);
const text = (id) => `document.getElementById("${id}").textContent`;
console.log(JSON.stringify(await run(`({experts: ${text("experts")}, answeredBy: ${text("answered-by")},
  steps: ${text("steps")}, confidence: ${text("confidence")}, answer: ${text("answer")}, status: ${text("status")},
  explanation: ${text("explanation")}, rows: [...document.querySelectorAll("#scores tr")].map((r) => r.textContent),
  chosen: [...document.querySelectorAll("#scores tr.chosen td:first-child")].map((c) => c.textContent)})`)));
socket.close();
"""


def test_typing_a_request_shows_the_routing_and_the_answer(tmp_path):
    with serve(write_settings(tmp_path)) as server:
        profile = tmp_path / "profile"
        browser = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                                    f"--user-data-dir={profile}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()) and time.monotonic() < deadline:
                time.sleep(0.05)
            devtools = f"http://127.0.0.1:{port_file.read_text().split()[0]}"
            shown = subprocess.run([NODE, "--experimental-websocket", "--input-type=module", "-e", DRIVER, devtools,
                                    server.root + "/", KEY, "solve 2x + 3 = 11"],
                                   capture_output=True, text=True, timeout=90)
        finally:
            browser.terminate()
            browser.wait(timeout=10)
    assert shown.returncode == 0, shown.stderr
    page = json.loads(shown.stdout)
    assert page["status"] == "" and page["experts"] == "sympy" and page["chosen"] == ["sympy"]
    assert page["answeredBy"] == "sympy" and page["answer"] == "x = 4" and int(page["steps"]) >= 1
    assert float(page["confidence"]) > 0.9 and len(page["rows"]) == 3
    assert page["explanation"].startswith("chose sympy")
