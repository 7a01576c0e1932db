"""Measure a trained model: accuracy against reflection depth and instance size, halting rules, routing.

`evaluate` returns plain JSON-ready records (lists of dicts, one per measurement) so reports, the CLI and
saved results all read the same thing. Everything is deterministic for a given `EvalConfig.seed`, except
the latencies.

Scoring: classification takes the argmax of the output's last dimension; regression counts an answer right
when every value is within `regression_tol` of the target (the model's own, else `REGRESSION_TOL`) and also
reports MSE and R² = 1 − SSE / SST. For sequences `position_accuracy` is the fraction of right positions and
`accuracy` the fraction of examples right at every position; for vectors the two are equal. Token models
(next-token prediction) are scored per token instead: `bits_per_char` (cross-entropy in bits) and `accuracy`
the fraction of next tokens right.
"""

import time
from dataclasses import dataclass
from itertools import pairwise
from statistics import median

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mor.data.base import DatasetTask, GroupedTask, StreamTask, Task
from mor.errors import ConfigError, check
from mor.nn.diagnostics import Diagnostics
from mor.nn.losses import NATS_PER_BIT
from mor.nn.models import DenseModel, MoRModel, count_parameters
from mor.nn.reflection import Halting, ReflectionExpert, fixed_depth
from mor.nn.router import Router
from mor.nn.transformer import TokenModel
from mor.train.config import EvalConfig

CHUNK = 256  # examples per forward: bounds memory on long inputs
TIMING_RUNS = 3  # latency per example: the median over at least this many timed chunks
REGRESSION_TOL = 0.1  # tolerance for models without their own `regression_tol`

Size = int | None


@dataclass
class Pass:
    """One forward over an evaluation set, gathered over chunks; the reflection fields are None for dense."""

    output: Tensor  # (N, ..., D) logits or values
    latency_ms: float  # wall time per example
    steps: Tensor | None = None  # (N, m) steps each chosen expert ran
    mask: Tensor | None = None  # (N, m) expert slots in use
    compute: Tensor | None = None  # (N,) cell evaluations per example (Diagnostics.compute)
    top1: Tensor | None = None  # (N,) first-choice expert
    load: Tensor | None = None  # (E,) fraction of examples routed to each expert


