"""The `mor` command: `mor train` (the main job without a config), `mor eval`, `mor bench`, `mor route`, `mor serve`.

User errors print as one line (`error: …`) with exit code 2; `--debug` shows the traceback instead.
"""

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import typer
from rich.console import Console
from rich.markup import escape

from mor.durable import make_folder
from mor.errors import MorError
from mor.serve.commands import app as serve_app
from mor.system.commands import app as route_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Mixture of Reflection: route, reflect, integrate.")
console = Console(soft_wrap=True)  # paths and long lines stay whole in logs and pipes
SUITES: dict[str, tuple[str, dict]] = {  # suite → benchmarks/ module and the options its run() gets
    "depth": ("reasoning_depth", {}), "depth-addition": ("reasoning_depth", {"task": "addition"}),
    "depth-carry": ("reasoning_depth", {"task": "carry"}),
    "mix": ("hidden_mix", {}), "tabular": ("tabular", {}), "chars": ("char_lm", {}), "speed": ("speed", {}),
    "layer": ("layer_speed", {}), "route": ("routing", {}), "serve": ("serve_load", {})}
state = {"debug": False}


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")) -> None:
    state["debug"] = debug


@app.command()
def train(config: Path | None = typer.Argument(None, help="YAML config; none: the built-in main job."),
          resume: bool = typer.Option(False, "--resume", help="Continue the run in checkpoint.dir."),
          out: Path | None = typer.Option(None, help="Run folder (overrides checkpoint.dir).")) -> None:
    """Train the configured model and its baselines, evaluate them and write a report with plots."""
    from mor.memory import keep_freed_memory
    from mor.train.config import load, main_job
    from mor.train.run import run

    keep_freed_memory()  # large temporaries are reused step after step, not page-faulted in again
    cfg = load(config) if config else main_job()
    if out is not None:
        cfg.checkpoint.dir = out
    if config is None:
        console.print(f"No config given: the built-in main job ({cfg.model.kind} on {cfg.data.task} against "
                      f"{', '.join(cfg.compare)}), in {cfg.checkpoint.dir}")
    try:
        report = run(cfg, resume=resume, console=console)
    except KeyboardInterrupt:
        Console(stderr=True).print(_interrupted(cfg.checkpoint.dir, cfg.checkpoint.every), highlight=False,
                                   soft_wrap=True)
        raise
    if os.environ.get("RANK", "0") == "0":  # under torchrun, only the process that wrote it says so
        console.print(f"Report: {escape(str(report))}")


def _interrupted(run_dir: Path, every: int) -> str:
    """What --resume will do after an interrupt: continue from the last checkpoint, or start over without one."""
    from mor.train.checkpoint import LATEST

    if (run_dir / LATEST).is_file():
        return "interrupted: the same command with --resume continues from the last checkpoint"
    return (f"interrupted before the first checkpoint (one every {every} steps, and at each better evaluation): "
            "the same command with --resume starts again from step 0")


@app.command("eval")
def eval_(checkpoint: Path = typer.Argument(..., help="Run folder, RUN/best, or a step-* folder."),
          max_steps: str | None = typer.Option(None, help="Depths to sweep, e.g. 1,2,4,8,16,32,64,100."),
          threshold: str | None = typer.Option(None, help="Critic thresholds, e.g. 0.9,0.99."),
          size: str | None = typer.Option(None, help="Instance sizes, e.g. 16,32,64."),
          stable: str | None = typer.Option(None, help="Answer-stability windows, e.g. 3,5."),
          examples: int | None = typer.Option(None, min=1,
                                              help="Examples per measurement (generated tasks; datasets: all)."),
          data: Path | None = typer.Option(None, help="A table model only: score the rows of this CSV/Parquet file "
                                                      "(the training file's columns) instead of its test split."),
          out: Path | None = typer.Option(None, help="Folder for eval.json, report.md and plots/.")) -> None:
    """Evaluate a checkpoint at any reflection depth, halting threshold and instance size."""
    from mor.train.evaluate_cli import evaluate_checkpoint

    report = evaluate_checkpoint(checkpoint, out, max_steps=_numbers(max_steps, "--max-steps", int),
                                 thresholds=_numbers(threshold, "--threshold", float),
                                 sizes=_numbers(size, "--size", int), stable_steps=_numbers(stable, "--stable", int),
                                 examples=examples, data=data, console=console)
    console.print(f"Report: {escape(str(report))}")


def _numbers(text: str | None, option: str, kind: type) -> list | None:
    """Comma-separated values of `kind` (None when the option was not given), or a one-line error."""
    if text is None:
        return None
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise MorError(f"{option}: expected comma-separated {kind.__name__} values like 1,2,4, got {text!r}")
    return values


@app.command()
def bench(suite: str = typer.Argument(..., help=f"Suite to run: {', '.join(SUITES)}, or all of them: all."),
          quick: bool = typer.Option(False, "--quick", help="Short smoke version."),
          out: Path = typer.Option(Path("bench-results"), help="Folder for the JSON and markdown results.")) -> None:
    """Run a benchmark suite (or all) from the repository's benchmarks/ folder and print its markdown tables."""
    if suite != "all" and suite not in SUITES:
        raise MorError(f"mor bench: unknown suite {suite!r}; choose one of: {', '.join(SUITES)}, all")
    make_folder(out, "--out")  # a bad --out fails now, not after minutes of benchmarking
    for name in SUITES if suite == "all" else [suite]:
        module, options = SUITES[name]
        _load_benchmark(module).run(quick=quick, out_dir=str(out), **options)
        console.print((out / f"{name}.md").read_text(), markup=False, highlight=False, soft_wrap=True)


def _load_benchmark(name: str) -> ModuleType:
    """Import benchmarks.NAME from the current folder or the source checkout mor was installed from."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "benchmarks" / f"{name}.py").is_file():
            sys.path.insert(0, str(root))
            return importlib.import_module(f"benchmarks.{name}")
    raise MorError("mor bench: no benchmarks/ folder found; run it from the root of the mor repository")


app.add_typer(route_app, name="route")
app.add_typer(serve_app, name="serve")


def run() -> None:
    """Entry point: one-line errors unless --debug."""
    try:
        app()
    except MorError as err:
        if state["debug"]:
            raise
        Console(stderr=True).print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
