"""Reports of a run: a markdown file with PNG plots, and a short console summary, built from the training
metrics (JSONL) and the `evaluate` results of the main model and its baselines.

Every comparison is stated both ways: the report says plainly where the main model does not beat a baseline.
Token models (language models) are compared on bits per character instead of accuracy.
"""

import math
from collections.abc import Sequence
from pathlib import Path

from mor.train import plots
from mor.train.records import (
    at_train_depth,
    best_depth,
    better,
    depth_rows,
    is_token_eval,
    own_rule,
    ranked_on,
    read_metrics,
    size_label,
)


def write_report(run_dir: Path, title: str, metrics_path: Path, evaluations: dict[str, dict],
                 notes: Sequence[str] = ()) -> Path:
    """Write `run_dir/report.md` and its plots in `run_dir/plots/`; the first evaluation is the main model."""
    run_dir = Path(run_dir)
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    records, skipped = read_metrics(Path(metrics_path))
    notes = [*notes] + ([f"{skipped} unreadable line(s) of {metrics_path} were skipped."] if skipped else [])
    main_name, main = next(iter(evaluations.items()))
    figures = [
        ("training.png", plots.training_figure(records) if records else None,
         "Training curves: loss terms and metrics against step (solid: train, dashed: eval)."),
        ("accuracy_depth.png", plots.accuracy_figure(evaluations),
         f"Accuracy against reflection depth per size; ★ marks {main_name}'s own halting rule, "
         "flat lines are baselines at their single depth."),
        ("halting_steps.png", plots.histogram_figure(main_name, main),
         f"Reflection steps per example under {main_name}'s own halting rule at the largest size."),
        ("routing.png", plots.routing_figure(main_name, main),
         f"{main_name}: per-expert activation rate and, for grouped tasks, which expert each group goes to."),
        ("cost_depth.png", plots.cost_figure(evaluations), "Compute and latency per example against depth."),
    ]
    lines = [f"# {title}", "", *(f"- {note}" for note in notes), *([""] if notes else []),
             *_models_table(evaluations), *(_lm_headline if is_token_eval(main) else _headline)(evaluations),
             *_effectiveness(evaluations),
             *_halting_table(main_name, main), *_routing_text(evaluations), "## Plots", ""]
    for file, figure, caption in figures:
        if figure is not None:
            plots.save(figure, run_dir / "plots" / file)
            lines += [f"![{Path(file).stem}](plots/{file})", "", f"*{caption}*", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def summary(evaluations: dict[str, dict]) -> str:
    """A short plain-text comparison for the console: best and own-rule accuracy per size (bits per character
    for token models), then shortfalls."""
    main_name, main = next(iter(evaluations.items()))
    lines = _lm_lines(evaluations) if is_token_eval(main) else _accuracy_lines(evaluations)
    shortfalls = _shortfalls(evaluations)
    lines += ([f"Where {main_name} does not win:", *(f"  {s}" for s in shortfalls[:5])] if shortfalls
              else [f"{main_name} beats every baseline at every size."] if len(evaluations) > 1 else [])
    lines += [f"  … and {len(shortfalls) - 5} more (see report.md)"] if len(shortfalls) > 5 else []
    load = main.get("load")
    if load:
        mi = f", mutual information {load['mutual_information']:.3f} bits" if "mutual_information" in load else ""
        lines.append(f"Routing: expert load {_nums(load['rate'])}{mi}")
    return "\n".join(lines)


def _accuracy_lines(evaluations: dict[str, dict]) -> list[str]:
    key, metric, _ = ranked_on(next(iter(evaluations.values())))
    lines = [f"Evaluation — {metric}: best fixed depth @ depth | own halting rule in mean steps"]
    for size in next(iter(evaluations.values()))["sizes"]:
        lines.append(f"{size_label(size)}:")
        for name, ev in evaluations.items():
            best, own = best_depth(ev, size), own_rule(ev, size)
            text = f"  {name:<18} {_num(best[key])} @ {best['max_steps']}" if best else f"  {name:<18} —"
            if own:
                text += f" | {_num(own[key])} in {own['mean_steps']:.1f} steps"
            lines.append(text)
    return lines


def _lm_lines(evaluations: dict[str, dict]) -> list[str]:
    rows = {name: at_train_depth(ev, None) for name, ev in evaluations.items()}
    return ["Evaluation at training depth — bits per character | next-character accuracy",
            *(f"  {name:<18} {_num(r['bits_per_char'])} | {_num(r['accuracy'])}" for name, r in rows.items())]


def _shortfalls(evaluations: dict[str, dict]) -> list[str]:
    """Every (size, baseline) where the main model's best or own-rule accuracy is not above the baseline's best;
    for token models, every baseline whose bits per character at training depth are not above the main model's."""
    (main_name, main), *baselines = evaluations.items()
    out = []
    if is_token_eval(main):
        mine = at_train_depth(main, None)["bits_per_char"]
        for name, ev in baselines:
            theirs = at_train_depth(ev, None)["bits_per_char"]
            if mine >= theirs:
                out.append(f"{main_name} {'ties' if mine == theirs else 'does NOT beat'} {name}: {_num(mine)} vs "
                           f"{_num(theirs)} bits/char at training depth")
        return out
    key, metric, higher = ranked_on(main)
    metric = "" if higher else f"{metric} "  # accuracy goes without saying
    for size in main["sizes"]:
        mine, own = best_depth(main, size), own_rule(main, size)
        for name, ev in baselines:
            theirs = best_depth(ev, size)
            if mine is None or theirs is None:
                continue
            against = f"{name}'s best {_num(theirs[key])} (depth {theirs['max_steps']})"
            if not better(main, mine[key], theirs[key]):
                verb = "ties" if mine[key] == theirs[key] else "does NOT beat"
                out.append(f"{size_label(size)}: {main_name} {verb} {name}: best {metric}{_num(mine[key])} "
                           f"(depth {mine['max_steps']}) vs {against}")
            if own and not better(main, own[key], theirs[key]):
                verb = "ties" if own[key] == theirs[key] else "does NOT beat"
                out.append(f"{size_label(size)}: {main_name} with its own halting rule ({metric}{_num(own[key])} in "
                           f"{own['mean_steps']:.1f} steps) {verb} {against}")
    return out


# ---- markdown

def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows), ""]