def evaluate(model: MoRModel | DenseModel | TokenModel, task: Task, cfg: EvalConfig,
             train_sizes: tuple[int, int] | None = None) -> dict:
    """Accuracy, steps, compute and latency of `model` on `task` by depth, size and halting rule, plus routing.

    `train_sizes` is the training range of the size knob (default: the task's); sizes past it test
    extrapolation. A `DenseModel` is measured at its fixed depth only. A model's conflict policy stays on, so
    its escalations count in steps and compute. A `TokenModel` is measured on held-out windows by bits per
    character, next-token accuracy and latency per token (see `_evaluate_tokens`). The model's train/eval mode
    is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _evaluate(model, task, cfg, train_sizes)
    finally:
        model.train(was_training)


def _evaluate(model: nn.Module, task: Task, cfg: EvalConfig, train_sizes: tuple[int, int] | None) -> dict:
    if isinstance(model, TokenModel):
        return _evaluate_tokens(model, task, cfg)
    routed = isinstance(model, MoRModel)
    reflective = routed and model_kind(model) != "moe"  # the depth-1 MoE is scored, like dense, at its one depth
    knob = isinstance(task, StreamTask) and task.sizes is not None
    train_sizes = (train_sizes or task.sizes) if knob else None
    train_size = train_sizes[1] if knob else None
    sizes = eval_sizes(task, cfg, train_sizes)
    data = {size: _dataset(task, cfg, size) for size in sizes}
    train_depth = model.experts[0].train_steps if routed else len(model.cells)
    depths = sorted({*cfg.max_steps, train_depth}) if reflective else [train_depth]
    own = model.halting if reflective else None

    depth, halting, histogram = [], [], None
    for size, (x, y) in data.items():
        for d in depths:
            run = _pass(model, x, Halting(max_steps=d) if routed else None, TIMING_RUNS)
            depth.append({"size": size, "max_steps": d, **score(model, run.output, y), **_cost(run, d),
                          "latency_ms": run.latency_ms})
        for rule in [*_rules(cfg), own] if reflective else []:
            run = _pass(model, x, rule)
            cost = _cost(run, rule.max_steps)
            halting.append({"size": size, "rule": rule_name(rule), "own": rule is own, "max_steps": rule.max_steps,
                            "threshold": rule.threshold, "stable_steps": rule.stable_steps, "combine": rule.combine,
                            **score(model, run.output, y), **cost,
                            "fraction_of_max": cost["mean_steps"] / rule.max_steps})
            if rule is own and size == sizes[-1]:
                histogram = {"size": size, "rule": rule_name(rule), "counts": steps_histogram(run, rule.max_steps)}

    return {
        "model": {"kind": model_kind(model), "train_depth": train_depth,
                  "classes": bool(model.classes), "parameters": count_parameters(model),
                  "halting": rule_name(own) if reflective else None},
        "task": task.name, "train_sizes": list(train_sizes) if train_sizes else None, "train_size": train_size,
        "examples": [len(y) for _, y in data.values()],
        "sizes": sizes, "depth": depth, "halting": halting, "steps_histogram": histogram,
        "load": _routing(model, task, cfg, train_size) if routed else None,
        "effectiveness": effectiveness(depth),
    }


def _evaluate_tokens(model: TokenModel, task: Task, cfg: EvalConfig) -> dict:
    """Bits per character, next-token accuracy and latency on `cfg.examples` held-out windows of the training
    context: at each of `cfg.max_steps` (and the training depth) for a mor FFN, whose reflection experts run
    exactly that many steps; at the one depth of a moe or dense FFN."""
    check(not cfg.sizes, f"eval.sizes (--size): a token model is evaluated at its training context, "
                         f"got {cfg.sizes}; leave it empty")
    x, y = _dataset(task, cfg, None)
    experts = [m for m in model.modules() if isinstance(m, ReflectionExpert)]
    train_depth = experts[0].train_steps if experts else 1
    depth = []
    for d in sorted({*cfg.max_steps, train_depth}) if experts else [1]:
        with fixed_depth(model, d):
            run = _pass(model, x, None, TIMING_RUNS)
        depth.append({"size": None, "max_steps": d, **token_score(run.output, y), "mean_steps": float(d),
                      "compute": float(ffn_evaluations(model, d)), "latency_ms": run.latency_ms,
                      "token_latency_ms": run.latency_ms / x.shape[1]})
    return {
        "model": {"kind": model_kind(model), "train_depth": train_depth, "classes": True,
                  "parameters": count_parameters(model), "halting": None},
        "task": task.name, "train_sizes": None, "train_size": None, "examples": [len(y)], "sizes": [None],
        "depth": depth, "halting": [], "steps_histogram": None, "load": None, "effectiveness": effectiveness(depth),
    }


def ffn_evaluations(model: TokenModel, depth: int) -> int:
    """Cell evaluations per token: each block's k experts (one dense FFN) at one step each, `depth` in a mor FFN."""
    router = next((m for m in model.modules() if isinstance(m, Router)), None)
    return len(model.blocks) * (router.k if router is not None else 1) * (depth if model.ffn_kind == "mor" else 1)


def token_score(logits: Tensor, y: Tensor) -> dict[str, float]:
    """Next-token cross-entropy in bits per token (per character for chars) and next-token accuracy."""
    nats = F.cross_entropy(logits.flatten(0, -2).float(), y.flatten())
    accuracy = float((logits.argmax(-1) == y).float().mean())
    return {"bits_per_char": float(nats) / NATS_PER_BIT, "accuracy": accuracy, "position_accuracy": accuracy}


def halting_options(model: nn.Module) -> set[str]:
    """The `EvalConfig` fields that sweep a model's reflection: all three for a reflecting MoRModel, the depth alone
    for a token model with a reflecting FFN (no halting rules there), none for a model that does not reflect (dense,
    or the depth-1 MoE, trained to answer in one step)."""
    if isinstance(model, MoRModel):
        return {"max_steps", "thresholds", "stable_steps"} if model_kind(model) != "moe" else set()
    return {"max_steps"} if any(isinstance(m, ReflectionExpert) for m in model.modules()) else set()


def model_kind(model: nn.Module) -> str:
    """dense, moe (depth 1), reflection (a single expert) or mor, read off the model itself; a token model's
    FFN kind."""
    if isinstance(model, TokenModel):
        return model.ffn_kind
    if not isinstance(model, MoRModel):
        return "dense"
    return "moe" if model.train_steps == 1 else "reflection" if len(model.experts) == 1 else "mor"


