"""Speed: how fast MoR trains and answers next to its baselines, and how much wall time adaptive halting saves.

Every timing is interleaved (each round runs every candidate once, in a rotating order) and reported as medians,
with ratios paired round by round against a baseline timed in the same run (`benchmarks.common.interleaved`):

1. Layer: the small shape of the layer benchmark (`benchmarks/layer_speed.py`, run through its own code): MoRLayer
   vs a dense SwiGLU of the same active parameters vs Hugging Face's Mixtral block; `mor bench layer` runs it in full.
2. Training throughput: examples/s of optimiser steps (forward and loss, backward, clipping, AdamW step) on a fixed
   batch of prefix-sum strings of 32 bits, for the four model kinds `mor train` builds: MoR, a single reflection
   expert, a depth-1 MoE and dense, with the main job's model settings (`configs/prefix_sum.yaml`) at matched FLOPs
   (each baseline's width is the one whose forward FLOPs per example are closest to MoR's at its training depth,
   as in the hidden-task-mix suite; dense stacks as many cells as MoR unrolls steps).
3. Inference latency per example at batch 1 and batch 256, eval mode, at the training depth: median and p90.
4. Adaptive halting: MoR and the single reflection expert, trained on prefix sums with the main job's recipe,
   halt by the main job's own rule (critic confidence ≥ 0.99, at most M steps) or run M steps; the wall-time
   fraction is set against the theoretical one, mean steps / M.

Untimed parts: building and FLOP-matching the models, and training the two halting models (their accuracy is
reported, to show how meaningful their halting is). The other models keep their seeded random init: weights do not
change the cost of a fixed-depth pass. CPU runs on 1 thread (the full run also on 2); with CUDA, every part is
repeated on the GPU, synchronised around each timed call, and the GPU's name is recorded.

Run: `python -m benchmarks.speed [--quick]` or `mor bench speed`; writes speed.json, speed.md and speed.png
(--quick: 1 thread, 20 training steps, halting budget 32 and a few rounds; seconds).
"""

import argparse
import contextlib
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from itertools import count

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor, nn

from mor.data import StreamTask, get_task
from mor.nn import Halting
from mor.nn.models import count_parameters
from mor.train.build import build_model, halting_rule, loss_weights
from mor.train.config import RunConfig, main_job, parse
from mor.train.evaluate import rule_name, score
from mor.train.run import LABELS

from . import layer_speed
from .common import (
    SuiteRun,
    Trained,
    call_options,
    counted,
    flops_on,
    fmt_ratio,
    interleaved,
    matched_dims,
    md_machine,
    md_table,
    paired_ratio,
    synchronizer,
    torch_threads,
    train_model,
    with_dim,
)

SEED, EVAL_SEED = 0, 12345
EXAMPLES = 256  # evaluation strings; the larger latency batch
BATCHES = (1, EXAMPLES)
KINDS = ("mor", "reflection", "moe", "dense")
REFLECTING = ("mor", "reflection")  # the kinds whose halting is timed, trained first
DIMS = range(4, 513)  # widths searched when matching a baseline's FLOPs to MoR's


@dataclass(frozen=True)
class Plan:
    """How much each part measures; the quick plan is a smoke version of the same measurements."""

    threads: tuple[int, ...]  # CPU thread counts, one setting each
    train_steps: int  # optimiser steps of the halting models
    max_steps: int | None  # halting budget M; None: the main job's own
    step_rounds: int  # training-throughput rounds
    rounds: dict[int, int]  # inference rounds per batch size (latency and halting)
    layer_rounds: int
    warmup: int  # untimed calls per candidate before the rounds


FULL = Plan(threads=(1, 2), train_steps=2000, max_steps=None, step_rounds=30, rounds={1: 100, EXAMPLES: 20},
            layer_rounds=15, warmup=3)
QUICK = Plan(threads=(1,), train_steps=20, max_steps=32, step_rounds=5, rounds={1: 10, EXAMPLES: 5},
             layer_rounds=3, warmup=1)


