"""Hidden-task mix: MoR against its baselines at matched compute on one stream of prefix sums, binary addition and
sequence parity whose task identity is hidden, with MoR's task→expert routing matrix and its mutual information.

The four model kinds (MoR, a single reflection expert, a depth-1 MoE, dense) are trained by mor's own Trainer with
one recipe on the `mix` task (bit strings of 8–32 positions) and evaluated on fresh strings at the top of the
training range and at twice it, at their training depth and, if they reflect, under their own halting rule.
Matched compute: each baseline's width is the one whose forward FLOPs per example (measured with
torch's FlopCounterMode) are closest to MoR's at its training depth; dense stacks as many distinct cells as MoR
reflects steps. Accuracy = the whole string right. Routing: each example's first-choice expert, from the model's
Diagnostics; I(task; expert) in bits from the joint counts.

Run: `python -m benchmarks.hidden_mix [--quick] [--seed 1] [--model "{num_experts: 4}"] [--loss "{load_balance: 0.1}"]`
or `mor bench mix`; writes mix.json, mix.md and mix.png (--quick: 30 steps, 96 strings per length).
"""

import argparse
import math

import yaml
from matplotlib.figure import Figure
from torch import Tensor, nn

from mor.data import Mix
from mor.nn import Halting
from mor.nn.models import MoRModel, count_parameters
from mor.train.config import RunConfig, parse
from mor.train.evaluate import mutual_information, routing_counts, routing_matrix, rule_name
from mor.train.run import LABELS

from .common import (
    SuiteRun,
    call_options,
    counted,
    flops_on,
    matched_dims,
    md_machine,
    md_table,
    torch_threads,
    train_model,
    with_dim,
)

SEED, EVAL_SEED = 0, 12345
SIZES = (32, 64)  # evaluation lengths: the top of the training range, and twice it
KINDS = ("mor", "reflection", "moe", "dense")
# Top-2: chosen when a top-1 router got no gradient from the task (since fixed by the route term); docs/BENCHMARKS.md
# has what top-1 gave then.
MODEL = {"kind": "mor", "num_experts": 3, "k": 2, "dim": 32, "cell": "conv", "train_steps": 24, "depth": 24,
         "progressive": 0.5, "halting": {"max_steps": 64, "stable_steps": 5}}
LOSS = {"load_balance": 0.05}
DIMS = range(4, 513)  # widths searched when matching a baseline's FLOPs to MoR's