def sized(task: Task) -> bool:
    """Whether `task` generates instances of a chosen size (not a dataset, token windows or a fixed shape)."""
    return isinstance(task, StreamTask) and bool(task.sizes) and not task.tokens


def check_size(task: Task, size: int, field: str) -> None:
    """Refuse an instance size `task` cannot generate (or a size for a task without one), naming `field`."""
    check(sized(task), f"{field}: task {task.name!r} has no instance sizes to choose from; remove {field}")
    check(task.min_size <= size and (task.max_size is None or size <= task.max_size),
          f"{field}: task {task.name!r} takes sizes {task.min_size}–{task.max_size or '∞'}, got {size}")


def check_examples(task: Task, field: str) -> None:
    """Refuse an example count for a finite dataset, whose whole test split is always scored, naming `field`."""
    if isinstance(task, DatasetTask):
        raise ConfigError(f"{field}: task {task.name!r} is a finite dataset, scored on its whole test split "
                          f"({len(task.split('test')[1])} examples) whatever the count; remove {field}")


def eval_sizes(task: Task, cfg: EvalConfig, train_sizes: tuple[int, int] | None) -> list[Size]:
    """`cfg.sizes`, else the top of the training range and 2× and 4× it within `task.max_size`; [None] for
    tasks without a size knob (and for finite datasets, whose test split has no size)."""
    if isinstance(task, DatasetTask) or train_sizes is None:
        return [None]
    if cfg.sizes:
        return sorted(set(cfg.sizes))
    top = train_sizes[1]
    return sorted({s for s in (top, 2 * top, 4 * top) if task.max_size is None or s <= task.max_size})


def _dataset(task: Task, cfg: EvalConfig, size: Size) -> tuple[Tensor, Tensor]:
    if isinstance(task, DatasetTask):
        return task.split("test")
    return task.eval_set(cfg.examples, size, seed=cfg.seed)


def _rules(cfg: EvalConfig) -> list[Halting]:
    """Critic thresholds, answer stability, and each pair of the two (confident and stable), at the largest depth."""
    top = max(cfg.max_steps)
    return ([Halting(top, threshold=t) for t in cfg.thresholds]
            + [Halting(top, stable_steps=k) for k in cfg.stable_steps]
            + [Halting(top, threshold=t, stable_steps=k, combine="all") for t in cfg.thresholds
               for k in cfg.stable_steps])


def rule_name(rule: Halting) -> str:
    """A short readable name of a halting rule, e.g. 'τ=0.9 and stable 4, max 64'."""
    parts = ([f"τ={rule.threshold:g}"] if rule.threshold is not None else []) + (
        [f"stable {rule.stable_steps}"] if rule.stable_steps is not None else [])
    joined = (" and " if rule.combine == "all" else " or ").join(parts)
    return f"{joined or 'fixed'}, max {rule.max_steps}"


def _timed(model: nn.Module, x: Tensor, rule: Halting | None) -> tuple[Tensor, Diagnostics | None, float]:
    sync = (lambda: torch.cuda.synchronize(x.device)) if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    if rule is not None:
        output, diagnostics = model(x, halting=rule, return_diagnostics=True)
    else:
        output, diagnostics = model(x)[0] if isinstance(model, TokenModel) else model(x), None
    sync()
    return output, diagnostics, time.perf_counter() - start


def _pass(model: nn.Module, x: Tensor, rule: Halting | None, timing_runs: int = 1) -> Pass:
    """Run `model` over `x` in chunks, each timed; the first is re-run until there are `timing_runs` timings."""
    device = next(model.parameters()).device
    chunks = [chunk.to(device) for chunk in x.split(CHUNK)]
    outputs, parts, seconds = [], [], []
    for chunk in chunks:
        output, diagnostics, elapsed = _timed(model, chunk, rule)
        outputs.append(output.float().cpu())
        parts.append(diagnostics)
        seconds.append(elapsed / len(chunk))
    seconds += [_timed(model, chunks[0], rule)[2] / len(chunks[0]) for _ in range(timing_runs - len(chunks))]
    run = Pass(torch.cat(outputs), 1000 * median(seconds))
    if rule is None:
        return run

    def cat(name: str) -> Tensor:
        return torch.cat([getattr(d, name).cpu() for d in parts])

    run.steps, run.mask, run.compute, run.top1 = cat("steps"), cat("mask"), cat("compute"), cat("indices")[:, 0]
    run.load = sum(d.load.cpu() * len(o) for d, o in zip(parts, outputs, strict=True)) / len(x)
    return run


