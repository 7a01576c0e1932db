"""Reasoning depth: does reflection solve instances far longer than its training ones by thinking longer, and
does it know when to stop?

One task per run (prefix sums by default, binary addition, or additions whose carry runs through every digit),
trained on 8–32 bits and evaluated on fresh instances of 32, 128 and 512 bits with up to 600 reflection steps,
for MoR (2 reflection experts, top-1), a single reflection expert, a depth-1 MoE and a dense stack of distinct
cells — the baselines at matched parameters — each over several seeds, because recurrent reasoners fail to
train on some seeds: every seed is reported. Reflecting models are scored at fixed depths (one run to the
deepest, read at each depth) and under adaptive halting: critic confidence ≥ 0.99, the answer unchanged for
20 steps, or both (confidence ≥ 0.99 and the answer unchanged for 5 steps). Accuracy = the whole string right.
Jobs run in parallel processes, one torch thread each, so the wall time is the suite's, not one model's.

Run: `mor bench depth [--quick]` or `python -m benchmarks.reasoning_depth [--quick] [--task addition|carry]
[--seeds 5] [--steps 2000]`; writes depth.json (depth-TASK.json for the others), .md and .png.
"""

import argparse
import math
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from mor.data import Task, get_task
from mor.nn import Halting
from mor.nn.models import MoRModel, count_parameters
from mor.train.config import RunConfig, parse
from mor.train.evaluate import rule_name

from .common import SuiteRun, matched_dims, md_machine, md_table, train_model, with_dim

DATA = {"prefix_sum": {"task": "prefix_sum"}, "addition": {"task": "addition"},  # each task's data config
        "carry": {"task": "addition", "carry_chain": True}}
KINDS = ("mor", "reflection", "moe", "dense")
TRAIN_SIZES = (8, 32)
SIZES = (32, 128, 512)
MAX_STEPS = 600
SEED_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))  # one line style per seed, colour per kind
DIMS = range(4, 257)  # widths searched when matching a baseline's parameters to MoR's
DEPTHS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 320, 400, 500, 600)  # the fixed-depth sweep
RULES = (Halting(max_steps=MAX_STEPS, threshold=0.99), Halting(max_steps=MAX_STEPS, stable_steps=20),
         Halting(max_steps=MAX_STEPS, threshold=0.99, stable_steps=5, combine="all"))
GOALS = {32: 1.0, 128: 0.99, 512: 0.95}  # accuracy per size, on at least GOAL_SHARE of the seeds (4 of 5)
GOAL_SHARE, HALTING_POINTS, HALTING_FRACTION = 0.8, 0.01, 0.6
# 16 steps for 32 bits: as fast as two width-3 convolutions per step can carry information, which pushes training
# towards the one algorithm that works at every length; a halting prior of 0.05 (PonderNet's λ_p, expected
# halting at step 20) keeps the loss from rewarding early answers, which at 0.2 taught shortcuts that overthink.
MODEL = {"kind": "mor", "num_experts": 2, "k": 1, "dim": 32, "cell": "conv", "train_steps": 16, "depth": 16,
         "progressive": 0.5, "halting": {"max_steps": MAX_STEPS, "threshold": 0.99}}
LOSS = {"prior_halt_prob": 0.05}
EVAL_SEED = 12345


@dataclass(frozen=True)
class Plan:
    """What one run measures: the task, the seeds, the training steps and the examples per evaluation size."""

    task: str
    seeds: int
    steps: int
    examples: dict[int, int]
    depths: tuple[int, ...]
    rules: tuple[Halting, ...]


def plan(quick: bool, task: str, seeds: int | None, steps: int | None) -> Plan:
    """The full plan (5 seeds, 2,000 steps, hundreds of examples up to 600 steps) or the quick smoke version."""
    if quick:
        return Plan(task, seeds or 2, steps or 30, {32: 16, 128: 8, 512: 4}, (8, 24, 48),
                    tuple(replace(r, max_steps=48) for r in RULES))
    return Plan(task, seeds or 5, steps or 2000, {32: 256, 128: 256, 512: 100}, DEPTHS, RULES)


def task_of(cfg: RunConfig) -> Task:
    """The task a config's data section names, with its options."""
    return get_task(cfg.data.task, **cfg.data.options)