def config(steps: int, threads: int, model: dict, loss: dict, seed: int = SEED) -> RunConfig:
    """The one training recipe of every model kind (MoR's sizes; baselines change only their width)."""
    return parse({"model": {**MODEL, **model}, "data": {"task": "mix", "sizes": [8, SIZES[0]], "batch_size": 96},
                  "train": {"steps": steps, "lr": 2e-3, "warmup": min(100, steps // 10), "seed": seed,
                            "threads": threads, "log_every": steps, "eval_every": steps, "loss": {**LOSS, **loss}},
                  "checkpoint": {"every": steps, "keep_last": 1}}, "hidden-task mix")


def measure(model: nn.Module, x: Tensor, y: Tensor, groups: Tensor, task: Mix, halting: Halting | None = None
            ) -> dict:
    """Accuracy per task (whole string and per position), their mean, FLOPs per example and, for routed models,
    the task→expert matrix with its mutual information and the mean reflection steps, from one forward."""
    options = call_options(model, halting)
    output, flops = counted(model, x, **options)
    output, diagnostics = output if options else (output, None)
    right = output.argmax(-1) == y
    whole = right.all(1).float()
    tasks = range(len(task.groups))
    result = {"accuracy": {task.groups[g]: float(whole[groups == g].mean()) for g in tasks},
              "position_accuracy": {task.groups[g]: float(right[groups == g].float().mean()) for g in tasks},
              "flops": flops}
    result["mean_accuracy"] = sum(result["accuracy"].values()) / len(tasks)
    if diagnostics is not None:
        result["mean_steps"] = float(diagnostics.steps[diagnostics.mask].float().mean())
        experts = diagnostics.load.numel()
        if experts > 1:
            counts = routing_counts(groups, diagnostics.indices[:, 0], len(tasks), experts)
            result["routing"] = {"matrix": routing_matrix(counts).tolist(), "counts": counts.tolist(),
                                 "mutual_information": mutual_information(counts),
                                 "max_bits": math.log2(min(len(tasks), experts))}
    return result


def run_kind(cfg: RunConfig, task: Mix, kind: str, dim: int, data: dict[str, tuple[Tensor, Tensor, Tensor]]) -> dict:
    """Train one kind, then measure it at every evaluation length at matched compute (training depth) and, if it
    reflects, under its own halting rule."""
    model, seconds, _ = train_model(with_dim(cfg, dim), task, kind)
    result = {"dim": dim, "parameters": count_parameters(model), "train_s": seconds,
              "matched": {size: measure(model, *batch, task) for size, batch in data.items()}}
    if isinstance(model, MoRModel) and model.train_steps > 1:
        result["own_rule"] = {size: measure(model, *batch, task, halting=model.halting) for size, batch in data.items()}
        result["rule"] = rule_name(model.halting)
    print(f"  {kind}: {seconds:.0f} s, mean accuracy at {SIZES[0]} bits "
          f"{result['matched'][str(SIZES[0])]['mean_accuracy']:.3f}", flush=True)
    return result


def figure(results: dict) -> Figure:
    """Accuracy per task of each kind at matched compute, one panel per length, and MoR's routing matrix."""
    fig = Figure(figsize=(5 * (len(SIZES) + 1), 3.8), layout="constrained")
    *panels, heat = fig.subplots(1, len(SIZES) + 1)
    groups, models = results["tasks"], results["models"]
    width = 0.8 / len(models)
    for bars, size in zip(panels, map(str, SIZES), strict=True):
        for i, (kind, r) in enumerate(models.items()):
            bars.bar([g + i * width for g in range(len(groups))], [r["matched"][size]["accuracy"][t] for t in groups],
                     width, label=LABELS[kind])
        bars.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups)
        bars.set_title(f"{size} bits, matched compute")
        bars.set_ylabel("whole-string accuracy")
        bars.set_ylim(0, 1.3)
        bars.legend(fontsize=7, loc="upper center", ncols=2)
    routing = models["mor"]["matched"][str(SIZES[0])]["routing"]
    image = heat.imshow(routing["matrix"], vmin=0, vmax=1, cmap="Blues")
    for g, row in enumerate(routing["matrix"]):
        for e, share in enumerate(row):
            heat.text(e, g, f"{share:.2f}", ha="center", va="center", fontsize=8,
                      color="white" if share > 0.5 else "black")
    heat.set_yticks(range(len(groups)), groups)
    heat.set_xticks(range(len(routing["matrix"][0])))
    heat.set_xlabel("expert (first choice)")
    heat.set_title(f"MoR routing at {SIZES[0]} bits, I = {routing['mutual_information']:.2f} bits")
    fig.colorbar(image, ax=heat)
    return fig


def accuracy_rows(models: dict, tasks: list[str], which: str) -> list[list[str]]:
    """One row per model × length of the `which` measurements (matched or own_rule): cost and accuracy per task."""
    rows = []
    for kind, m in models.items():
        for size, r in m.get(which, {}).items():
            steps = [f"{r['mean_steps']:.1f}" if "mean_steps" in r else "–"]
            rows.append([LABELS[kind], size, *steps, f"{r['flops'] / 1e6:.2f}",
                         *[f"{r['accuracy'][t]:.1%}" for t in tasks], f"{r['mean_accuracy']:.1%}"])
    return rows


def markdown(results: dict) -> str:
    """The results as a markdown report: recipe, models, accuracy per task and length, routing, verdicts."""
    tasks, models, r = results["tasks"], results["models"], results["recipe"]
    size = str(SIZES[0])
    routed = {kind: m["matched"][size]["routing"] for kind, m in models.items() if "routing" in m["matched"][size]}
    routing_rows = [[LABELS[kind], t, *[f"{v:.2f}" for v in rt["matrix"][g]]]
                    for kind, rt in routed.items() for g, t in enumerate(tasks)]
    experts = max(len(rt["matrix"][0]) for rt in routed.values())
    header = ["bits", "mean steps", "MFLOPs / example", *tasks, "mean over tasks"]
    lines = [
        "# Hidden-task mix", "", md_machine(results["machine"], results["other_load_cores"]), "",
        f"Tasks {', '.join(tasks)} in one stream, drawn equally, task identity hidden; trained on lengths "
        f"8–{SIZES[0]}, evaluated on {r['examples']} fresh strings per length (seed {EVAL_SEED}): {SIZES[0]} bits (the "
        f"top of the training range) and {SIZES[1]} (twice it). Every kind: mor's Trainer, {r['steps']} steps of "
        f"batch 96, AdamW lr 2e-3, warmup then cosine, seed {r['seed']}, {r['threads']} thread(s). Model settings: "
        f"`{r['model']}`; loss weights: `{r['loss']}`. Matched compute: widths chosen so the forward FLOPs per "
        f"example at {SIZES[0]} bits (torch FlopCounterMode: matrix products and convolutions) are closest to MoR's "
        "at its training depth. Accuracy = the whole string right.", "",
        md_table(["model", "parameters", "width", "train s"], [[LABELS[k], f"{m['parameters']:,}", str(m["dim"]),
                                                                f"{m['train_s']:.0f}"] for k, m in models.items()]),
        "", "## Accuracy per task at matched compute (every model at its training depth)", "",
        md_table(["model", *header], accuracy_rows(models, tasks, "matched")), "",
        "## Reflective models under their own halting rule "
        f"({next(m['rule'] for m in models.values() if 'rule' in m)}: may think longer on longer strings)", "",
        md_table(["model", *header], accuracy_rows(models, tasks, "own_rule")), "",
        f"## Task → expert routing at {size} bits (fraction of each task's inputs whose first choice is each expert)",
        "", md_table(["model", "task", *[f"expert {e}" for e in range(experts)]], routing_rows), "",
        *[f"{LABELS[kind]}: I(task; expert) = {rt['mutual_information']:.3f} bits (at most {rt['max_bits']:.3f})."
          for kind, rt in routed.items()], "",
        "## Against the goals", "", *[f"- {line}" for line in verdicts(results)], "",
        f"Wall time: {results['wall_s']:.0f} s.",
    ]
    return "\n".join(lines)


