"""A whole run: train the configured model and its `compare` baselines, evaluate them all, write the report."""

import json
from pathlib import Path

from rich.console import Console

from mor.train.config import RunConfig
from mor.train.evaluate import evaluate
from mor.train.report import summary, write_report
from mor.train.trainer import Trainer

LABELS = {"mor": "MoR", "moe": "MoE (depth 1)", "reflection": "single reflection expert", "dense": "dense"}


def run(config: RunConfig, resume: bool = False, console: Console | None = None) -> Path:
    """Train, evaluate and report; baselines live in sub-folders of the run. Returns the report's path."""
    console = console or Console()
    run_dir = Path(config.checkpoint.dir)
    trainers = [Trainer(config, run_dir, console=console)]
    task = trainers[0].task  # built (read, preprocessed) once for the model and all its baselines
    trainers += [Trainer(config, run_dir / f"baseline-{kind}", kind=kind, console=console, task=task)
                 for kind in config.compare]
    evaluations, notes = {}, []
    for trainer in trainers:
        trainer.fit(resume=resume)
        if trainer.rank != 0:
            continue
        console.print(f"Evaluating {LABELS[trainer.kind]} …")
        sizes = getattr(trainer.task, "sizes", None)
        evaluations[LABELS[trainer.kind]] = evaluate(trainer.model, trainer.task, config.eval, sizes)
    if trainers[0].rank != 0:
        return run_dir / "report.md"
    (run_dir / "results.json").write_text(json.dumps(evaluations, indent=1))
    notes.append(f"Task {config.data.task}, {config.train.steps} steps of batch {config.data.batch_size}, "
                 f"seed {config.train.seed}; config in {run_dir}/step-*/config.yaml.")
    report = write_report(run_dir, f"mor run: {config.model.kind} on {config.data.task}",
                          run_dir / "metrics.jsonl", evaluations, notes)
    console.print(summary(evaluations), markup=False, highlight=False)
    return report