def config(task: str, steps: int, seed: int) -> RunConfig:
    """The one training recipe of every kind and seed (MoR's sizes; a baseline changes only its width)."""
    return parse({"model": MODEL, "data": {**DATA[task], "sizes": list(TRAIN_SIZES), "batch_size": 64},
                  "train": {"steps": steps, "lr": 2e-3, "warmup": min(100, steps // 10), "seed": seed, "threads": 1,
                            "log_every": steps, "eval_every": steps, "loss": LOSS},
                  "checkpoint": {"every": steps, "keep_last": 1}}, "reasoning depth")


def accuracy(output: Tensor, y: Tensor) -> float:
    """Fraction of instances whose every position is right."""
    return float((output.argmax(-1) == y).all(1).float().mean())


def reflects(model: nn.Module) -> bool:
    """Whether the model can think for more steps than one (MoR and the single reflection expert)."""
    return isinstance(model, MoRModel) and model.train_steps > 1


@torch.no_grad()
def measure(model: nn.Module, x: Tensor, y: Tensor, p: Plan) -> dict:
    """Accuracy at every fixed depth and under every adaptive rule (with its mean steps), or, for a model that
    does not reflect, its one accuracy."""
    if not reflects(model):
        return {"accuracy": accuracy(model(x), y)}
    swept = model.trajectory(x, list(p.depths), p.rules)
    fixed = {d: accuracy(answer, y) for d, answer in zip(p.depths, swept.answers, strict=True)}
    rules = {rule_name(rule): {"accuracy": accuracy(output, y), "mean_steps": float(steps[swept.mask].float().mean())}
             for rule, output, steps in zip(p.rules, swept.outputs, swept.steps, strict=True)}
    best = max(fixed, key=lambda d: (fixed[d], -d))
    return {"fixed": fixed, "best_depth": best, "best_accuracy": fixed[best], "rules": rules}


def job(p: Plan, kind: str, seed: int, dim: int) -> dict:
    """Train one kind on one seed and measure it at every size: what one worker process does."""
    torch.set_num_threads(1)
    cfg = config(p.task, p.steps, seed)
    task = task_of(cfg)
    model, seconds, _ = train_model(with_dim(cfg, dim), task, kind)
    start = time.perf_counter()
    sizes = {size: measure(model, *task.batch(n, torch.Generator().manual_seed(EVAL_SEED + size), size), p)
             for size, n in p.examples.items()}
    return {"kind": kind, "seed": seed, "dim": dim, "parameters": count_parameters(model), "train_s": seconds,
            "eval_s": time.perf_counter() - start, "sizes": sizes}


def run_jobs(p: Plan, dims: dict[str, int], workers: int) -> list[dict]:
    """Every (kind, seed) job on `workers` processes (spawned: forking a process with torch threads can hang),
    the slow reflecting kinds first so the pool drains evenly."""
    jobs = [(kind, seed) for kind in KINDS for seed in range(p.seeds)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(job, p, kind, seed, dims[kind]) for kind, seed in jobs]
        results = []
        for future in futures:
            results.append(future.result())
            r = results[-1]
            print(f"  {r['kind']} seed {r['seed']}: {r['train_s']:.0f} s training, {r['eval_s']:.0f} s evaluation, "
                  f"{headline(r, max(p.examples)):.3f} at {max(p.examples)} bits", flush=True)
    return results


def headline(result: dict, size: int) -> float:
    """A job's accuracy at `size` under the first adaptive rule (critic confidence), or its only accuracy."""
    m = result["sizes"][size]
    return next(iter(m["rules"].values()))["accuracy"] if "rules" in m else m["accuracy"]


def by_kind(results: list[dict]) -> dict[str, list[dict]]:
    """The job results grouped by kind, seeds in order."""
    return {kind: sorted((r for r in results if r["kind"] == kind), key=lambda r: r["seed"]) for kind in KINDS}


def meets_accuracy_goals(result: dict, rule_name: str | None = None) -> bool:
    """Whether one seed reaches every size's goal under the first adaptive rule, or under `rule_name`."""
    def accuracy_at(size: int) -> float:
        return headline(result, size) if rule_name is None else result["sizes"][size]["rules"][rule_name]["accuracy"]
    return all(accuracy_at(size) >= goal for size, goal in GOALS.items() if size in result["sizes"])


def halting_holds(result: dict, rule_name: str, max_steps: int) -> bool:
    """Whether halting by `rule_name` stays within HALTING_POINTS of the best fixed depth at every size while
    using at most HALTING_FRACTION of the maximum steps."""
    for m in result["sizes"].values():
        rule = m["rules"][rule_name]
        if rule["accuracy"] < m["best_accuracy"] - HALTING_POINTS or rule["mean_steps"] > HALTING_FRACTION * max_steps:
            return False
    return True


def summary(results: list[dict], p: Plan) -> dict:
    """Per kind: seeds meeting the accuracy goals, seeds where halting holds (reflecting kinds), and the median
    accuracy over seeds at each size."""
    max_steps = p.rules[0].max_steps
    out = {}
    for kind, runs in by_kind(results).items():
        out[kind] = {"seeds_meeting_goals": sum(meets_accuracy_goals(r) for r in runs),
                     "median_accuracy": {size: statistics.median(headline(r, size) for r in runs)
                                         for size in p.examples}}
        if "rules" in runs[0]["sizes"][min(p.examples)]:
            names = runs[0]["sizes"][min(p.examples)]["rules"]
            out[kind]["seeds_halting_holds"] = {name: sum(halting_holds(r, name, max_steps) for r in runs)
                                                for name in names}
            out[kind]["seeds_meeting_goals_by_rule"] = {name: sum(meets_accuracy_goals(r, name) for r in runs)
                                                        for name in names}
    return out


NAMES = {"mor": "MoR (2 experts, top-1)", "reflection": "single reflection expert", "moe": "MoE (depth 1)",
         "dense": f"dense ({MODEL['depth']} cells)"}


def seed_rows(results: list[dict], sizes: list[int]) -> list[list[str]]:
    """One row per kind and seed: parameters, training and evaluation time, accuracy per size under the first rule,
    and the best fixed depth's accuracy at the largest size."""
    rows = []
    for kind, runs in by_kind(results).items():
        for r in runs:
            top = r["sizes"][sizes[-1]]
            best = f"{top['best_accuracy']:.3f} @ {top['best_depth']}" if "rules" in top else "—"
            rows.append([NAMES[kind], str(r["seed"]), f"{r['parameters']:,}", f"{r['train_s']:.0f}",
                         f"{r['eval_s']:.0f}", *(f"{headline(r, s):.3f}" for s in sizes), best])
    return rows


def halting_rows(results: list[dict], sizes: list[int]) -> list[list[str]]:
    """For each reflecting kind, seed and size: the best fixed depth against every adaptive rule."""
    rows = []
    for kind, runs in by_kind(results).items():
        for r in runs:
            for size in sizes:
                m = r["sizes"][size]
                if "rules" not in m:
                    continue
                rules = [f"{v['accuracy']:.3f} in {v['mean_steps']:.0f}" for v in m["rules"].values()]
                rows.append([NAMES[kind], str(r["seed"]), str(size), f"{m['best_accuracy']:.3f} @ {m['best_depth']}",
                             *rules])
    return rows


def verdicts(results: dict) -> list[str]:
    """Plain sentences on the goals, from the numbers."""
    s, seeds = results["summary"], results["plan"]["seeds"]
    goal, needed = ", ".join(f"{g:.0%} at {size}" for size, g in GOALS.items()), math.ceil(round(GOAL_SHARE * seeds, 9))
    met = [NAMES[kind] for kind, v in s.items() if v["seeds_meeting_goals"] >= needed]
    lines = [f"- Accuracy goal ({goal} bits under {results['plan']['rules'][0]}, on ≥ {needed} of {seeds} seeds): "
             f"MoR reaches it on {s['mor']['seeds_meeting_goals']} of {seeds} seeds, the single reflection expert "
             f"on {s['reflection']['seeds_meeting_goals']}, MoE on {s['moe']['seeds_meeting_goals']}, dense on "
             f"{s['dense']['seeds_meeting_goals']}: **{'met by ' + ' and '.join(met) if met else 'not met'}**"
             f"{'' if NAMES['mor'] in met else '; not by MoR'}."]
    lines.append("- The accuracy goal under each adaptive rule: " + "; ".join(
        f"{rule}: MoR {s['mor']['seeds_meeting_goals_by_rule'][rule]}, single expert "
        f"{s['reflection']['seeds_meeting_goals_by_rule'][rule]} of {seeds} seeds" for rule in results["plan"]["rules"])
        + ".")
    for rule in results["plan"]["rules"]:
        lines.append(f"- Halting goal for {rule} (within {HALTING_POINTS:.0%} of the best fixed depth, using ≤ "
                     f"{HALTING_FRACTION:.0%} of the maximum steps, at every size): holds on "
                     f"{s['mor']['seeds_halting_holds'][rule]} of {seeds} MoR seeds and "
                     f"{s['reflection']['seeds_halting_holds'][rule]} of {seeds} single-expert seeds.")
    medians = {kind: v["median_accuracy"] for kind, v in s.items()}
    top = max(results["plan"]["examples"], key=int)
    high = max(m[top] for m in medians.values())
    leaders = [NAMES[k] for k, m in medians.items() if m[top] == high]
    lines.append(f"- Median over seeds at {top} bits: " + ", ".join(f"{NAMES[k]} {m[top]:.3f}"
                                                                   for k, m in medians.items())
                 + f"; best: {' and '.join(leaders) if len(leaders) < len(medians) else 'none (all equal)'}.")
    return lines


def markdown(results: dict) -> str:
    """The suite's tables: every seed of every kind, the halting comparison, and the verdicts."""
    p = results["plan"]
    sizes = sorted(int(s) for s in p["examples"])
    rules = p["rules"]
    return "\n\n".join([
        f"# Reasoning depth: {p['task']}",
        f"{md_machine(results['machine'], results['other_load_cores'])} Wall time {results['wall_s']:.0f} s, "
        f"{results['workers']} worker processes of one thread; over all jobs "
        f"{sum(r['train_s'] for r in results['jobs']):.0f} s of training and "
        f"{sum(r['eval_s'] for r in results['jobs']):.0f} s of evaluation.",
        f"Trained on {TRAIN_SIZES[0]}–{TRAIN_SIZES[1]} bits for {p['steps']} steps of batch 64, "
        f"seeds 0–{p['seeds'] - 1}; "
        f"evaluated on {', '.join(f'{n} fresh instances of {s} bits' for s, n in p['examples'].items())}. "
        "Accuracy is the fraction of instances entirely right. Each baseline takes the whole width whose parameter "
        f"count is nearest MoR's: {matched_counts(results['jobs'])}.",
        "## Every seed\n\nAccuracy under the first adaptive rule (" + rules[0] + "); the last column is the best "
        "fixed depth at the largest size (an oracle choice of depth, for reference).",
        md_table(["model", "seed", "parameters", "train s", "eval s", *(f"{s} bits" for s in sizes),
                  f"best fixed @ depth, {sizes[-1]} bits"], seed_rows(results["jobs"], sizes)),
        "## Adaptive halting against fixed depth\n\nAccuracy and mean steps per rule; the best fixed depth is "
        "chosen after the fact, so it is an upper reference, not a usable rule.",
        md_table(["model", "seed", "bits", "best fixed @ depth", *(f"{r}: accuracy in steps" for r in rules)],
                 halting_rows(results["jobs"], sizes)),
        "## Against the goals", "\n".join(verdicts(results))])


def matched_counts(jobs: list[dict]) -> str:
    """Each kind's width and parameters, with the share by which a baseline misses MoR's count."""
    by_kind = {r["kind"]: r for r in jobs}  # every seed of a kind has its width and count
    mor = by_kind["mor"]["parameters"]
    return ", ".join(f"{NAMES[k]} width {by_kind[k]['dim']}, {by_kind[k]['parameters']:,} parameters"
                     + ("" if k == "mor" else f" ({by_kind[k]['parameters'] / mor - 1:+.1%})")
                     for k in KINDS if k in by_kind)


def figure(results: dict) -> Figure:
    """Accuracy against fixed depth at every size, one line per reflecting model and seed."""
    sizes = sorted(int(s) for s in results["plan"]["examples"])
    fig = Figure(figsize=(4.5 * len(sizes), 3.6))
    for ax, size in zip(fig.subplots(1, len(sizes)), sizes, strict=True):
        for r in results["jobs"]:
            m = r["sizes"][size]
            if "fixed" in m:
                depths = sorted(int(d) for d in m["fixed"])
                ax.plot(depths, [m["fixed"][d] for d in depths], color="C0" if r["kind"] == "mor" else "C1",
                        linestyle=SEED_STYLES[r["seed"] % len(SEED_STYLES)], alpha=0.8,
                        label=f"{r['kind']} seed {r['seed']}")
        ax.set(title=f"{size} bits", xlabel="reflection steps", ylabel="accuracy", ylim=(-0.02, 1.02))
    fig.axes[0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def run(quick: bool = False, out_dir: str = "bench-results", task: str = "prefix_sum", seeds: int | None = None,
        steps: int | None = None, workers: int | None = None) -> dict:
    """Train and measure every kind on every seed; write depth[-TASK].json, .md and .png."""
    p = plan(quick, task, seeds, steps)
    workers = workers or max(1, min(len(os.sched_getaffinity(0)), 8))
    suite = SuiteRun("depth" if task == "prefix_sum" else f"depth-{task}", quick, [1] * workers)
    cfg = config(task, p.steps, 0)
    dims = matched_dims(cfg, task_of(cfg), KINDS, count_parameters, DIMS)
    print(f"reasoning depth on {task}: {len(KINDS) * p.seeds} jobs on {workers} processes", flush=True)
    jobs = run_jobs(p, dims, workers)
    results = {"plan": p.__dict__ | {"rules": [rule_name(r) for r in p.rules]}, "dims": dims, "workers": workers,
               "recipe": config(task, p.steps, 0).model_dump(mode="json"), "jobs": jobs}
    results["summary"] = summary(jobs, p)
    return suite.finish(out_dir, results, markdown, figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smoke version: 2 seeds, 30 steps, a few examples.")
    parser.add_argument("--task", choices=sorted(DATA), default="prefix_sum")
    parser.add_argument("--seeds", type=int, help="Seeds per kind (default 5; quick 2).")
    parser.add_argument("--steps", type=int, help="Training steps (default 2000; quick 30).")
    parser.add_argument("--workers", type=int, help="Worker processes (default: the usable cores, at most 8).")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    run(args.quick, args.out, args.task, args.seeds, args.steps, args.workers)


if __name__ == "__main__":
    main()
