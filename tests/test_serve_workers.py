"""`mor serve` as its own process: with --workers 2, two uvicorn processes behind one port answer every request,
/metrics adds up both (Prometheus multiprocess mode), a caller's rate limit holds for both together, and SIGTERM
stops them cleanly; the access log obeys `server.access_log`."""

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
import pytest

from test_serve import metric
from test_serve_support import KEY, ROOT, write_settings


def test_two_workers_behind_one_port_serve_and_count_together(tmp_path):
    prometheus = tmp_path / "prometheus"
    prometheus.mkdir()
    server, root = start(quick_config(tmp_path), "--workers", "2", stdout=subprocess.DEVNULL,
                         env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prometheus)})
    try:

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


def test_two_workers_hold_a_callers_rate_limit_together(tmp_path):
    prometheus = tmp_path / "prometheus"
    prometheus.mkdir()
    config = quick_config(tmp_path, rate_limit={"requests_per_s": 0.001, "burst": 6})
    server, root = start(config, "--workers", "2", stdout=subprocess.DEVNULL,
                         env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prometheus)})
    try:
        codes = []
        while len(recorded(prometheus)) < 2 and len(codes) < 200:  # a new connection each time: both workers answer
            codes.append(httpx.get(root + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code)
        assert len(recorded(prometheus)) == 2
        codes += [httpx.get(root + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code
                  for _ in range(10)]
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert codes.count(200) == 6 and set(codes) == {200, 429}, codes


@pytest.mark.parametrize("access_log", [True, False])
def test_the_access_log_has_a_line_per_request_unless_turned_off(tmp_path, access_log):
    server, root = start(quick_config(tmp_path, server={"access_log": access_log}), stdout=subprocess.PIPE)
    try:
        assert httpx.get(root + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=60)
    assert "Traceback" not in err, err[-3000:]
    assert ('"GET /v1/models HTTP/1.1" 200' in out) == access_log, out[-3000:]


def quick_config(folder: Path, **fields) -> Path:
    """A serve config whose system has one quick expert: these tests are about the processes, not the answers."""
    system = folder / "system.yaml"
    system.write_text('experts: [{name: shout, kind: callable, function: "builtins:str.upper"}]\n')
    return write_settings(folder, system=str(system), **fields)


def start(config: Path, *options: str, **popen) -> tuple[subprocess.Popen, str]:
    """`mor serve --config CONFIG OPTIONS` on a free loopback port, once ready; the process and its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mor", "serve", "--config", str(config), "--port", str(port),
                               *options], cwd=ROOT, stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.monotonic() + 120
    while not _ready(root) and time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read()
        time.sleep(0.2)
    return server, root


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