def score(model: nn.Module, output: Tensor, y: Tensor) -> dict[str, float]:
    """Accuracy and position accuracy (classes, or values within tolerance), plus MSE and R² for values."""
    extra = {}
    if model.classes:
        correct = output.argmax(-1) == y
    else:
        error = output - y.to(output.dtype)
        correct = (error.abs() <= getattr(model, "regression_tol", REGRESSION_TOL)).all(-1)
        sse, sst = error.square().sum(), (y - y.mean(0)).square().sum()
        extra = {"mse": float(error.square().mean()), "r2": float(1 - sse / sst) if sst > 0 else 0.0}
    flat = correct.reshape(len(correct), -1)
    return {"accuracy": float(flat.all(1).float().mean()), "position_accuracy": float(flat.float().mean()), **extra}


def _cost(run: Pass, depth: int) -> dict[str, float]:
    """Mean steps over used expert slots and mean compute per example; a dense model spends its depth."""
    if run.steps is None:
        return {"mean_steps": float(depth), "compute": float(depth)}
    return {"mean_steps": float(run.steps[run.mask].float().mean()), "compute": float(run.compute.float().mean())}


def steps_histogram(run: Pass, max_steps: int) -> list[int]:
    """Examples by the depth they reflected to (most steps over their experts): counts[t - 1] = steps t."""
    steps = (run.steps * run.mask).amax(-1)
    steps = steps[steps > 0]  # an input whose every expert slot a capacity limit dropped reflected not at all
    return torch.bincount(steps - 1, minlength=max(max_steps, int(steps.max()) if steps.numel() else 0)).tolist()


def _routing(model: MoRModel, task: Task, cfg: EvalConfig, size: Size) -> dict:
    """Per-expert activation rate at the training size and, for grouped tasks, the group × expert matrix."""
    groups = None
    if isinstance(task, GroupedTask):
        x, _, groups = task.grouped_eval_set(cfg.examples, size, seed=cfg.seed)
    else:
        x, _ = _dataset(task, cfg, size)
    run = _pass(model, x, Halting(max_steps=1))  # routing does not depend on depth
    result = {"size": size, "rate": run.load.tolist()}
    if groups is not None:
        counts = routing_counts(groups, run.top1, len(task.groups), len(run.load))
        result.update(groups=list(task.groups), matrix=routing_matrix(counts).tolist(),
                      mutual_information=mutual_information(counts))
    return result


def routing_counts(groups: Tensor, experts: Tensor, num_groups: int, num_experts: int) -> Tensor:
    """(G, E) counts of examples of each group whose first-choice expert is each expert."""
    flat = groups.long() * num_experts + experts.long()
    return torch.bincount(flat, minlength=num_groups * num_experts).view(num_groups, num_experts)


def routing_matrix(counts: Tensor) -> Tensor:
    """Rows of `counts` as fractions of their group (a group with no examples keeps a row of zeros)."""
    counts = counts.double()
    return counts / counts.sum(1, keepdim=True).clamp(min=1)


def mutual_information(counts: Tensor) -> float:
    """I(group; expert) in bits from a (G, E) table of counts or joint probabilities: 0 when every group
    routes the same way, log2(G) when each group has an expert of its own."""
    joint = torch.as_tensor(counts, dtype=torch.float64)
    joint = joint / joint.sum()
    independent = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    seen = joint > 0
    return max(0.0, float((joint[seen] * (joint[seen] / independent[seen]).log2()).sum()))


def effectiveness(depth: list[dict]) -> list[dict]:
    """Reflection depth effectiveness per size: what each extra step between consecutive depths gained, in accuracy
    for classes and in MSE removed for values (positive: better either way)."""
    out = []
    key, sign = ("mse", -1) if "mse" in depth[0] else ("accuracy", 1)
    for size in dict.fromkeys(r["size"] for r in depth):
        rows = sorted((r for r in depth if r["size"] == size), key=lambda r: r["max_steps"])
        for a, b in pairwise(rows):
            gain = sign * (b[key] - a[key])
            out.append({"size": size, "from": a["max_steps"], "to": b["max_steps"], "gain": gain,
                        "per_step": gain / (b["max_steps"] - a["max_steps"])})
    return out
