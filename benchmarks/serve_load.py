"""`mor bench serve`: a bounded load test of `mor serve` on loopback — /v1/predict with micro-batching and without.

One `mor serve` process (1 worker, 1 torch thread, access log off) serves two models, each twice: `batched`
(micro-batching, up to 64 inputs per forward pass) and `unbatched` (batching off: one input per forward pass).
The models have untrained weights and halting fixed at 24 steps, so every input costs the same:
- `vectors`: MoR over 4 features (regimes), 4 MLP reflection experts, top-2, width 32;
- `sequences`: the main job's architecture (2 conv reflection experts, top-1, width 32) on 32-bit strings.
A second process runs `clients` concurrent clients, each posting one input per request back to back over its own
keep-alive connection; it counts for `seconds` per served model, in `BLOCKS` blocks each after a warm-up, the served
models taking turns, so that a shared machine's drift falls on all of them alike. The clients speak plain HTTP/1.1
over asyncio streams rather than through httpx, so that on a 2-core machine the load generator costs far less CPU
than the server it measures. Reported per served model: requests, failures, throughput, p50/p99 latency and the
mean inputs per forward pass (from the server's /metrics); per model, the batched/unbatched throughput ratio, the
median of its per-block ratios.
"""

import argparse
import asyncio
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The load process (`--client`) imports only the above; what serves and reports is imported where it is used.

KEY = "sk-bench"
BITS = 32
BLOCKS = 3  # blocks per served model; the models take turns between them
DEPTH = {"train_steps": 24, "halting": {"max_steps": 24}}
MODELS = {"vectors": ({"kind": "mor", "num_experts": 4, "k": 2, "dim": 32, "cell": "mlp", **DEPTH},
                      {"task": "regimes"}),
          "sequences": ({"kind": "mor", "num_experts": 2, "k": 1, "dim": 32, "cell": "conv", **DEPTH},
                        {"task": "prefix_sum", "sizes": [8, BITS]})}
MODES = {"batched": {"enabled": True, "max_batch": 64, "max_wait_ms": 2}, "unbatched": {"enabled": False}}
ROOT = Path(__file__).resolve().parents[1]


def save_model(folder: Path, model: dict, data: dict) -> Path:
    """A benchmark model, saved as `mor train` saves a checkpoint (seed 0)."""
    import torch

    from mor.data import get_task
    from mor.train import checkpoint
    from mor.train.build import build_model
    from mor.train.config import dump, parse

    torch.manual_seed(0)
    config = parse({"model": model, "data": data})
    built = build_model(config.model, get_task(config.data.task, **config.data.options))
    checkpoint.save(folder, 0, built, {}, dump(config), keep_last=1)
    return folder


def serve_config(folder: Path) -> Path:
    """serve.yaml with every model under `{model}-{mode}`."""
    import yaml

    from mor.serve import hash_key

    models = [{"name": f"{name}-{mode}", "checkpoint": str(save_model(folder / name, *MODELS[name])),
               "batching": batching} for name in MODELS for mode, batching in MODES.items()]
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump({"models": models, "api_keys": [{"name": "bench", "sha256": hash_key(KEY)}],
                                    "threads": 1, "server": {"host": "127.0.0.1", "graceful_shutdown_s": 5,
                                                                             "access_log": False}}))
    return path


def payloads(name: str, count: int = 256) -> list[bytes]:
    """`count` requests of one input each for model `name` (seed 0), as HTTP/1.1 bytes for /v1/predict."""
    rng = np.random.default_rng(0)
    model = name.rsplit("-", 1)[0]
    requests = []
    for _ in range(count):
        value = ([[int(b), 1] for b in rng.integers(0, 2, BITS)] if model == "sequences"
                 else rng.normal(size=4).round(4).tolist())
        body = json.dumps({"model": name, "inputs": [value]}).encode()
        requests.append(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode()
                        + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                        + b"\r\n\r\n" + body)
    return requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(root: str, server: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mor serve exited with {server.returncode}: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(root + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"mor serve was not ready within {timeout:.0f} s")


async def load(root: str, model: str, clients: int, seconds: float, warmup: float) -> dict:
    """`clients` keep-alive connections posting back to back for `warmup` + `seconds`; latencies of the requests
    sent in the last `seconds`. A request fails unless it gets a 200 whose JSON holds one output."""
    host, port = root.removeprefix("http://").split(":")
    requests = payloads(model)
    latencies, failures, errors = [], 0, set()
    clock = time.perf_counter  # not loop.time(): uvloop's has millisecond steps
    start = clock()
    counted, stop = start + warmup, start + warmup + seconds

    async def client(i: int) -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, int(port))
        while (sent := clock()) < stop:
            try:
                writer.write(requests[i % len(requests)])
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)[1])
                body = await reader.readexactly(length)
                ok = head.startswith(b"HTTP/1.1 200 ") and len(json.loads(body)["outputs"]) == 1
                if not ok:
                    errors.add((head.partition(b"\r\n")[0] + b": " + body[:200]).decode(errors="replace"))
            except (OSError, asyncio.IncompleteReadError, ValueError, KeyError, TypeError) as err:
                ok = False
                errors.add(f"{type(err).__name__}: {err}")
                writer.close()
                reader, writer = await asyncio.open_connection(host, int(port))
            if sent >= counted:
                if ok:
                    latencies.append(clock() - sent)
                else:
                    failures += 1
            i += clients
        writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return {"latencies": latencies, "failed": failures, "errors": errors}


