"""Char-LM: bits per character on held-out Python source for a small causal transformer whose FFN is dense, a
sparse MoE or MoR, at matched FLOPs per token, with the curve of held-out quality against training compute.

Corpus: the Python standard library's own sources (mor's `chars` task), the first 2M characters in sorted path
order; the last 2.5 % of them is the held-out text, never trained on. Model: `mor.nn.transformer.TokenModel`,
2 blocks of width 64, 4 heads, context 64. Its FFN is MoR (4 reflection experts with MLP cells of width 128,
top-2, 3 reflection steps in training and at inference), a MoE (4 SwiGLU experts, top-2) or a dense SwiGLU.
Matched FLOPs: each baseline's FFN width (`hidden`) is the one whose forward FLOPs per token (torch's
FlopCounterMode, with in-place products and CPU attention counted too: `common.flop_counter`; element-wise work is
not counted) are closest to MoR's; attention, embeddings and the recipe are the same. Every kind is trained by mor's
own Trainer with one recipe and seed (AdamW lr 3e-3, warmup then cosine, batch 32 windows, the same number of steps,
so the same training tokens and about the same training FLOPs), one after the other, on 1 torch thread by default
(`--threads`). The curve: the whole held-out text is scored at evenly spaced steps of training (untimed), against
cumulative training FLOPs (one forward + backward step counted the same way, times the steps) and training seconds.
Points before the last are mid-schedule (the learning rate has not annealed yet), the same for every kind. MoR is also
scored at other inference depths. Its halting rule is a fixed depth: the language-model loss does not train the
experts' critic, so confidence halting would mean nothing here.

Run: `python -m benchmarks.char_lm [--quick] [--steps N] [--out DIR]` or `mor bench chars`; writes chars.json,
chars.md and chars.png. Full: 2000 steps per model, about 4 minutes for MoR (the slowest), under 15 in all on 2
cores; --quick: 24 steps on 200k characters (seconds).
"""

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from matplotlib.figure import Figure
from rich.console import Console
from torch import Tensor, nn

from mor.data.chars import Chars
from mor.nn import MoRLayer
from mor.nn.experts import ReflectionExperts
from mor.nn.models import count_parameters
from mor.nn.reflection import ReflectionExpert, fixed_depth
from mor.train.build import build_model
from mor.train.config import RunConfig, parse
from mor.train.evaluate import rule_name, token_score
from mor.train.trainer import Trainer

from .common import SuiteRun, closest_dim, counted, flop_counter, md_machine, md_table, torch_threads

SEED = 0
KINDS = ("mor", "moe", "dense")
LABELS = {"mor": "MoR FFN", "moe": "MoE FFN", "dense": "dense FFN"}
MODEL = {"kind": "mor", "num_experts": 4, "k": 2, "dim": 64, "depth": 2, "heads": 4, "hidden": 128,
         "train_steps": 3, "halting": {"max_steps": 3}}
CONTEXT, BATCH, LR, VAL_FRACTION = 64, 32, 3e-3, 0.025
HELD_OUT = {"val_fraction": VAL_FRACTION, "test_fraction": 0}  # one held-out text: the curve scores the final model
HIDDENS = range(8, 4097)  # FFN widths searched when matching a baseline's FLOPs per token to MoR's
DEPTHS = (1, 2, 3, 4, 6)  # MoR's inference depths scored after training


class Budget(NamedTuple):
    """How much a run trains and scores: optimiser steps per model, characters read, curve points."""

    steps: int
    max_chars: int
    points: int


FULL, QUICK = Budget(2000, 2_000_000, 8), Budget(24, 200_000, 3)


