"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot state)."""

import math
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mor.train.records import at_train_depth, depth_rows, is_token_eval, own_rule, ranked_on, size_label

LOSS_TERMS = ("loss", "task", "ponder", "halting_kl", "critic", "consistency", "load_balance", "z_loss")


def save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure).print_png(path)


def _grid(panels: int, width: float = 4.5, height: float = 3.2) -> tuple[Figure, list[Axes]]:
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    figure = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return figure, axes[:panels]


def training_figure(records: list[dict]) -> Figure:
    keys = list(dict.fromkeys(k for r in records for k, v in r.items()
                              if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)))
    panels = [[k for k in keys if k in LOSS_TERMS]] + [[k] for k in keys if k not in LOSS_TERMS]
    panels = [p for p in panels if p]
    figure, axes = _grid(len(panels))
    for ax, panel in zip(axes, panels, strict=True):
        for key in panel:
            for kind, style in (("train", "-"), ("eval", "--")):
                points = [(r.get("step", i), r[key]) for i, r in enumerate(records)
                          if r.get("kind", "train") == kind and isinstance(r.get(key), int | float)]
                if points:
                    ax.plot(*zip(*points, strict=True), style, label=f"{key} ({kind})", marker="." if
                            len(points) < 20 else None)
        values = [r[k] for r in records for k in panel if isinstance(r.get(k), int | float)]
        if len(panel) > 1 and values and min(values) > 0:
            ax.set_yscale("log")
        ax.set(xlabel="step", title="loss terms" if len(panel) > 1 else panel[0])
        ax.legend(fontsize=7)
    return figure


def accuracy_figure(evaluations: dict[str, dict]) -> Figure:
    """The ranking metric (accuracy for classes, MSE for values) against reflection depth, per size."""
    main_name, main = next(iter(evaluations.items()))
    key, metric, higher = ranked_on(main)
    figure, axes = _grid(len(main["sizes"]))
    for ax, size in zip(axes, main["sizes"], strict=True):
        for i, (name, ev) in enumerate(evaluations.items()):
            rows, color = depth_rows(ev, size), f"C{i}"
            if len(rows) > 1 and ev["model"]["train_depth"] > 1:
                ax.plot([r["max_steps"] for r in rows], [r[key] for r in rows], "-" if i == 0 else "--",
                        marker="o", color=color, label=name)
            else:
                row = at_train_depth(ev, size) or (rows[0] if rows else None)
                if row:
                    ax.axhline(row[key], ls=":", color=color, label=name)
                    ax.plot(row["max_steps"], row[key], "s", color=color)
        own = own_rule(main, size)
        if own:
            ax.plot(own["mean_steps"], own[key], "*", ms=14, color="C0", label=f"{main_name} own rule")
        ax.axvline(main["model"]["train_depth"], color="grey", lw=0.8, label="training depth")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="reflection steps", ylabel=metric if higher else f"{metric} (standardised targets)",
               title=size_label(size))
        if higher:
            ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    return figure


def histogram_figure(name: str, ev: dict) -> Figure | None:
    histogram = ev.get("steps_histogram")
    if not histogram:
        return None
    figure, (ax,) = _grid(1, width=6)
    ax.bar(range(1, len(histogram["counts"]) + 1), histogram["counts"], color="C0")
    ax.set(xlabel="reflection steps", ylabel="examples",
           title=f"{name}: {histogram['rule']}, {size_label(histogram['size'])}")
    return figure


def routing_figure(name: str, ev: dict) -> Figure | None:
    load = ev.get("load")
    if not load:
        return None
    figure, axes = _grid(2 if "matrix" in load else 1)
    axes[0].bar(range(len(load["rate"])), load["rate"], color="C0")
    axes[0].set(xlabel="expert", ylabel="fraction of examples", title=f"{name}: expert activation rate",
                xticks=range(len(load["rate"])))
    if "matrix" in load:
        ax, matrix = axes[1], load["matrix"]
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for g, row in enumerate(matrix):
            for e, value in enumerate(row):
                ax.text(e, g, f"{value:.2f}", ha="center", va="center", color="w" if value < 0.6 else "k", fontsize=8)
        ax.set(xticks=range(len(load["rate"])), yticks=range(len(load["groups"])), yticklabels=load["groups"],
               xlabel="first-choice expert", title=f"group × expert (MI {load['mutual_information']:.2f} bits)")
        figure.colorbar(image, ax=ax)
    return figure


def cost_figure(evaluations: dict[str, dict]) -> Figure:
    figure, axes = _grid(2)
    for i, (name, ev) in enumerate(evaluations.items()):
        for j, size in enumerate(ev["sizes"]):
            rows = depth_rows(ev, size)
            for ax, key in zip(axes, ("compute", "latency_ms"), strict=True):
                ax.plot([r["max_steps"] for r in rows], [r[key] for r in rows], "-" if i == 0 else "--",
                        marker="o", color=f"C{i}", alpha=1 - 0.6 * j / max(1, len(ev["sizes"])),
                        label=f"{name}, {size_label(size)}")
    per = "token" if is_token_eval(next(iter(evaluations.values()))) else "example"
    for ax, label in zip(axes, (f"cell evaluations per {per}", "latency per example (ms)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(xlabel="reflection steps", ylabel=label)
        ax.legend(fontsize=6)
    return figure
