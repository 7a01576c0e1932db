"""`mor eval`: rebuild a checkpoint's model from the config saved with it and sweep depth, threshold and size."""

import json
import re
from pathlib import Path

from rich.console import Console

from mor.config import validate
from mor.data import Task, get_task
from mor.durable import check_folder
from mor.errors import ConfigError, check
from mor.train import checkpoint
from mor.train.build import build_model
from mor.train.config import EvalConfig, saved
from mor.train.evaluate import check_examples, check_size, evaluate, halting_options, model_kind
from mor.train.report import summary, write_report
from mor.train.trainer import stopped_early

FLAGS = {"max_steps": "--max-steps", "thresholds": "--threshold", "stable_steps": "--stable"}
OPTIONS = {**FLAGS, "sizes": "--size", "examples": "--examples"}


def evaluate_checkpoint(path: Path, out: Path | None = None, *, max_steps: list[int] | None = None,
                        thresholds: list[float] | None = None, sizes: list[int] | None = None,
                        stable_steps: list[int] | None = None, examples: int | None = None,
                        data: Path | None = None, console: Console | None = None) -> Path:
    """Evaluate the checkpoint at `path` with the run's eval settings, overridden where given; returns the report.
    A run folder whose training stopped early is scored at its best checkpoint, as its training report was. `data`:
    a table model is scored on that file's rows instead of its test split (report in RUN/eval-<file name>)."""
    console = console or Console()
    if out is not None:
        check_folder(Path(out), "--out")
    given = {k: v for k, v in {"max_steps": max_steps, "thresholds": thresholds, "sizes": sizes,
                               "stable_steps": stable_steps, "examples": examples}.items() if v is not None}
    try:
        validate(EvalConfig, given, "mor eval")  # before the checkpoint loads
    except ConfigError as err:  # named by the option the user typed: `--threshold`, not `thresholds.0`
        raise ConfigError(re.sub(r"^mor eval: (\w+)(\.\d+)?:", lambda m: f"mor eval: {OPTIONS[m[1]]}:", str(err))) \
            from None
    loaded = checkpoint.load(path)
    config = saved(loaded.config, loaded.path / checkpoint.CONFIG)
    run_folder = (Path(path) / checkpoint.LATEST).is_file()
    if run_folder and stopped_early(loaded.state["step"], loaded.state.get("stale", 0), config.train):
        last = loaded.path.name
        loaded = checkpoint.load(Path(path) / "best")
        console.print(f"The run stopped early: scoring its best checkpoint, {loaded.path.name}, as its report did "
                      f"(give {Path(path) / last} for the last one).", markup=False, highlight=False)
    task = get_task(config.data.task, **config.data.options)
    checkpoint.check_data(loaded.state, task.fingerprints(), loaded.path, "evaluate it on the data it was trained on, "
                                                                        "or train again")
    if data is not None:
        task = _on_file(task, Path(data), config.data.options.get("sep"))
    model = build_model(config.model, task)
    checkpoint.restore(model, loaded.weights, loaded.path)
    sweeps = halting_options(model)
    for name, flag in FLAGS.items():
        check(name not in given or name in sweeps,
              f"{flag}: the {model_kind(model)} model at {loaded.path} has nothing for it to sweep (it "
              f"{'halts by no rule' if sweeps else 'cannot reflect'}); leave {flag} out")
    eval_cfg = config.eval.model_copy(update=given)
    for size in sizes or []:
        check_size(task, size, "--size")
    if examples is not None:
        check_examples(task, "--examples")
    scored = f"{config.data.task}" if data is None else f"{Path(data).name}"
    console.print(f"Evaluating {loaded.path} ({config.model.kind} on {scored}) …")
    results = {f"{config.model.kind} @ step {loaded.state['step']}": evaluate(model, task, eval_cfg,
                                                                             getattr(task, "sizes", None))}
    out = Path(out or loaded.path.parent / ("eval" if data is None else f"eval-{Path(data).stem}"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(results, indent=1))
    title = f"mor eval: {loaded.path}" + ("" if data is None else f" on {Path(data).resolve()}")
    report = write_report(out, title, loaded.path.parent / "metrics.jsonl", results)
    console.print(summary(results), markup=False, highlight=False)
    return report


def _on_file(task: Task, data: Path, sep: str | None) -> Task:
    """`task` scored on the rows of the table `data` (CSV with the training file's delimiter, or Parquet), put
    through the preprocessing fitted on its training split."""
    from mor.data.files import is_parquet, read_table
    from mor.data.table_rows import encoded_rows
    from mor.data.tabular import TabularTask

    check(isinstance(task, TabularTask), f"--data: only a model trained on a table (task csv or parquet) is scored "
                                         f"on another file; task {task.name!r} makes its own examples; leave it out")
    parquet = data.expanduser().is_file() and is_parquet(data.expanduser())
    frame = read_table(data, "parquet" if parquet else "csv", None if parquet else sep, field="--data")
    return task.scored_on(encoded_rows(task, frame, data.name), data.name)