def _models_table(evaluations: dict[str, dict]) -> list[str]:
    rows = [[name, ev["model"]["kind"], f"{ev['model']['parameters']:,}", ev["model"]["train_depth"],
             ev["model"]["halting"] or "—"] for name, ev in evaluations.items()]
    task = next(iter(evaluations.values()))
    return ["## Models", "", f"Task `{task['task']}`, training sizes {task['train_sizes'] or '—'}.", "",
            *_table(["model", "kind", "parameters", "training depth", "own halting rule"], rows)]


def _headline(evaluations: dict[str, dict]) -> list[str]:
    main_name, main = next(iter(evaluations.items()))
    key, metric, higher = ranked_on(main)
    second = "position_accuracy" if higher else "r2"
    rows = []
    for size in main["sizes"]:
        for name, ev in evaluations.items():
            best, train, own = best_depth(ev, size), at_train_depth(ev, size), own_rule(ev, size)
            spent = own or train or best
            rows.append([size_label(size), f"**{name}**" if name == main_name else name,
                         f"{_num(best[key])} @ {best['max_steps']}" if best else "—",
                         _num(best[second]) if best else "—",
                         f"{_num(train[key])} @ {train['max_steps']}" if train else "—",
                         _num(own[key]) if own else "—", f"{own['mean_steps']:.1f}" if own else "—",
                         f"{spent['compute']:.1f}" if spent else "—"])
    shortfalls = _shortfalls(evaluations)
    verdict = ([f"### Where {main_name} does not beat a baseline", "", *(f"- {s}" for s in shortfalls), ""]
               if shortfalls else [f"{main_name} beats every baseline at every size, on best fixed depth and "
                                   "with its own halting rule.", ""] if len(evaluations) > 1
               else ["No baseline was evaluated, so nothing here is a comparison.", ""])
    meaning = ("Accuracy is the fraction of examples entirely right; position accuracy counts positions." if higher
               else "MSE is the mean squared error on standardised targets (lower is better); R² is 1 − SSE/SST.")
    return ["## Headline", "",
            f"{meaning} Compute is cell evaluations per example under the model's own rule (else its training "
            "depth).", "",
            *_table(["size", "model", f"best {metric} @ depth", "position acc. (best)" if higher else "R² (best)",
                     f"{metric} @ training depth", f"own rule: {metric}", "own rule: mean steps",
                     "compute / example"], rows), *verdict]


