"""Routing across models: quality of the trained router on the shared dataset, its overhead, and load spread.

Measured in one run, against the issue's reference (TF-IDF + logistic regression, trained here on the same data):
- dev accuracy, macro-F1 and per-request routing latency (p50/p99, one CPU thread) of the default router;
- the same dev requests in chat form (after a generic system prompt; as the third turn of a conversation);
- routing latency with 50 experts against 5 (same requests, interleaved);
- routing latency with MiniLM's routing copy as shipped (its routing precision, bf16 where the CPU has it; packed
  weights; the compact forward) against fp32, plain linear weights and transformers' own forward (interleaved);
- per-expert load over 4 equally capable experts under 64 concurrent requests (coefficient of variation);
- start-up: a fresh process loading the saved router and routing one request, against the same process also
  loading the saved MiniLM with transformers, as routers loaded before they skipped it (interleaved).
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import OtherLoad, fmt_ratio, interleaved, machine, md_machine, md_table, paired_ratio, write
from mor.errors import MorError
from mor.system.dataset import read_labeled
from mor.system.evaluation import evaluate
from mor.system.experts.base import ExpertInfo
from mor.system.experts.callable import CallableExpert
from mor.system.head import HeadConfig, LabelHead
from mor.system.request import Request
from mor.system.router import SystemRouter
from mor.system.system import MoRSystem

SYSTEM_PROMPT = {"role": "system", "content": "You are a helpful assistant. Answer accurately and concisely."}
EARLIER_TURNS = ({"role": "user", "content": "Hi! I have a question for you."},
                 {"role": "assistant", "content": "Sure, go ahead and ask."})
STARTUP = """
import sys
from pathlib import Path
from mor.system.head import LabelHead
folder = Path(sys.argv[1])
LabelHead.load(folder).proba(["What is the capital of France?"])
if sys.argv[2] == "transformers":
    from transformers import AutoModel
    AutoModel.from_pretrained(str(folder / "minilm"), local_files_only=True)
"""
SHARED = Path(os.environ.get("MOR_ROUTING_DATA", Path(__file__).resolve().parents[2] / "shared/data/routing"))


def _label_router(head: LabelHead, experts: int | None = None) -> SystemRouter:
    """`experts` experts (default: one per label), each serving one label in turn."""
    labels = head.labels
    return SystemRouter([ExpertInfo(name=f"e{i}-{labels[i % len(labels)]}", capabilities=[labels[i % len(labels)]])
                         for i in range(experts or len(labels))], head)


def quality(data: Path, quick: bool) -> dict:
    """Train the default router and the TF-IDF + LR reference on train.jsonl, score both on dev.jsonl."""
    train, labels, _ = read_labeled(data / "train.jsonl")
    dev, dev_labels, _ = read_labeled(data / "dev.jsonl")
    if quick:
        train, labels, dev, dev_labels = train[::8], labels[::8], dev[::8], dev_labels[::8]
    configs = {"tfidf + LR (reference)": HeadConfig(encoder="tfidf"),
               "mor default": HeadConfig(tune_epochs=1, max_tokens=32) if quick else HeadConfig()}
    rows = {}
    for name, config in configs.items():
        start = time.perf_counter()
        head = LabelHead.fit([r.question for r in train], labels, config)
        rows[name] = {"encoder": _features(head), "train_s": time.perf_counter() - start,
                      **evaluate(_label_router(head), dev, dev_labels, threads=1)}
    chat = {"after a system prompt": (SYSTEM_PROMPT,), "as the third turn": EARLIER_TURNS}
    for form, before in chat.items():
        wrapped = [Request((*before, *r.messages), r.tools) for r in dev]
        rows[f"mor default, {form}"] = {**rows["mor default"],
                                        **evaluate(_label_router(head), wrapped, dev_labels, threads=1)}
    minilm = head.encoders.get("minilm")
    if minilm is not None and minilm.dtype != torch.float32:
        dtype, minilm.dtype = minilm.dtype, torch.float32
        rows["mor default, fp32 routing"] = {**rows["mor default"], "encoder": _features(head),
                                             **evaluate(_label_router(head), dev, dev_labels, threads=1)}
        minilm.dtype = dtype
    return {"train_examples": len(labels), "dev_examples": len(dev_labels), "routers": rows, "head": head}


def _features(head: LabelHead) -> str:
    """The head's encoders, with the precision MiniLM routes in."""
    names = {torch.float32: "fp32", torch.bfloat16: "bf16"}
    return " + ".join(f"{name} ({names[e.dtype]})" if name == "minilm" else name for name, e in head.encoders.items())