def config(budget: Budget, threads: int) -> RunConfig:
    """The one training recipe of every FFN kind (MoR's sizes; baselines change only their FFN width)."""
    steps = budget.steps
    return parse({"model": MODEL, "data": {"task": "chars", "context": CONTEXT, "max_chars": budget.max_chars,
                                           **HELD_OUT, "batch_size": BATCH},
                  "train": {"steps": steps, "lr": LR, "warmup": min(50, steps // 10), "seed": SEED,
                            "threads": threads, "log_every": steps, "eval_every": max(steps // budget.points, 1)},
                  "checkpoint": {"every": steps, "keep_last": 1}}, "char-LM")


def with_hidden(cfg: RunConfig, hidden: int) -> RunConfig:
    """`cfg` with the FFN width (model.hidden) replaced: how a baseline is matched to MoR's FLOPs per token."""
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"hidden": hidden})})


def flops_per_token(model: nn.Module, x: Tensor) -> float:
    """Forward FLOPs per token of `model` on windows `x`, as `flop_counter` counts them."""
    return counted(model, x)[1] / x.shape[1]


def matched_hiddens(cfg: RunConfig, task: Chars, probe: Tensor) -> dict[str, int]:
    """Each kind's FFN width: MoR's own for MoR, else the one whose FLOPs per token are closest to MoR's."""
    target = flops_per_token(build_model(cfg.model, task, "mor"), probe)
    return {kind: cfg.model.hidden if kind == "mor" else
            closest_dim(lambda h, k=kind: build_model(with_hidden(cfg, h).model, task, k),
                        lambda m: flops_per_token(m, probe), target, HIDDENS)
            for kind in KINDS}


def train_flops_per_step(cfg: RunConfig, task: Chars, kind: str) -> float:
    """FLOPs of one training step (forward and backward of the loss on one batch, in training mode) of `kind`:
    what a step of the Trainer costs, to put cumulative training compute on the curve."""
    model = build_model(cfg.model, task, kind).train()
    x, y = task.batch(cfg.data.batch_size, torch.Generator().manual_seed(SEED))
    with flop_counter() as counter:
        model.loss(x, y)[0].backward()
    return counter.get_total_flops()


def active_parameters(model: nn.Module) -> int:
    """Parameters one token uses: all, less the experts its router does not choose (k of E in each MoE layer)."""
    unused = sum(count_parameters(layer.experts) * (1 - layer.router.k / layer.router.num_experts)
                 for layer in model.modules() if isinstance(layer, MoRLayer))
    return round(count_parameters(model) - unused)