def verdicts(results: dict) -> list[str]:
    """Plain statements against the issue's goals: MoR best overall; specialisation visible (MI ≥ 0.5 bits)."""
    models, lines = results["models"], []
    for which, what in (("matched", "at matched compute"), ("own_rule", "under its own halting rule")):
        for size in map(str, SIZES):
            mean = {kind: m[which][size]["mean_accuracy"] for kind, m in models.items() if which in m}
            rival = max((k for k in mean if k != "mor"), key=mean.get)
            status = ("met" if mean["mor"] > mean[rival] else "tied, so NOT met" if mean["mor"] == mean[rival]
                      else "NOT met")
            beaten = [f"{LABELS[k]} on {t}" for t in results["tasks"] for k, m in models.items()
                      if which in m and m[which][size]["accuracy"][t] > models["mor"][which][size]["accuracy"][t]]
            against = f"MoR {mean['mor']:.1%}; best other, {LABELS[rival]}, {mean[rival]:.1%}"
            lines.append(f"MoR best overall {what}, {size} bits: {status} ({against})"
                         + (f"; beaten by {', '.join(beaten)}." if beaten else "."))
    mi = models["mor"]["matched"][str(SIZES[0])]["routing"]["mutual_information"]
    lines.append(f"Specialisation (I(task; expert) ≥ 0.5 bits): {'met' if mi >= 0.5 else 'NOT met'} ({mi:.3f} bits).")
    return lines


def run(quick: bool = False, out_dir: str = "bench-results", threads: int = 1, steps: int | None = None,
        model: dict | None = None, loss: dict | None = None, examples: int | None = None, seed: int = SEED) -> dict:
    """Train and measure the four kinds; write `out_dir`/mix.json, mix.md and mix.png; return the results."""
    suite = SuiteRun("mix", quick, [threads])
    steps, examples = steps or (30 if quick else 1500), examples or (96 if quick else 1536)
    cfg = config(steps, threads, model or {}, loss or {}, seed)
    task = Mix(sizes=(8, SIZES[0]))
    data = {str(size): task.grouped_eval_set(examples, size, seed=EVAL_SEED) for size in SIZES}
    with torch_threads(threads):
        dims = matched_dims(cfg, task, KINDS, flops_on(data[str(SIZES[0])][0][:8]), DIMS)
        models = {kind: run_kind(cfg, task, kind, dims[kind], data) for kind in KINDS}
    recipe = {"steps": steps, "seed": seed, "threads": threads, "examples": examples, "sizes": list(SIZES),
              "model": cfg.model.model_dump(mode="json", exclude={"kind", "heads", "hidden"}),
              "loss": cfg.train.loss.model_dump()}
    return suite.finish(out_dir, {"tasks": list(task.groups), "recipe": recipe, "models": models}, markdown, figure)


def main() -> None:
    """`python -m benchmarks.hidden_mix [--quick] [--steps N] [--seed N] [--model YAML] [--loss YAML] [--out DIR]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 steps, 96 examples (seconds)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=SEED, help="training seed (the evaluation strings stay the same)")
    parser.add_argument("--model", type=yaml.safe_load, default=None, help='model overrides, e.g. "{num_experts: 4}"')
    parser.add_argument("--loss", type=yaml.safe_load, default=None, help='loss weights, e.g. "{load_balance: 0.1}"')
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    print(markdown(run(args.quick, args.out, steps=args.steps, model=args.model, loss=args.loss, seed=args.seed)))


if __name__ == "__main__":
    main()