def _lm_headline(evaluations: dict[str, dict]) -> list[str]:
    main_name = next(iter(evaluations))
    rows = []
    for name, ev in evaluations.items():
        train = at_train_depth(ev, None)
        best = min(depth_rows(ev, None), key=lambda r: (r["bits_per_char"], r["max_steps"]))
        rows.append([f"**{name}**" if name == main_name else name, _num(train["bits_per_char"]),
                     _num(train["accuracy"]), f"{_num(best['bits_per_char'])} @ {best['max_steps']}",
                     f"{1000 * train['token_latency_ms']:.1f}"])
    shortfalls = _shortfalls(evaluations)
    verdict = ([f"### Where {main_name} does not beat a baseline", "", *(f"- {s}" for s in shortfalls), ""]
               if shortfalls else [f"{main_name} beats every baseline on bits per character.", ""]
               if len(evaluations) > 1 else ["No baseline was evaluated, so nothing here is a comparison.", ""])
    return ["## Headline", "",
            "Next-character cross-entropy in bits (lower is better) and accuracy on held-out text at training "
            "depth; best bits/char over the reflection depths evaluated; latency per token.", "",
            *_table(["model", "bits/char", "accuracy", "best bits/char @ depth", "latency / token (µs)"], rows),
            *verdict]


def _effectiveness(evaluations: dict[str, dict]) -> list[str]:
    higher = ranked_on(next(iter(evaluations.values())))[2]
    gained = "Accuracy points gained" if higher else "MSE removed (standardised targets; negative: MSE grew)"
    out = ["## Reflection depth effectiveness", "",
           f"{gained} per extra reflection step between consecutive depths.", ""]
    for name, ev in evaluations.items():
        steps = list(dict.fromkeys((r["from"], r["to"]) for r in ev["effectiveness"]))
        if not steps:
            continue
        by = {(r["size"], r["from"], r["to"]): r["per_step"] for r in ev["effectiveness"]}
        scale, digits = (100, 2) if higher else (1, 4)
        rows = [[size_label(size), *(f"{scale * by[(size, a, b)]:+.{digits}f}" if (size, a, b) in by else "—"
                                     for a, b in steps)] for size in ev["sizes"]]
        out += [f"**{name}**", "", *_table(["size", *(f"{a}→{b}" for a, b in steps)], rows)]
    return out


def _halting_table(name: str, ev: dict) -> list[str]:
    if not ev["halting"]:
        return []
    key, metric, higher = ranked_on(ev)
    second, second_name = ("position_accuracy", "position acc.") if higher else ("r2", "R²")
    rows = [[size_label(r["size"]), r["rule"] + (" (own)" if r["own"] else ""), _num(r[key]),
             _num(r[second]), f"{r['mean_steps']:.1f}", f"{r['fraction_of_max']:.2f}",
             f"{r['compute']:.1f}"] for r in ev["halting"]]
    return [f"## Halting ({name})", "",
            "Adaptive rules at the largest depth: critic confidence ≥ τ, an answer unchanged for k steps, or both.",
            "", *_table(["size", "rule", metric, second_name, "mean steps", "fraction of max", "compute"], rows)]


def _routing_text(evaluations: dict[str, dict]) -> list[str]:
    out = []
    for name, ev in evaluations.items():
        load = ev.get("load")
        if not load:
            continue
        out += [f"- **{name}** at {size_label(load['size'])}: expert activation rate {_nums(load['rate'])}"]
        if "matrix" in load:
            out[-1] += (f"; mutual information I(group; expert) = {load['mutual_information']:.3f} bits "
                        f"(at most {math.log2(len(load['groups'])):.3f})")
    main = next(iter(evaluations.values())).get("load") or {}
    if "matrix" in main:
        header = ["group", *(f"expert {e}" for e in range(len(main["rate"])))]
        rows = [[g, *(f"{v:.2f}" for v in row)] for g, row in zip(main["groups"], main["matrix"], strict=True)]
        out += ["", "Fraction of each group's examples whose first-choice expert is e:", "", *_table(header, rows)]
    return ["## Routing", "", *out, ""] if out else []


def _num(value: float) -> str:
    return f"{value:.3f}"


def _nums(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


