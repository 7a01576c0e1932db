"""A whole run: train the configured model and its `compare` baselines, evaluate them all, write the report."""

import json
from pathlib import Path

from rich.console import Console

from mor.train.config import RunConfig
from mor.train.devices import described, leave_process_group
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
    tc = config.train
    batch = f"{config.data.batch_size}" + (f" × {tc.grad_accum} accumulated" if tc.grad_accum > 1 else "")
    evaluations, notes = {}, [f"Task {config.data.task}, {tc.steps} steps of batch {batch}, seed {tc.seed}, on "
                              f"{described(trainers[0].device)}; config in {run_dir}/step-*/config.yaml."]
    for trainer in trainers:
        if trainer.rank == 0:
            console.print(f"Training {LABELS[trainer.kind]} for {tc.steps} steps in {trainer.run_dir}", markup=False,
                          highlight=False)
        trainer.fit(resume=resume)
        if trainer.rank != 0:
            continue
        if trainer.stopped_early:
            notes.append(f"{LABELS[trainer.kind]} stopped early at step {trainer.step} ({tc.early_stop} evaluations "
                         f"without gain) and is scored with its best checkpoint, step {trainer.restore_best()}.")
        console.print(f"Evaluating {LABELS[trainer.kind]} …")
        sizes = getattr(trainer.task, "sizes", None)
        evaluations[LABELS[trainer.kind]] = evaluate(trainer.model, trainer.task, config.eval, sizes)
    if trainers[0].rank != 0:
        leave_process_group()
        return run_dir / "report.md"
    (run_dir / "results.json").write_text(json.dumps(evaluations, indent=1))
    report = write_report(run_dir, f"mor run: {config.model.kind} on {config.data.task}",
                          run_dir / "metrics.jsonl", evaluations, notes)
    console.print(summary(evaluations), markup=False, highlight=False)
    leave_process_group()
    return report