def scaling(head: LabelHead, requests: list, rounds: int) -> dict:
    """Seconds per routing decision with 5 and with 50 experts, interleaved; their paired ratio."""
    small, large = _label_router(head, 5), _label_router(head, 50)
    with torch.inference_mode():
        torch.set_num_threads(1)
        times = interleaved({"small": lambda: [small.route(r) for r in requests],
                             "large": lambda: [large.route(r) for r in requests]}, rounds=rounds, warmup=1)
    return {"experts": [len(small.experts), len(large.experts)], "ratio": paired_ratio(times["large"], times["small"]),
            "ms_per_request": {k: 1000 * statistics.median(v) / len(requests) for k, v in times.items()}}


def encoder_variants(head: LabelHead, requests: list, rounds: int) -> dict | None:
    """Seconds per routing decision with MiniLM's routing copy as shipped (own precision, packed weights, compact
    forward) and with one of those changed at a time: fp32, plain `nn.Linear` (reordered on every call),
    transformers' own forward; interleaved, with paired ratios against the shipped copy. None without MiniLM."""
    minilm = head.encoders.get("minilm")
    if minilm is None:
        return None
    router, own = _label_router(head), minilm.dtype
    name = str(own).removeprefix("torch.")
    settings = {f"{name} packed compact": (own, True, True), f"{name} nn.Linear compact": (own, False, True),
                f"{name} packed transformers": (own, True, False)}
    if own != torch.float32:
        settings.update({"fp32 packed compact": (torch.float32, True, True),
                         "fp32 nn.Linear compact": (torch.float32, False, True)})

    def timed(dtype: torch.dtype, pack: bool, compact: bool):
        def route_all() -> None:
            minilm.dtype, minilm.pack, minilm.compact = dtype, pack, compact
            for request in requests:
                router.route(request)
        return route_all

    with torch.inference_mode():
        torch.set_num_threads(1)
        try:
            times = interleaved({k: timed(*v) for k, v in settings.items()}, rounds=rounds, warmup=1)
        finally:
            minilm.dtype, minilm.pack, minilm.compact = own, True, True
    shipped, *others = settings
    pairs = [(shipped, other) for other in others if other != "fp32 nn.Linear compact"]
    if own != torch.float32:
        pairs.append(("fp32 packed compact", "fp32 nn.Linear compact"))
    return {"routing": shipped, "ratios": {f"{a} / {b}": paired_ratio(times[a], times[b]) for a, b in pairs},
            "ms_per_request": {k: 1000 * statistics.median(v) / len(requests) for k, v in times.items()}}


def startup(head: LabelHead, rounds: int) -> dict | None:
    """Seconds of a fresh Python process that loads the saved router and routes one request, against the same
    process also loading the saved MiniLM with transformers' `AutoModel` (the import and load that every start paid
    while the routing copy was made from transformers' model); interleaved, paired. None without MiniLM."""
    if "minilm" not in head.encoders:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "router"
        head.save(folder)

        def start(mode: str):
            return lambda: subprocess.run([sys.executable, "-c", STARTUP, str(folder), mode], check=True,
                                          capture_output=True)
        times = interleaved({"router": start("router"), "router + transformers": start("transformers")},
                            rounds=rounds, warmup=1)
    return {"s": {k: statistics.median(v) for k, v in times.items()},
            "ratio": paired_ratio(times["router"], times["router + transformers"])}