def config(steps: int) -> RunConfig:
    """The main job's model and recipe (what `mor train` trains), cut to `steps` steps on one thread; dense gets
    as many cells as MoR unrolls steps."""
    raw = main_job().model_dump(mode="json")
    raw["model"]["depth"] = raw["model"]["train_steps"]
    raw["train"] |= {"steps": steps, "warmup": min(raw["train"]["warmup"], steps // 10), "threads": 1,
                     "log_every": steps, "eval_every": steps}
    return parse(raw, "speed")


def timing(times: dict[str, list[float]], batch: int, baseline: str) -> dict:
    """Seconds per example (median, p90) and examples/s of each candidate from its seconds per call of `batch`
    examples, and its speed-up over `baseline`: time(baseline) / time(candidate), paired within rounds."""
    per_example = {name: [t / batch for t in ts] for name, ts in times.items()}
    median = {name: statistics.median(ts) for name, ts in per_example.items()}
    return {"batch": batch, "rounds": len(times[baseline]), "baseline": baseline, "median_s": median,
            "p90_s": {name: statistics.quantiles(ts, n=10, method="inclusive")[-1] for name, ts in per_example.items()},
            "examples_per_s": {name: 1 / s for name, s in median.items()},
            "speedup": {name: paired_ratio(times[baseline], ts) for name, ts in times.items() if name != baseline}}


def fresh(cfg: RunConfig, task: StreamTask, kind: str, dim: int, device: str) -> nn.Module:
    """A seeded, untrained model of `kind` at width `dim` on `device`."""
    torch.manual_seed(SEED)
    return build_model(with_dim(cfg, dim).model, task, kind).to(device)


def optimiser_step(model: nn.Module, cfg: RunConfig, x: Tensor, y: Tensor) -> Callable[[], None]:
    """One training step of the Trainer's recipe on a fixed batch (forward and loss, backward, clipping, AdamW),
    as a timed call; the data pipeline is left out, since it is the same for every kind."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    weights = loss_weights(cfg.train.loss)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(x, y, weights)[0].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip)
        optimizer.step()

    return step


def throughput(cfg: RunConfig, task: StreamTask, dims: dict[str, int], device: str, plan: Plan) -> dict:
    """Training throughput of every kind, fresh models, progressive training off: each step unrolls the full
    training depth with gradients (progressive batches unroll fewer, so they would only flatter reflection)."""
    timed = cfg.model_copy(update={"model": cfg.model.model_copy(update={"progressive": 0.0})})
    x, y = (t.to(device) for t in task.eval_set(cfg.data.batch_size, task.sizes[1], seed=SEED))
    steps = {kind: optimiser_step(fresh(timed, task, kind, dim, device), timed, x, y) for kind, dim in dims.items()}
    times = interleaved(steps, plan.step_rounds, plan.warmup, sync=synchronizer(device))
    return timing(times, x.shape[0], "dense")


def feeder(x: Tensor, batch: int) -> Callable[[], Tensor]:
    """Successive slices of `batch` examples of `x` (whose length `batch` divides), wrapping around: at batch 1
    every timed call answers a different example."""
    calls = count()
    return lambda: x.narrow(0, next(calls) * batch % x.shape[0], batch)


def timed_examples(n: int, batch: int, plan: Plan) -> Tensor:
    """Indices of the examples a `feeder` of `n` hands to the timed calls of `interleaved` (after the warm-up)."""
    starts = [(plan.warmup + r) * batch % n for r in range(plan.rounds[batch])]
    return torch.cat([torch.arange(start, start + batch) for start in starts])


def answer_times(calls: dict[str, Callable[[], object]], batch: int, plan: Plan, device: str) -> dict[str, list[float]]:
    """Interleaved seconds per no-grad call, with the rounds the plan gives `batch`."""
    with torch.no_grad():
        return interleaved(calls, plan.rounds[batch], plan.warmup, sync=synchronizer(device))


def latency(models: dict[str, nn.Module], x: Tensor, plan: Plan, device: str) -> dict[str, dict]:
    """Per-example latency of every kind at each batch size, eval mode, at its training depth (matched FLOPs)."""
    return {str(batch): timing(answer_times({kind: lambda m=m, f=feeder(x, batch): m(f(), **call_options(m))
                                             for kind, m in models.items()}, batch, plan, device), batch, "dense")
            for batch in BATCHES}


def halting_rules(cfg: RunConfig, plan: Plan) -> dict[str, Halting]:
    """The main job's own halting rule with budget M (adaptive), and a fixed depth of M."""
    own = halting_rule(cfg.model)
    fixed = Halting(max_steps=plan.max_steps or own.max_steps)
    adaptive = replace(fixed, threshold=own.threshold, stable_steps=own.stable_steps, combine=own.combine)
    return {"adaptive": adaptive, "fixed": fixed}


def halting_profile(model: nn.Module, x: Tensor, y: Tensor, rules: dict[str, Halting], plan: Plan) -> dict:
    """Whole-string accuracy under each rule, and the theoretical time fraction at each batch size: the mean
    steps under adaptive halting over the examples that batch size times, divided by M."""
    runs = {name: model(x, halting=rule, return_diagnostics=True) for name, rule in rules.items()}
    adaptive = runs["adaptive"][1]
    steps = adaptive.compute / adaptive.mask.sum(-1)  # each input's mean over its experts
    return {"accuracy": {name: score(model, output, y)["accuracy"] for name, (output, _) in runs.items()},
            "step_fraction": {str(batch): float(steps[timed_examples(len(x), batch, plan)].mean())
                              / rules["fixed"].max_steps for batch in BATCHES}}


def halting(models: dict[str, nn.Module], x: Tensor, rules: dict[str, Halting], plan: Plan, device: str) -> dict:
    """Adaptive vs fixed-depth wall time of each reflecting model at each batch size: per-example latency, the
    per-round speed-up, and the wall-time fraction (total adaptive time / total fixed time of the timed calls)."""
    result: dict[str, dict] = {}
    for kind in REFLECTING:
        result[kind] = {}
        for batch in BATCHES:
            times = answer_times({name: lambda m=models[kind], r=rule, f=feeder(x, batch): m(f(), halting=r)
                                  for name, rule in rules.items()}, batch, plan, device)
            result[kind][str(batch)] = {**timing(times, batch, "fixed"),
                                        "wall_fraction": sum(times["adaptive"]) / sum(times["fixed"])}
    return result


def run_setting(cfg: RunConfig, task: StreamTask, dims: dict[str, int], trained: dict[str, Trained], x: Tensor,
                device: str, threads: int | None, plan: Plan) -> dict:
    """Throughput, latency and halting on one device (and CPU thread count); `x`: the evaluation strings."""
    x = x.to(device)
    with torch_threads(threads) if threads else contextlib.nullcontext():
        models = {kind: trained[kind].model.to(device) if kind in trained else fresh(cfg, task, kind, dim, device)
                  for kind, dim in dims.items()}
        for model in models.values():
            model.eval()
        result = {"device": device, "threads": threads, "training": throughput(cfg, task, dims, device, plan),
                  "latency": latency(models, x, plan, device),
                  "halting": halting(models, x, halting_rules(cfg, plan), plan, device)}
    for model in trained.values():
        model.model.to("cpu")
    print(f"  {setting_label(result)}: training " + ", ".join(
        f"{kind} {v:.0f} ex/s" for kind, v in result["training"]["examples_per_s"].items()), flush=True)
    return result


def describe_models(cfg: RunConfig, task: StreamTask, dims: dict[str, int], trained: dict[str, Trained]) -> dict:
    """Width, parameters, forward FLOPs per example at training depth and, for the trained ones, training."""
    probe = task.eval_set(8, task.sizes[1], seed=EVAL_SEED)[0]
    result = {}
    for kind, dim in dims.items():
        model = fresh(cfg, task, kind, dim, "cpu")
        result[kind] = {"dim": dim, "parameters": count_parameters(model),
                        "flops": counted(model, probe, **call_options(model))[1],
                        **({"trained_steps": trained[kind].steps, "train_s": trained[kind].seconds}
                           if kind in trained else {})}
    return result


def run(quick: bool = False, out_dir: str = "bench-results", threads: list[int] | None = None) -> dict:
    """Time the layer, training, inference and halting; write `out_dir`/speed.json, speed.md and speed.png."""
    plan = replace(QUICK if quick else FULL, **({"threads": tuple(threads)} if threads else {}))
    suite = SuiteRun("speed", quick, list(plan.threads))
    with torch_threads(plan.threads[0]):  # every untimed part too: extra threads crawl on a busy machine
        results = measure(plan)
    return suite.finish(out_dir, results, markdown, figure)


def measure(plan: Plan) -> dict:
    """Every part of the suite under `plan`, as the results to write."""
    cfg = config(plan.train_steps)
    task = get_task(cfg.data.task, **cfg.data.options)
    x, y = task.eval_set(EXAMPLES, task.sizes[1], seed=EVAL_SEED)
    notes: list[str] = [] if layer_speed.MixtralSparseMoeBlock else ["transformers is not installed: Mixtral skipped."]
    layers = layer_speed.run_layers(layer_speed.CONFIGS[:1], list(plan.threads), plan.layer_rounds, notes)
    dims = matched_dims(cfg, task, KINDS, flops_on(x[:8]), DIMS)
    trained = {kind: train_model(with_dim(cfg, dims[kind]), task, kind) for kind in REFLECTING}
    for t in trained.values():
        t.model.to("cpu")
    rules = halting_rules(cfg, plan)
    profiles = {kind: halting_profile(trained[kind].model, x, y, rules, plan) for kind in REFLECTING}
    devices = [("cpu", n) for n in plan.threads] + ([("cuda", None)] if torch.cuda.is_available() else [])
    recipe = {"task": cfg.data.task, "length": task.sizes[1], "examples": EXAMPLES, "train_batch": cfg.data.batch_size,
              "matched": "FLOPs", "model": cfg.model.model_dump(mode="json", exclude={"kind", "heads", "hidden"}),
              "plan": {**asdict(plan), "rounds": {str(b): r for b, r in plan.rounds.items()}}}  # keys as in JSON
    return {"recipe": recipe, "notes": notes, "models": describe_models(cfg, task, dims, trained), "layer": layers,
            "halting_rules": {name: rule_name(rule) for name, rule in rules.items()},
            "max_steps": rules["fixed"].max_steps, "halting_profile": profiles,
            "settings": [run_setting(cfg, task, dims, trained, x, device, n, plan) for device, n in devices]}


# ----------------------------------------------------------------------------------------------------- report


def setting_label(s: dict, gpu: str | None = None) -> str:
    """'cpu, 1 thread', 'cpu, 2 threads' or 'cuda (GPU name)'."""
    if s["device"] == "cpu":
        return f"cpu, {s['threads']} thread{'s' if s['threads'] > 1 else ''}"
    return f"{s['device']} ({gpu})" if gpu else s["device"]


def relative(ratio: float, what: str) -> str:
    """A speed-up time(baseline) / time(x) in words: '1.52× faster than dense' or '2.10× slower than dense'."""
    return f"{ratio:.2f}× faster than {what}" if ratio >= 1 else f"{1 / ratio:.2f}× slower than {what}"


def versus(t: dict, name: str) -> str:
    """A candidate's paired speed-up over the baseline of timing `t` in words; where the ratio of the two medians
    points the other way, the rounds cannot tell them apart, and the sentence says so instead of picking a side."""
    base, paired = t["baseline"], t["speedup"][name]["median"]
    of_medians = t["median_s"][base] / t["median_s"][name]
    if (paired >= 1) != (of_medians >= 1):
        return (f"level with {base} within this run's noise (paired rounds {paired:.2f}×, "
                f"ratio of medians {of_medians:.2f}×)")
    return relative(paired, base)


def ms(seconds: float) -> str:
    """Seconds as milliseconds, three significant digits."""
    return f"{seconds * 1e3:.3g}"


def speed_cell(t: dict, name: str) -> str:
    """A candidate's paired speed-up over the baseline of timing `t`, or 'baseline'."""
    return fmt_ratio(t["speedup"][name]) if name in t["speedup"] else "baseline"


def layer_rows(layers: list[dict]) -> list[list[str]]:
    """One row per device × dtype × threads × pass of the layer part: tokens/s and MoRLayer's paired ratios."""
    return [[r["device"], r["dtype"], str(r["threads"] or "–"), r["pass"],
             *[f"{r['tokens_per_s'][n] / 1e3:.1f}k" if n in r["tokens_per_s"] else "skipped"
               for n in layer_speed.LAYERS],
             fmt_ratio(r["vs_dense"]["mor"]),
             fmt_ratio(r["mor_vs_mixtral_grouped_mm"]) if "mor_vs_mixtral_grouped_mm" in r else "–"] for r in layers]


def markdown(results: dict) -> str:
    """The report: how it was measured, one table per part, and what the numbers show."""
    recipe, plan, models, gpu = results["recipe"], results["recipe"]["plan"], results["models"], \
        results["machine"].get("gpu")
    settings = results["settings"]
    small = layer_speed.CONFIGS[0]
    lines = [
        "# Speed", "", md_machine(results["machine"], results["other_load_cores"]), "",
        f"Task: {recipe['task']}, strings of {recipe['length']} bits. Models: the main job's (`configs/prefix_sum.yaml`"
        f") settings `{recipe['model']}`, every baseline at **matched FLOPs** (its width is the one whose forward "
        "FLOPs per example, counted by torch's FlopCounterMode, are closest to MoR's at its training depth; dense "
        "stacks as many cells as MoR unrolls steps). Every timing: interleaved rounds (each round runs every "
        f"candidate once, in a rotating order) after {plan['warmup']} untimed call(s) per candidate; medians; "
        "ratios are paired within rounds and shown as median (min–max), speed-up = time(baseline) / time(candidate)"
        ", so above 1 is faster than the baseline.", "",
        md_table(["model", "width", "parameters", f"MFLOPs / example ({recipe['length']} bits)", "weights"],
                 [[LABELS[k], str(m["dim"]), f"{m['parameters']:,}", f"{m['flops'] / 1e6:.2f}",
                   f"trained {m['trained_steps']} steps ({m['train_s']:.0f} s)" if "trained_steps" in m else
                   "random init (seeded)"] for k, m in models.items()]), "",
        "## Layer: MoRLayer vs dense SwiGLU vs Hugging Face Mixtral block", "",
        f"The small shape of `mor bench layer` (d={small.dim}, h={small.hidden}, E={small.experts}, top-{small.k}, "
        f"{small.tokens} tokens), {plan['layer_rounds']} rounds, run by benchmarks/layer_speed.py; `mor bench layer` "
        "has both shapes and more rounds. Speed-ups are MoRLayer's.",
        *[f"Note: {n}" for n in results["notes"]], "",
        md_table(["device", "dtype", "threads", "pass", *[f"{v} tok/s" for v in layer_speed.LAYERS.values()],
                  "MoRLayer vs dense", "MoRLayer vs Mixtral grouped_mm"], layer_rows(results["layer"])), "",
        "## Training throughput", "",
        f"Optimiser steps on a fixed batch of {recipe['train_batch']} strings: forward and loss, backward, gradient "
        "clipping, AdamW step (the Trainer's recipe without its data pipeline); fresh models; progressive training "
        f"off, so every step unrolls the full training depth with gradients; {plan['step_rounds']} rounds.", "",
        md_table(["setting", "model", "examples/s", "ms / step", "speed-up over dense"],
                 [[setting_label(s, gpu), LABELS[k], f"{t['examples_per_s'][k]:,.0f}",
                   ms(t["median_s"][k] * t["batch"]), speed_cell(t, k)]
                  for s in settings for t in [s["training"]] for k in models]), "",
        "## Inference latency per example (eval mode, training depth)", "",
        f"At batch 1 every call answers the next of {recipe['examples']} fixed strings ({plan['rounds']['1']} rounds); "
        f"at batch {recipe['examples']} one call answers all of them ({plan['rounds'][str(recipe['examples'])]} "
        "rounds), and per example = call time / batch.", "",
        md_table(["setting", "batch", "model", "median ms / example", "p90 ms / example", "speed-up over dense"],
                 [[setting_label(s, gpu), b, LABELS[k], ms(t["median_s"][k]), ms(t["p90_s"][k]), speed_cell(t, k)]
                  for s in settings for b, t in s["latency"].items() for k in models]), "",
        *halting_section(results), "",
        "## What this shows", "", *[f"- {line}" for line in verdicts(results)], "",
        f"Wall time: {results['wall_s']:.0f} s.",
    ]
    return "\n".join(lines)


def halting_section(results: dict) -> list[str]:
    """The adaptive-halting table and how it was measured."""
    rules, models, gpu = results["halting_rules"], results["models"], results["machine"].get("gpu")
    profiles = results["halting_profile"]
    rows = [[setting_label(s, gpu), LABELS[kind], b, ms(h["median_s"]["adaptive"]), ms(h["median_s"]["fixed"]),
             f"{profiles[kind]['step_fraction'][b]:.3f}", f"{h['wall_fraction']:.3f}",
             fmt_ratio(h["speedup"]["adaptive"]), realised(h["wall_fraction"], profiles[kind]["step_fraction"][b])]
            for s in results["settings"] for kind, by_batch in s["halting"].items() for b, h in by_batch.items()]
    return [
        "## Adaptive halting (trained models)", "",
        f"The main job's own halting rule ({rules['adaptive']}) against a fixed depth ({rules['fixed']}): M = "
        f"{results['max_steps']}. Same strings, eval mode; halted inputs leave the batch. The two models trained "
        f"{models['mor']['trained_steps']} steps with the main job's recipe; "
        f"whole-string accuracy at {results['recipe']['length']} bits says how meaningful their halting is: "
        f"{halting_accuracy(profiles)}.",
        "Theoretical time fraction = mean steps / M over the timed examples; wall-time fraction = total adaptive "
        "time / total fixed-depth time of the timed calls; saving realised = (1 − wall) / (1 − theoretical).", "",
        md_table(["setting", "model", "batch", "adaptive ms / example", "fixed ms / example", "theoretical fraction",
                  "wall-time fraction", "per-round speed-up", "saving realised"], rows),
    ]


def halting_accuracy(profiles: dict[str, dict]) -> str:
    """Each halting model's whole-string accuracy under both rules, in words."""
    return "; ".join(f"{LABELS[k]} {p['accuracy']['adaptive']:.1%} adaptive, {p['accuracy']['fixed']:.1%} fixed"
                     for k, p in profiles.items())


def realised(wall: float, theoretical: float) -> str:
    """Share of the theoretical saving that the wall time shows; '–' when halting saved no steps."""
    return f"{(1 - wall) / (1 - theoretical):.0%}" if theoretical < 1 else "–"


def verdicts(results: dict) -> list[str]:
    """Plain sentences, each from the numbers above: where MoR is slower or faster, and by how much."""
    gpu, lines = results["machine"].get("gpu"), []
    for r in results["layer"]:
        mixtral = r.get("mor_vs_mixtral_grouped_mm")
        lines.append(f"Layer, {setting_label(r, gpu)}, {r['dtype']}, {r['pass']}: "
                     f"MoRLayer is {relative(r['vs_dense']['mor']['median'], 'a dense SwiGLU of its active size')}"
                     + (f" and {relative(mixtral['median'], 'the Mixtral grouped_mm block')}." if mixtral else "."))
    for s in results["settings"]:
        label, t = setting_label(s, gpu), s["training"]
        lines.append(f"Training, {label}: at matched FLOPs, " + "; ".join(
            f"{LABELS[k]} is {versus(t, k)}" for k in t["speedup"])
            + f" (MoR {t['examples_per_s']['mor']:,.0f}, dense {t['examples_per_s']['dense']:,.0f} examples/s). "
            f"Routing's cost, MoR against the single reflection expert (the same FLOPs, no router), ratio of "
            f"medians: MoR is {relative(t['median_s']['reflection'] / t['median_s']['mor'], 'it')}.")
        for b, t in s["latency"].items():
            per = "per example" if int(b) == 1 else f"per example (amortised: the call's time / {b})"
            lines.append(f"Inference at batch {b}, {label}: MoR takes {ms(t['median_s']['mor'])} ms {per}, "
                         f"{versus(t, 'mor')} ({ms(t['median_s']['dense'])} ms); "
                         + "; ".join(f"{LABELS[k]} is {versus(t, k)}" for k in t["speedup"] if k != "mor") + ".")
        for kind, by_batch in s["halting"].items():
            for b, h in by_batch.items():
                theory = results["halting_profile"][kind]["step_fraction"][b]
                lines.append(f"Adaptive halting, {LABELS[kind]}, batch {b}, {label}: {theory:.0%} of the fixed "
                             f"depth's steps took {h['wall_fraction']:.0%} of its time "
                             f"(saving realised: {realised(h['wall_fraction'], theory)}).")
    lines.append(f"The halting models trained {results['models']['mor']['trained_steps']} steps; their whole-string "
                 f"accuracy at {results['recipe']['length']} bits ({halting_accuracy(results['halting_profile'])}) "
                 "tells whether their halting follows a learned answer or only exercises the mechanism.")
    return lines


def figure(results: dict) -> Figure:
    """Training throughput, latency per example and halting's wall-time vs theoretical fraction."""
    fig = Figure(figsize=(16, 4.2), layout="constrained")
    train_ax, latency_ax, halt_ax = fig.subplots(1, 3)
    gpu, kinds = results["machine"].get("gpu"), list(results["models"])
    settings = results["settings"]
    groups = {setting_label(s, gpu): s["training"]["examples_per_s"] for s in settings}
    bars(train_ax, groups, kinds, "examples / s", "training throughput (higher is better)", log=False)
    groups = {f"{setting_label(s, gpu)}\nbatch {b}": {k: v * 1e3 for k, v in t["median_s"].items()}
              for s in settings for b, t in s["latency"].items()}
    bars(latency_ax, groups, kinds, "median ms / example (log scale)", "inference latency (lower is better)",
         log=True)
    for i, s in enumerate(settings):
        for kind, by_batch in s["halting"].items():
            for b, h in by_batch.items():
                color = f"C{kinds.index(kind)}"  # batch 1 hollow, batch 256 filled; one marker per setting
                halt_ax.scatter(results["halting_profile"][kind]["step_fraction"][b], h["wall_fraction"],
                                edgecolors=color, facecolors="none" if b == "1" else color, marker="o^sDv"[i % 5],
                                label=f"{LABELS[kind]}, batch {b}, {setting_label(s, gpu)}")
    halt_ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="wall = theoretical")
    halt_ax.set(xlim=(0, 1), ylim=(0, 1.1), xlabel="theoretical fraction (mean steps / M)",
                ylabel="wall-time fraction", title="adaptive halting vs fixed depth M")
    halt_ax.legend(fontsize=6)
    return fig


def bars(ax: Axes, groups: dict[str, dict[str, float]], kinds: list[str], ylabel: str, title: str, log: bool
         ) -> None:
    """Grouped bars, one group per label and one bar per model kind; `log`: a log axis (for values far apart)."""
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        ax.bar([g + i * width for g in range(len(groups))], [v[kind] for v in groups.values()], width,
               label=LABELS[kind], color=f"C{i}")
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], list(groups), fontsize=7)
    ax.set(yscale="log" if log else "linear", ylabel=ylabel, title=title)
    ax.legend(fontsize=7)


def main() -> None:
    """`python -m benchmarks.speed [--quick] [--threads 1,2] [--out DIR]`: run and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 thread, 20 training steps, few rounds (seconds)")
    parser.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=None)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    print(markdown(run(args.quick, args.out, args.threads)))


if __name__ == "__main__":
    main()