@contextlib.contextmanager
def reflection_steps(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collects, inside the block, the reflection steps every chosen expert of every MoR FFN ran per token."""
    steps: list[Tensor] = []

    def record(_layer: nn.Module, _inputs: tuple, output: tuple) -> None:
        steps.append(output[1].steps[output[1].mask])

    handles = [layer.register_forward_hook(record) for layer in model.modules()
               if isinstance(layer, MoRLayer) and isinstance(layer.experts, ReflectionExperts)]
    try:
        yield steps
    finally:
        for handle in handles:
            handle.remove()


def held_out(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """Bits per character and next-character accuracy on the held-out windows, forward FLOPs per token of that
    pass, and for MoR the mean reflection steps its experts ran (under the halting rule the model holds)."""
    with reflection_steps(model) as steps:
        (logits, _), flops = counted(model, x)
    scores = token_score(logits, y)
    result = {"bits_per_char": scores["bits_per_char"], "accuracy": scores["accuracy"],
              "flops_per_token": flops / x.shape[1]}
    if steps:
        result["mean_steps"] = float(torch.cat(steps).float().mean())
    return result


class CurveTrainer(Trainer):
    """mor's Trainer whose periodic validation scores the whole held-out text and records a point of the curve:
    steps, seconds spent training so far (evaluations excluded) and the held-out scores."""

    def fit(self, resume: bool = False) -> dict:
        """Train as the Trainer does, starting an empty curve and the training clock."""
        self.points: list[dict] = []
        self.started, self.evaluating = time.perf_counter(), 0.0
        return super().fit(resume)

    def validate(self) -> dict[str, float]:
        """Score the whole held-out text with the training clock paused; the Trainer keeps the best by it."""
        paused = time.perf_counter()
        x, y = self.task.split("val")
        scores = held_out(self.model, x.to(self.device), y.to(self.device))
        self.points.append({"step": self.step, "train_s": paused - self.started - self.evaluating, **scores})
        self.evaluating += time.perf_counter() - paused
        return {**scores, "score": -scores["bits_per_char"]}


def train_curve(cfg: RunConfig, task: Chars, kind: str) -> CurveTrainer:
    """Train `kind` silently in a temporary folder (removed after); the trainer holds the model and its curve."""
    with tempfile.TemporaryDirectory(prefix="mor-bench-") as run_dir:
        trainer = CurveTrainer(cfg, Path(run_dir), kind=kind, console=Console(quiet=True), task=task)
        trainer.fit()
    return trainer


def ffn_width(kind: str, hidden: int) -> int:
    """The FFN's hidden width per token: each expert's `hidden` for MoE and MoR, k·hidden for dense (whose one
    SwiGLU does the work of the k experts a token uses)."""
    return MODEL["k"] * hidden if kind == "dense" else hidden


def run_kind(cfg: RunConfig, task: Chars, kind: str, hidden: int) -> dict:
    """Train one kind at FFN width `hidden`; its sizes, costs, curve and final held-out scores (and, for MoR,
    the held-out scores at each of DEPTHS)."""
    cfg = with_hidden(cfg, hidden)
    per_step = train_flops_per_step(cfg, task, kind)
    trainer = train_curve(cfg, task, kind)
    model, final = trainer.model, trainer.points[-1]
    result = {"hidden": hidden, "ffn_width": ffn_width(kind, hidden), "parameters": count_parameters(model),
              "active_parameters": active_parameters(model),
              "train_flops_per_step": per_step, "steps": trainer.step, **final,
              "curve": [{**point, "train_flops": point["step"] * per_step} for point in trainer.points]}
    if kind == "mor":
        x, y = (t.to(trainer.device) for t in task.split("val"))
        result["rule"] = rule_name(next(m for m in model.modules() if isinstance(m, ReflectionExpert)).halting)
        result["depths"] = {}
        for depth in DEPTHS:
            with fixed_depth(model, depth):
                result["depths"][str(depth)] = held_out(model, x, y)
    print(f"  {kind}: {result['train_s']:.0f} s, {result['bits_per_char']:.3f} bits/char", flush=True)
    return result


def figure(results: dict) -> Figure:
    """Held-out bits/char against cumulative training FLOPs and training seconds, and MoR's against its depth."""
    fig = Figure(figsize=(15, 4), layout="constrained")
    by_flops, by_time, by_depth = fig.subplots(1, 3)
    for kind, m in results["models"].items():
        bits = [p["bits_per_char"] for p in m["curve"]]
        by_flops.plot([p["train_flops"] / 1e12 for p in m["curve"]], bits, marker="o", label=LABELS[kind])
        by_time.plot([p["train_s"] for p in m["curve"]], bits, marker="o", label=LABELS[kind])
    by_flops.set(xlabel="cumulative training TFLOPs", ylabel="held-out bits/char", title="quality vs compute")
    by_time.set(xlabel="training seconds", ylabel="held-out bits/char", title="quality vs time")
    depths = results["models"]["mor"]["depths"]
    by_depth.plot([int(d) for d in depths], [r["bits_per_char"] for r in depths.values()], marker="o", color="C0")
    by_depth.set(xlabel="MoR inference depth (reflection steps)", ylabel="held-out bits/char",
                 title=f"MoR trained at depth {MODEL['train_steps']}")
    for ax in (by_flops, by_time):
        ax.legend(fontsize=8)
    return fig


def model_rows(models: dict) -> list[list[str]]:
    """One row per FFN kind: width, sizes, costs and final held-out scores."""
    return [[LABELS[kind], str(m["ffn_width"]), f"{m['parameters']:,}", f"{m['active_parameters']:,}",
             f"{m['flops_per_token'] / 1e3:.0f}", f"{m['train_flops_per_step'] / 1e9:.2f}", str(m["steps"]),
             f"{m['train_s']:.0f}", f"{m['bits_per_char']:.3f}", f"{m['accuracy']:.1%}",
             f"{m['mean_steps']:.2f}" if "mean_steps" in m else "–"] for kind, m in models.items()]


def curve_rows(models: dict) -> list[list[str]]:
    """One row per evaluation step: each kind's cumulative training TFLOPs, then its bits/char (training s)."""
    first = next(iter(models.values()))
    return [[str(p["step"]), " / ".join(f"{m['curve'][i]['train_flops'] / 1e12:.2f}" for m in models.values()),
             *[f"{m['curve'][i]['bits_per_char']:.3f} ({m['curve'][i]['train_s']:.0f} s)" for m in models.values()]]
            for i, p in enumerate(first["curve"])]


def markdown(results: dict) -> str:
    """The results as a markdown report: recipe, one row per FFN kind, the curve, MoR's depths and the verdict."""
    models, r = results["models"], results["recipe"]
    mor = models["mor"]
    lines = [
        "# Char-LM: dense vs MoE vs MoR FFN at matched FLOPs per token", "",
        md_machine(results["machine"], results["other_load_cores"]), "",
        f"Corpus: the first {r['max_chars']:,} characters of the Python standard library's sources; the last "
        f"{r['held_out_chars']:,} are held out (vocabulary {r['vocab']}). A {MODEL['depth']}-block causal transformer "
        f"(width {MODEL['dim']}, {MODEL['heads']} heads, context {CONTEXT}) with the FFN below; MoR: "
        f"{MODEL['num_experts']} reflection experts, top-{MODEL['k']}, {MODEL['train_steps']} steps, halting rule "
        f"{mor['rule']}; MoE: {MODEL['num_experts']} SwiGLU experts, top-{MODEL['k']}; dense: one SwiGLU. FFN "
        "widths chosen so the forward FLOPs per token (torch FlopCounterMode: products and attention) are closest to "
        f"MoR's. Every kind: mor's Trainer, {r['steps']} steps of {BATCH} windows, AdamW lr {LR}, warmup then "
        f"cosine, seed {SEED}, {r['threads']} thread(s). Held-out bits/char over the whole held-out text.", "",
        md_table(["FFN", "FFN width (per expert)", "parameters", "active parameters", "kFLOPs / token",
                  "training GFLOPs / step",
                  "training steps", "train s", "held-out bits/char", "next-char accuracy", "mean reflection steps"],
                 model_rows(models)), "",
        "## Quality vs compute", "",
        "Held-out bits/char at evenly spaced steps of each run (training seconds exclude the evaluations; points "
        "before the last are mid-schedule, the learning rate not yet annealed).", "",
        md_table(["step", "training TFLOPs (" + " / ".join(LABELS[k] for k in models) + ")",
                  *[f"{LABELS[k]} bits/char (train s)" for k in models]], curve_rows(models)), "",
        f"## MoR at other inference depths (trained at {MODEL['train_steps']})", "",
        md_table(["depth", "kFLOPs / token", "held-out bits/char", "mean reflection steps"],
                 [[d, f"{s['flops_per_token'] / 1e3:.0f}", f"{s['bits_per_char']:.3f}", f"{s['mean_steps']:.2f}"]
                  for d, s in mor["depths"].items()]), "",
        "## Against the goals", "", *[f"- {line}" for line in verdicts(results)], "",
        f"Wall time: {results['wall_s']:.0f} s.",
    ]
    return "\n".join(lines)


def versus(bits: dict[str, float]) -> str:
    """Who has the fewest held-out bits/char in `bits`, and MoR's margin to the best other kind (or the winner)."""
    rival = min((k for k in bits if k != "mor"), key=bits.get)
    gap = bits["mor"] - bits[rival]
    if gap < 0:
        return f"MoR FFN wins by {-gap:.3f} bits/char ({-gap / bits[rival]:.1%}) over the {LABELS[rival]}"
    return (f"MoR FFN does NOT win: the {LABELS[rival]} is {gap:.3f} bits/char ({gap / bits[rival]:.1%}) lower "
            f"({bits[rival]:.3f} vs {bits['mor']:.3f})")


def verdicts(results: dict) -> list[str]:
    """Plain statements: who wins at matched FLOPs and equal steps, at equal training time, and per parameter;
    what MoR's extra inference depth buys."""
    models = results["models"]
    final = {kind: m["bits_per_char"] for kind, m in models.items()}
    spread = max(abs(m["flops_per_token"] / models["mor"]["flops_per_token"] - 1) for m in models.values())
    lines = [f"Matched FLOPs per token (within {spread:.1%} of MoR's) and equal training steps: {versus(final)}; "
             + ", ".join(f"{LABELS[k]} {v:.3f}" for k, v in final.items()) + " bits/char."]
    budget = min(m["train_s"] for m in models.values())
    timed = {kind: min((p for p in m["curve"] if p["train_s"] <= budget * 1.001), default=None,
                       key=lambda p: p["bits_per_char"]) for kind, m in models.items()}
    if all(timed.values()):
        lines.append(f"Equal training time (each kind's best evaluation within {budget:.0f} s, the fastest kind's "
                     f"whole run): {versus({k: p['bits_per_char'] for k, p in timed.items()})}; "
                     + ", ".join(f"{LABELS[k]} {p['bits_per_char']:.3f} at step {p['step']}" for k, p in timed.items())
                     + "; training steps per second: "
                     + ", ".join(f"{LABELS[k]} {m['steps'] / m['train_s']:.1f}" for k, m in models.items()) + ".")
    else:
        lines.append(f"Equal training time: not measured (no evaluation of "
                     f"{', '.join(LABELS[k] for k, p in timed.items() if p is None)} within {budget:.0f} s).")
    smallest = min(models, key=lambda k: models[k]["parameters"])
    lines.append(f"Parameters: the {LABELS[smallest]} has the fewest ({models[smallest]['parameters']:,}); "
                 + ", ".join(f"{LABELS[k]} {m['parameters']:,}" for k, m in models.items()) + ".")
    depths = models["mor"]["depths"]
    best = min(depths, key=lambda d: depths[d]["bits_per_char"])
    trained = depths[str(MODEL["train_steps"])]["bits_per_char"]
    lines.append(f"Reflection depth: MoR's best inference depth is {best} ({depths[best]['bits_per_char']:.3f} "
                 f"bits/char; {trained:.3f} at its training depth {MODEL['train_steps']}, "
                 f"{depths['1']['bits_per_char']:.3f} at depth 1). Its halting rule here is "
                 f"{models['mor']['rule']}: adaptive halting is not tested by this suite.")
    return lines


def run(quick: bool = False, out_dir: str = "bench-results", threads: int = 1, steps: int | None = None) -> dict:
    """Match, train and score the three FFN kinds; write `out_dir`/chars.json, chars.md and chars.png."""
    suite = SuiteRun("chars", quick, [threads])
    budget = (QUICK if quick else FULL)._replace(**({"steps": steps} if steps else {}))
    cfg = config(budget, threads)
    task = Chars(max_chars=budget.max_chars, context=CONTEXT, **HELD_OUT)
    with torch_threads(threads):
        hiddens = matched_hiddens(cfg, task, task.split("val")[0][:8])
        models = {kind: run_kind(cfg, task, kind, hiddens[kind]) for kind in KINDS}
    recipe = {"steps": budget.steps, "threads": threads, "max_chars": budget.max_chars, "vocab": len(task.vocab),
              "held_out_chars": len(task.ids["val"]), "model": MODEL}
    return suite.finish(out_dir, {"recipe": recipe, "models": models}, markdown, figure)


def main() -> None:
    """`python -m benchmarks.char_lm [--quick] [--steps N] [--threads N] [--out DIR]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.steps} steps on {QUICK.max_chars:,} characters")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps per model (default {FULL.steps})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    print(markdown(run(args.quick, args.out, args.threads, args.steps)))


if __name__ == "__main__":
    main()