def load_spread(requests: int = 64, experts: int = 4) -> dict:
    """Per-expert call counts when `requests` concurrent asks meet `experts` equally capable experts."""
    async def work(question: str) -> str:
        await asyncio.sleep(0.01)
        return "done"

    async def main() -> dict[str, int]:
        system = MoRSystem([CallableExpert(ExpertInfo(name=f"e{i}", capabilities=["general"]), work)
                            for i in range(experts)], SystemRouter([]))
        await asyncio.gather(*(system.ask(f"request {i}") for i in range(requests)))
        return {name: s.calls for name, s in system.stats.items()}

    calls = asyncio.run(main())
    counts = list(calls.values())
    return {"calls": calls, "cv": statistics.pstdev(counts) / statistics.fmean(counts)}


def markdown(r: dict) -> str:
    q, s, load = r["quality"], r["scaling"], r["load"]
    rows = [[name, v["encoder"], f"{v['accuracy']:.2%}", f"{v['macro_f1']:.4f}", f"{v['calibration_error']:.3f}",
             f"{v['latency_ms']['p50']:.2f}", f"{v['latency_ms']['p99']:.2f}", f"{v['train_s']:.0f}"]
            for name, v in q["routers"].items()]
    recall = [[label] + [f"{v['recall'][label]:.2%}" for v in q["routers"].values()]
              for label in next(iter(q["routers"].values()))["labels"]]
    return "\n\n".join([
        f"## Routing ({'quick' if r['quick'] else 'full'}): {q['train_examples']} training requests, "
        f"{q['dev_examples']} dev requests",
        md_table(["router", "features", "dev accuracy", "macro-F1", "calibration error", "p50 ms", "p99 ms",
                  "train s"], rows),
        "Per-label recall on dev:", md_table(["label", *q["routers"]], recall),
        f"Routing latency, one request at a time on one thread: {s['experts'][1]} experts take "
        f"{s['ratio']['median']:.2f}× ({s['ratio']['min']:.2f}–{s['ratio']['max']:.2f}) the time of "
        f"{s['experts'][0]} ({s['ms_per_request']['large']:.2f} vs {s['ms_per_request']['small']:.2f} ms).",
        *([f"MiniLM routing copies (the default routes with {e['routing']}), interleaved, ms per request: "
           + ", ".join(f"{k} {v:.2f}" for k, v in e["ms_per_request"].items()) + "; time ratios: "
           + ", ".join(f"{k} {fmt_ratio(v)}" for k, v in e["ratios"].items()) + "."]
          if (e := r.get("encoder")) else []),
        f"Load over 4 equal experts, 64 concurrent requests: calls {load['calls']}, coefficient of variation "
        f"{load['cv']:.1%}.",
        *([f"Start-up, a fresh process loading the saved router and routing one request: {u['s']['router']:.2f} s "
           f"median; with transformers' MiniLM loaded as well {u['s']['router + transformers']:.2f} s; time ratio "
           f"{fmt_ratio(u['ratio'])}."] if (u := r.get("startup")) else []),
        md_machine(r["machine"], r["other_load_cores"]) + f" Wall time {r['wall_s']:.0f} s."])


def run(quick: bool = False, out_dir: str = "bench-results", data: Path = SHARED) -> dict:
    """Run the suite, write route.json / route.md to `out_dir` and return the results."""
    start, load = time.perf_counter(), OtherLoad()
    if not (data / "train.jsonl").is_file():
        raise MorError(f"routing benchmark: {data}/train.jsonl not found; set MOR_ROUTING_DATA to the folder "
                         "that holds train.jsonl and dev.jsonl")
    q = quality(data, quick)
    head = q.pop("head")
    dev = read_labeled(data / "dev.jsonl").requests
    results = {"machine": machine([1]), "quick": quick, "quality": q,
               "scaling": scaling(head, dev[:20 if quick else 100], rounds=3 if quick else 7),
               "encoder": encoder_variants(head, dev[:20 if quick else 100], rounds=3 if quick else 7),
               "load": load_spread(), "startup": startup(head, rounds=1 if quick else 5),
               "other_load_cores": load.cores(), "wall_s": time.perf_counter() - start}
    write(out_dir, "route", results, markdown(results))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    print(markdown(run(args.quick, args.out)))


if __name__ == "__main__":
    main()
