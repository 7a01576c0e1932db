"""The `mor` command: `mor demo` runs the built-in example, `mor bench SUITE` runs a benchmark suite.

User errors print as one line (`error: …`) with exit code 2; `--debug` shows the traceback instead.
"""

import importlib
import sys
from pathlib import Path
from types import ModuleType

import typer
from rich.console import Console
from rich.table import Table

from mor.errors import MorError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Mixture of Reflection: route, reflect, integrate.")
console = Console()
SUITES = {"layer": "layer_speed"}
state = {"debug": False}


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")) -> None:
    state["debug"] = debug


@app.command()
def demo(steps: int = typer.Option(500, min=1, help="Optimiser steps for each model."),
         seed: int = typer.Option(0, help="Random seed.")) -> None:
    """Train MoR and a depth-1 MoE on running parity (about a minute on CPU) and compare them."""
    from mor.demo import run

    console.print(f"Training MoR and a depth-1 MoE for {steps} steps each on 8–16-bit running parity …")
    rows, params, times = run(steps=steps, seed=seed)
    table = Table(title="Running parity: accuracy by string length and halting rule")
    for column in ("model", "bits", "halting", "bit acc", "string acc", "steps"):
        table.add_column(column, justify="left" if column in ("model", "halting") else "right")
    for r in rows:
        table.add_row(r.model, str(r.length), r.rule, f"{r.position_accuracy:.1%}", f"{r.string_accuracy:.1%}",
                      f"{r.mean_steps:.1f}")
    console.print(table)
    for name in params:
        console.print(f"{name}: {params[name]:,} parameters, trained in {times[name]:.1f} s")


@app.command()
def bench(suite: str = typer.Argument(..., help=f"Suite to run: {', '.join(SUITES)}."),
          quick: bool = typer.Option(False, "--quick", help="Short smoke version."),
          out: Path = typer.Option(Path("bench-results"), help="Folder for the JSON and markdown results.")) -> None:
    """Run a benchmark suite from the repository's benchmarks/ folder and print its markdown table."""
    if suite not in SUITES:
        raise MorError(f"mor bench: unknown suite {suite!r}; choose one of: {', '.join(SUITES)}")
    module = _load_benchmark(SUITES[suite])
    module.run(quick=quick, out_dir=str(out))
    console.print((out / f"{suite}.md").read_text())


def _load_benchmark(name: str) -> ModuleType:
    """Import benchmarks.NAME from the current folder or the source checkout mor was installed from."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "benchmarks" / f"{name}.py").is_file():
            sys.path.insert(0, str(root))
            return importlib.import_module(f"benchmarks.{name}")
    raise MorError("mor bench: no benchmarks/ folder found; run it from the root of the mor repository")


def run() -> None:
    """Entry point: one-line errors unless --debug."""
    try:
        app()
    except MorError as err:
        if state["debug"]:
            raise
        console.print(f"[red]error:[/red] {err}", highlight=False)
        raise SystemExit(2) from None
