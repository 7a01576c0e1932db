"""Routing quality and overhead on labeled requests: accuracy, macro-F1, per-label recall, confusion, latency."""

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from mor.durable import make_folder
from mor.errors import MorError, check
from mor.system.calibration import calibration_error
from mor.system.request import Request
from mor.system.router import SystemRouter


def routed_label(router: SystemRouter, request: Request, truth: str) -> tuple[str, float]:
    """The label the router's first choice counts as, and the router's confidence in that choice: `truth` when the
    chosen expert serves it (an expert may serve several labels), else the served label the head finds likeliest."""
    decision = router.route(request)
    served = router.experts[decision.selected[0]].capabilities or [decision.selected[0]]
    label = truth if truth in served else max(served, key=lambda c: decision.labels.get(c, 0.0))
    return label, decision.confidence


def evaluate(router: SystemRouter, requests: list[Request], labels: list[str], threads: int = 1,
             sources: list[str | None] | None = None) -> dict:
    """Route every request alone (batch 1) on `threads` CPU threads and score the choices against `labels`; with
    `sources`, also the accuracy on each source's requests, since a router that learned one source's style as its
    label shows as one weak source long before it moves the overall accuracy. Per-label recall and macro-F1 are
    over the labels the data holds, named in `macro_f1_labels` (a label only routed to has nothing to recall); a
    label no expert serves is refused, since no choice could be right."""
    served = {c for info in router.experts.values() for c in (info.capabilities or [info.name])}
    unserved = sorted(set(labels) - served)
    check(not unserved, f"evaluation data: {sum(label in unserved for label in labels)} requests are labeled "
                        f"{', '.join(map(repr, unserved))}, which no expert serves ({', '.join(sorted(served))}); "
                        "relabel them, or give an expert that capability", MorError)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for request in requests[:5]:  # warm-up: first calls allocate
            router.route(request)
        predicted, confidence, latency = [], [], []
        for request, truth in zip(requests, labels, strict=True):
            start = time.perf_counter()
            label, sure = routed_label(router, request, truth)
            latency.append(time.perf_counter() - start)
            predicted.append(label)
            confidence.append(sure)
    finally:
        torch.set_num_threads(previous)
    truths, names = sorted(set(labels)), sorted(set(labels) | set(predicted))
    ms = 1000 * np.asarray(latency)
    return {"examples": len(labels), "accuracy": accuracy_score(labels, predicted),
            "macro_f1": f1_score(labels, predicted, labels=truths, average="macro", zero_division=0),
            "macro_f1_labels": truths,
            "recall": dict(zip(truths, recall_score(labels, predicted, labels=truths, average=None,
                                                    zero_division=0).tolist(), strict=True)),
            "calibration_error": calibration_error(np.asarray(confidence), np.asarray(predicted) == np.asarray(labels))
            if router.head is not None else None,
            "labels": names, "confusion": confusion_matrix(labels, predicted, labels=names).tolist(),
            "latency_ms": {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                           "mean": float(ms.mean())},
            "sources": by_source(sources, labels, predicted),
            "threads": threads, "experts": len(router.experts),
            "machine": {"python": platform.python_version(), "torch": torch.__version__,
                        "processor": platform.processor() or platform.machine()}}


def by_source(sources: list[str | None] | None, labels: list[str], predicted: list[str]) -> dict:
    """{source: {examples, accuracy}}, weakest first ("(none)" for requests without one); {} when none has one."""
    if not sources or not any(sources):
        return {}
    scores: dict[str, list[bool]] = {}
    for source, truth, routed in zip(sources, labels, predicted, strict=True):
        scores.setdefault(source or "(none)", []).append(truth == routed)
    rows = {name: {"examples": len(hits), "accuracy": sum(hits) / len(hits)} for name, hits in scores.items()}
    return dict(sorted(rows.items(), key=lambda item: (item[1]["accuracy"], item[0])))


def markdown(result: dict, title: str) -> str:
    """The result as a markdown report: headline numbers (saying which labels macro-F1 averages), per-label recall,
    per-source accuracy (when the data names sources) and the confusion matrix."""
    names, lat = result["labels"], result["latency_ms"]
    lines = [f"# {title}", "", f"{result['examples']} requests, {result['experts']} experts, routed one at a time "
             f"on {result['threads']} CPU thread(s).", "",
             "| accuracy | macro-F1 | calibration error | latency p50 | latency p99 |", "|---|---|---|---|---|",
             f"| {result['accuracy']:.2%} | {result['macro_f1']:.4f} | {_maybe(result['calibration_error'])} | "
             f"{lat['p50']:.2f} ms | {lat['p99']:.2f} ms |",
             "", _macro_f1_note(result),
             *(["", f"p99 of {result['examples']} requests lies between the two slowest: too few to estimate it."]
               if result["examples"] <= 100 else []),
             "", "| label | recall |", "|---|---|"]
    lines += [f"| {n} | {r:.2%} |" for n, r in result["recall"].items()]
    if result.get("sources"):
        lines += ["", "| source | requests | accuracy |", "|---|---|---|"]
        lines += [f"| {n} | {r['examples']} | {r['accuracy']:.2%} |" for n, r in result["sources"].items()]
    lines += ["", "Confusion (rows: true label, columns: routed label)", "",
              "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(str(v) for v in row) + " |"
              for n, row in zip(names, result["confusion"], strict=True)]
    return "\n".join(lines) + "\n"


def _macro_f1_note(result: dict) -> str:
    """Which labels macro-F1 and recall average over: those in the data, not those only routed to."""
    averaged = result["macro_f1_labels"]
    only_routed = [n for n in result["labels"] if n not in averaged]
    return (f"Macro-F1 over the labels in the data ({', '.join(averaged)})"
            + (f"; {', '.join(only_routed)}, only routed to, count in accuracy and the confusion matrix." if only_routed
               else "."))


def _maybe(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def write(result: dict, out: Path, title: str) -> Path:
    """Write route-eval.json and route-eval.md into the folder `out`; returns the markdown report's path."""
    report = make_folder(out, "--out") / "route-eval.md"
    try:
        (out / "route-eval.json").write_text(json.dumps(result, indent=1))
        report.write_text(markdown(result, title))
    except OSError as err:
        raise MorError(f"--out: cannot write the report into '{out}' ({err.strerror or err}); "
                       f"give a folder you can write to") from None
    return report
