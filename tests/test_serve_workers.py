"""`mor serve --workers 2`: two uvicorn processes behind one port answer every request, /metrics adds up both
(Prometheus multiprocess mode), and SIGTERM stops them cleanly."""

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from test_serve import metric
from test_serve_support import KEY, ROOT, write_settings


def test_two_workers_behind_one_port_serve_and_count_together(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root, prometheus = f"http://127.0.0.1:{port}", tmp_path / "prometheus"
    prometheus.mkdir()
    system = tmp_path / "system.yaml"  # one quick expert: the test is about the processes, not the answers
    system.write_text('experts: [{name: shout, kind: callable, function: "builtins:str.upper"}]\n')
    config = write_settings(tmp_path, system=str(system))
    server = subprocess.Popen([sys.executable, "-m", "mor", "serve", "--config", str(config),
                               "--port", str(port), "--workers", "2"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prometheus)})
    try:
        deadline = time.monotonic() + 120
        while not _ready(root) and time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read()
            time.sleep(0.2)

        async def many():
            async with httpx.AsyncClient(base_url=root, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
                return await asyncio.gather(*(http.post("/v1/chat/completions", json={
                    "model": "mor", "messages": [{"role": "user", "content": f"request {i}"}]})
                    for i in range(24)))

        replies = asyncio.run(many())
        assert [r.status_code for r in replies] == [200] * 24
        wrong = [(i, r.json()["mor"]) for i, r in enumerate(replies)
                 if r.json()["choices"][0]["message"]["content"] != f"REQUEST {i}"]
        assert not wrong, wrong
        assert len(workers(server.pid)) == 2
        sent = 0
        while len(recorded(prometheus)) < 2 and sent < 200:  # until both have served (a new connection each time:
            sent += 1                                       # the idle worker tends to accept it)
            assert httpx.get(root + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert len(recorded(prometheus)) == 2  # each worker keeps its own values; /metrics adds them up:
        text = httpx.get(root + "/metrics").text
        assert metric(text, "mor_requests_total", endpoint="/v1/chat/completions", status="200") == 24
        assert metric(text, "mor_requests_total", endpoint="/v1/models", status="200") == sent
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0 and "Traceback" not in err, err[-3000:]


def recorded(folder: Path) -> set[str]:
    """The processes that have written metrics to the multiprocess folder."""
    return {m[1] for f in folder.iterdir() if (m := re.search(r"_(\d+)\.db$", f.name))}


def workers(pid: int) -> list[int]:
    """The worker processes uvicorn spawned under `pid` (from /proc; not multiprocessing's resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


def _ready(root: str) -> bool:
    try:
        return httpx.get(root + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