def summary(blocks: list[dict], seconds: float) -> dict:
    """One served model's blocks together: requests, failures, requests/s (overall and per block), p50 and p99."""
    ms = np.array([t for block in blocks for t in block["latencies"]]) * 1000
    return {"requests": len(ms), "failed": sum(b["failed"] for b in blocks),
            "errors": sorted(set().union(*(b["errors"] for b in blocks)))[:5], "throughput_rps": len(ms) / seconds,
            "block_rps": [len(b["latencies"]) / (seconds / len(blocks)) for b in blocks],
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None}


async def load_each(root: str, models: list[str], clients: int, seconds: float, warmup: float) -> dict[str, dict]:
    """`load` of every served model in `BLOCKS` blocks of `seconds` / `BLOCKS`, the models taking turns in a
    rotating order, so that drift of a shared machine falls on every model alike and per-block ratios pair up."""
    blocks: dict[str, list[dict]] = {model: [] for model in models}
    for turn in range(BLOCKS):
        for model in models[turn % len(models):] + models[:turn % len(models)]:
            blocks[model].append(await load(root, model, clients, seconds / BLOCKS, warmup))
    return {model: summary(found, seconds) for model, found in blocks.items()}


def client_process(root: str, models: list[str], clients: int, seconds: float, warmup: float) -> dict[str, dict]:
    """`load_each` run in a second process, so the clients do not share the server's interpreter."""
    command = [sys.executable, "-m", "benchmarks.serve_load", "--client", root, "--models", ",".join(models),
               "--clients", str(clients), "--seconds", str(seconds), "--warmup", str(warmup)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=len(models) * (seconds + BLOCKS * warmup) + 120)
    if done.returncode != 0:
        raise RuntimeError(f"load client failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def batch_sizes(root: str) -> dict[str, float]:
    """Mean inputs per forward pass of each model, from the server's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    sums, counts = {}, {}
    for family in text_string_to_metric_families(httpx.get(root + "/metrics").text):
        for sample in family.samples:
            if sample.name in ("mor_batch_size_sum", "mor_batch_size_count"):
                target = sums if sample.name.endswith("sum") else counts
                target[sample.labels["model"]] = sample.value
    return {model: sums[model] / counts[model] for model in counts if counts[model]}


def run(quick: bool = False, out_dir: str = "bench-results", clients: int = 64, seconds: float | None = None) -> dict:
    """Serve, load each served model in turn, stop the server; write serve.json and serve.md."""
    from .common import OtherLoad, machine, write

    seconds = seconds or (1.0 if quick else 30.0)
    warmup = 0.3 if quick else 3.0
    other = OtherLoad()
    with tempfile.TemporaryDirectory(prefix="mor-bench-serve-") as tmp:
        config = serve_config(Path(tmp))
        root = f"http://127.0.0.1:{free_port()}"
        server = subprocess.Popen([sys.executable, "-m", "mor", "serve", "--config", str(config), "--port",
                                   root.rsplit(":", 1)[1]], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        try:
            wait_ready(root, server)
            served = client_process(root, [f"{name}-{mode}" for name in MODELS for mode in MODES], clients,
                                    seconds, warmup)
            for name, batch in batch_sizes(root).items():
                served[name]["mean_batch"] = batch
        finally:
            server.terminate()
            server.wait(timeout=30)
    ratios = {name: statistics.median(on / max(off, 1e-9) for on, off in zip(
        served[f"{name}-batched"]["block_rps"], served[f"{name}-unbatched"]["block_rps"], strict=True))
        for name in MODELS}
    # the server and the clients have exited and been reaped by now, so their CPU time counts as this run's own
    results = {"machine": machine([1]), "other_cores": other.cores(), "clients": clients, "seconds": seconds,
               "warmup_s": warmup, "models": {name: spec for name, (spec, _) in MODELS.items()}, "served": served,
               "ratio": ratios, "failed": sum(m["failed"] for m in served.values())}
    write(out_dir, "serve", results, markdown(results))
    return results


def markdown(results: dict) -> str:
    from .common import md_machine, md_table

    rows = [[name, f"{m['requests']}", f"{m['failed']}", f"{m['throughput_rps']:.0f}", _ms(m["p50_ms"]),
             _ms(m["p99_ms"]), f"{m.get('mean_batch', float('nan')):.1f}"] for name, m in results["served"].items()]
    ratios = "; ".join(f"{name} **{ratio:.1f}×**" for name, ratio in results["ratio"].items())
    return "\n\n".join([
        "## Serving: /v1/predict under load (`mor bench serve`)",
        md_machine(results["machine"], results["other_cores"]),
        f"{results['clients']} concurrent clients in a second process, {results['seconds']:g} s per served model "
        f"in {BLOCKS} blocks, the models taking turns, each block after {results['warmup_s']:g} s of warm-up, one "
        "input per request; one `mor serve` process (1 worker, "
        "1 torch thread, access log off). Models: `vectors` = MoR over 4 features, 4 MLP experts, top-2, width 32; "
        "`sequences` = the main job's architecture on 32-bit strings; both untrained, halting fixed at 24 steps.",
        md_table(["served model", "requests", "failed", "requests/s", "p50 latency", "p99 latency",
                  "inputs per forward pass"], rows),
        f"Requests per second with micro-batching ÷ the same server with batching off, median of the per-block "
        f"ratios: {ratios}. "
        f"Failed requests: {results['failed']}."])


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} ms"


def _run_fast(coroutine):
    """asyncio.run on uvloop where it is installed (the load generator should cost as little CPU as it can)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per served model instead of 30")
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)  # the load process of `run`
    parser.add_argument("--models", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        models = args.models.split(",")
        print(json.dumps(_run_fast(load_each(args.client, models, args.clients, args.seconds, args.warmup))))
        return
    print(markdown(run(args.quick, args.out, args.clients, args.seconds)))


if __name__ == "__main__":
    main()
