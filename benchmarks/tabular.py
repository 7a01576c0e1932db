"""Tabular: MoR, its baselines and scikit-learn's standard models under k-fold cross-validation on small tables.

Datasets: scikit-learn's bundled breast_cancer and wine (classification: accuracy) and diabetes (regression: R²
and RMSE), and a fixed sample of the mixture-of-regimes task (regression). Every model sees the same folds
(StratifiedKFold for classes, KFold for values; shuffled with a fixed seed). MoR and its baselines (MoE depth 1,
a single reflection expert, dense) are trained by mor's own Trainer with one recipe (early stopping on a split of
each fold's training rows, best weights kept), at matched parameters (each baseline's width is the one whose
parameter count is closest to MoR's). scikit-learn's HistGradientBoosting and logistic / ridge regression
(standard scaling in a Pipeline) keep their defaults. Every model runs on the same number of threads.

Run: `python -m benchmarks.tabular [--quick]` or `mor bench tabular`; writes tabular.json, tabular.md and
tabular.png.
"""

import argparse
import time

import numpy as np
import sklearn.datasets
import torch
from matplotlib.figure import Figure
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, r2_score, root_mean_squared_error
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from mor.data import DatasetTask, Regimes
from mor.data.base import SPLITS, Batch
from mor.data.bundled import BUNDLED
from mor.errors import check
from mor.nn.models import count_parameters
from mor.train.build import build_model
from mor.train.config import RunConfig, parse
from mor.train.run import LABELS as NEURAL_LABELS

from .common import (
    SuiteRun,
    fmt_mean_std,
    matched_dims,
    md_machine,
    md_table,
    mean_std,
    torch_threads,
    train_model,
    with_dim,
)

SEED = 0
DATASETS = ("breast_cancer", "wine", "diabetes", "regimes")
REGRESSION = frozenset({"diabetes", "regimes"})
REGIMES_ROWS = 2000  # one fixed sample of the regimes stream, cross-validated like the tables
NEURAL = ("mor", "moe", "reflection", "dense")
MODELS = (*NEURAL, "hgb", "linear")
LABELS = {**NEURAL_LABELS, "hgb": "HistGradientBoosting"}
MODEL = {"kind": "mor", "num_experts": 4, "k": 2, "dim": 32, "cell": "mlp", "train_steps": 4, "depth": 4,
         "halting": {"max_steps": 4}}
DIMS = range(4, 257)  # widths searched when matching a baseline's parameters to MoR's
VAL_FRACTION = 0.15  # of each fold's training rows: the neural models' early-stopping split
EVAL_EVERY, PATIENCE = 25, 6  # validate every 25 steps; stop after 6 validations without a new best


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and targets (class ids 0…C−1, or values) of dataset `name`; regimes: REGIMES_ROWS fixed draws."""
    if name == "regimes":
        x, y = Regimes(seed=SEED).eval_set(REGIMES_ROWS, seed=SEED + 1)  # the task's own seed drew its regimes
        return x.double().numpy(), y[:, 0].double().numpy()
    bunch = getattr(sklearn.datasets, BUNDLED[name])()
    target = bunch.target if name in REGRESSION else np.unique(bunch.target, return_inverse=True)[1]
    return bunch.data.astype(np.float64), target


class Fold(DatasetTask):
    """One fold as a finite task for mor's Trainer: features (and regression targets) standardised on the fold's
    training rows, of which VAL_FRACTION (stratified for classes) is held out as the Trainer's 'val' split for
    early stopping; the test rows are used only to score the final model."""

    sequence = False

    def __init__(self, name: str, x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray):
        self.name, self.in_dim = name, x.shape[1]
        self.kind = "regression" if name in REGRESSION else "classification"
        fit, val = train_test_split(train, test_size=VAL_FRACTION, random_state=SEED,
                                    stratify=y[train] if self.kind == "classification" else None)
        features = torch.as_tensor(StandardScaler().fit(x[train]).transform(x), dtype=torch.float32)
        if self.kind == "regression":
            self.target_scaler = StandardScaler().fit(y[train, None])
            targets = torch.as_tensor(self.target_scaler.transform(y[:, None]), dtype=torch.float32)
            self.out_dim = 1
        else:
            targets, self.out_dim = torch.as_tensor(y, dtype=torch.long), int(y.max()) + 1
        rows = {"train": fit, "val": val, "test": test}
        self._data = {split: (features[index], targets[index]) for split, index in rows.items()}

    def split(self, name: str) -> Batch:
        check(name in SPLITS, f"{self.name}: unknown split {name!r}; choose one of: {', '.join(SPLITS)}")
        return self._data[name]

    @torch.no_grad()
    def predict(self, model: nn.Module) -> np.ndarray:
        """`model`'s answers for the test rows in the dataset's own units: class ids, or values."""
        output = model(self._data["test"][0])
        if self.kind == "classification":
            return output.argmax(-1).numpy()
        return self.target_scaler.inverse_transform(output.double().numpy())[:, 0]


def split_folds(name: str, y: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row positions of each fold: stratified by class for classification, shuffled, fixed seed."""
    splitter = (KFold if name in REGRESSION else StratifiedKFold)(n_folds, shuffle=True, random_state=SEED)
    return list(splitter.split(np.zeros((len(y), 1)), y))


def sklearn_models(kind: str) -> dict[str, BaseEstimator]:
    """scikit-learn's standard answers for `kind`: a boosted tree and a scaled linear model, with defaults."""
    if kind == "classification":
        return {"hgb": HistGradientBoostingClassifier(random_state=SEED),
                "linear": make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))}
    return {"hgb": HistGradientBoostingRegressor(random_state=SEED), "linear": make_pipeline(StandardScaler(), Ridge())}


def metrics(kind: str, truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy for classes; R² and RMSE (in the target's units) for values."""
    if kind == "classification":
        return {"accuracy": float(accuracy_score(truth, predicted))}
    return {"r2": float(r2_score(truth, predicted)), "rmse": float(root_mean_squared_error(truth, predicted))}


def config(name: str, steps: int, threads: int) -> RunConfig:
    """The one training recipe of every neural model (MoR's sizes; baselines change only their width): at most
    `steps` steps, early stopping on the validation split."""
    return parse({"model": MODEL, "data": {"task": name, "batch_size": 64},
                  "train": {"steps": steps, "lr": 2e-3, "warmup": steps // 20, "seed": SEED, "threads": threads,
                            "log_every": EVAL_EVERY, "eval_every": EVAL_EVERY, "early_stop": PATIENCE},
                  "checkpoint": {"every": steps, "keep_last": 1}}, f"tabular {name}")


def run_dataset(name: str, n_folds: int, steps: int, threads: int) -> dict:
    """Cross-validate every model on dataset `name`: per-fold scores and fit times, their mean ± std, parameters."""
    x, y = load(name)
    splits = split_folds(name, y, n_folds)
    cfg = config(name, steps, threads)
    first = Fold(name, x, y, *splits[0])
    dims = matched_dims(cfg, first, NEURAL, count_parameters, DIMS, own=("mor", "moe"))  # MoE: the same modules
    per_fold: dict[str, list[dict]] = {kind: [] for kind in MODELS}
    for i, (train, test) in enumerate(splits):
        fold = first if i == 0 else Fold(name, x, y, train, test)
        for kind in NEURAL:
            model, seconds, steps_run = train_model(with_dim(cfg, dims[kind]), fold, kind, best=True)
            per_fold[kind].append({**metrics(fold.kind, y[test], fold.predict(model)), "fit_s": seconds,
                                   "steps": steps_run})
        for kind, estimator in sklearn_models(fold.kind).items():
            start = time.perf_counter()
            with threadpool_limits(threads):
                estimator.fit(x[train], y[train])
                seconds = time.perf_counter() - start
                predicted = estimator.predict(x[test])
            per_fold[kind].append({**metrics(fold.kind, y[test], predicted), "fit_s": seconds})
        print(f"  {name} fold {i + 1}/{n_folds}: " + ", ".join(
            f"{kind} {next(iter(per_fold[kind][-1].values())):.3f}" for kind in MODELS), flush=True)
    summary = {kind: {key: mean_std([r[key] for r in rows]) for key in rows[0]} for kind, rows in per_fold.items()}
    parameters = {kind: count_parameters(build_model(with_dim(cfg, dims[kind]).model, first, kind)) for kind in NEURAL}
    return {"kind": first.kind, "rows": len(y), "features": x.shape[1], "folds": n_folds, "dims": dims,
            "parameters": parameters, "per_fold": per_fold, "summary": summary}


def primary(result: dict) -> str:
    """The metric models are ranked by: accuracy for classes, R² for values (higher is better for both)."""
    return "accuracy" if result["kind"] == "classification" else "r2"


def label(kind: str, task_kind: str) -> str:
    """A model's name in the report; the linear model is logistic regression for classes, ridge for values."""
    if kind == "linear":
        return "logistic regression (scaled)" if task_kind == "classification" else "ridge (scaled)"
    return LABELS[kind]


def verdict(name: str, result: dict) -> str:
    """Plain sentences: which model is best on `name` by mean, where MoR stands, whether a tree or linear model
    beats it."""
    key, summary = primary(result), result["summary"]
    means = {kind: s[key]["mean"] for kind, s in summary.items()}
    ranked = sorted(means, key=lambda kind: -means[kind])
    best = [kind for kind in ranked if means[kind] == means[ranked[0]]]
    mor = fmt_mean_std(summary["mor"][key])
    if means["mor"] == means[ranked[0]]:
        tied = [label(k, result["kind"]) for k in best if k != "mor"]
        text = f"{name}: MoR is best ({key} {mor})" + (f", tied with {', '.join(tied)}." if tied else ".")
    else:
        text = (f"{name}: best is {' and '.join(label(k, result['kind']) for k in best)} ({key} "
                f"{fmt_mean_std(summary[best[0]][key])}); MoR {mor}, rank {ranked.index('mor') + 1} of "
                f"{len(ranked)}, {means[best[0]] - means['mor']:.3f} behind.")
    beats = [f"{what} {'beats' if means[kind] > means['mor'] else 'does not beat'} MoR"
             for kind, what in (("hgb", "A boosted tree"), ("linear", "a linear model"))]
    return f"{text} {'; '.join(beats)}."


def figure(results: dict) -> Figure:
    """One panel per dataset: each model's mean score over folds, with the std over folds as error bars."""
    datasets = results["datasets"]
    fig = Figure(figsize=(4.2 * len(datasets), 3.6), layout="constrained")
    for ax, (name, result) in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets.items(), strict=True):
        key, summary = primary(result), result["summary"]
        ax.bar(range(len(summary)), [summary[k][key]["mean"] for k in summary],
               yerr=[summary[k][key]["std"] for k in summary], color=["C0" if k in NEURAL else "C1" for k in summary])
        ax.set_xticks(range(len(summary)), [label(k, result["kind"]) for k in summary], rotation=45, ha="right",
                      fontsize=7)
        ax.set_title(f"{name} ({key}, {result['folds']}-fold)")
    return fig


def markdown(results: dict) -> str:
    """The results as a markdown report: how they were measured, one row per dataset × model, the verdicts."""
    rows = []
    for name, result in results["datasets"].items():
        key, summary = primary(result), result["summary"]
        for kind, s in summary.items():
            parameters = f"{result['parameters'][kind]:,}" if kind in NEURAL else "–"
            rows.append([name, label(kind, result["kind"]), parameters,
                         f"{key} {fmt_mean_std(s[key])}", fmt_mean_std(s["rmse"]) if "rmse" in s else "–",
                         f"{s['steps']['mean']:.0f}" if "steps" in s else "–", f"{s['fit_s']['mean']:.2f}"])
    r = results["recipe"]
    lines = [
        "# Tabular", "", md_machine(results["machine"], results["other_load_cores"]), "",
        f"{r['folds']}-fold cross-validation (StratifiedKFold for classes, KFold for values; shuffle, seed {SEED}); "
        "mean ± std (sample, n−1) over folds; every model is scored on the same test rows. Neural models: mor's "
        f"Trainer, batch 64, AdamW lr 2e-3, warmup then cosine over at most {r['steps']} steps, seed {SEED}; inputs "
        f"(and regression targets) standardised on each fold's training rows, {VAL_FRACTION:.0%} of which are held "
        f"out for early stopping (validation every {EVAL_EVERY} steps, stop after {PATIENCE} without a new best, the "
        f"best weights kept). MoR: {MODEL['num_experts']} MLP reflection experts, top-{MODEL['k']}, width "
        f"{MODEL['dim']}, {MODEL['train_steps']} reflection steps (also at inference). MoE: the same at depth 1 (same "
        f"parameters). Single reflection expert and dense ({MODEL['depth']} cells): width chosen to match MoR's "
        "parameters. HistGradientBoosting and logistic / ridge regression (StandardScaler in a Pipeline): "
        "scikit-learn defaults, fitted on all of each fold's training rows. Every model on "
        f"{r['threads']} thread(s). steps = optimiser steps run (mean over folds); fit s = mean seconds to fit one "
        "fold (neural models: Trainer.fit with its validations and checkpoint writes). regimes: "
        f"{REGIMES_ROWS} fixed draws of the regression task (4 dimensions, 4 regimes). Differences smaller than "
        "the std over folds are within fold-to-fold noise.", "",
        md_table(["dataset", "model", "parameters", "score (mean ± std)", "RMSE", "steps", "fit s"], rows), "",
        "## Where MoR stands", "", *[f"- {verdict(n, res)}" for n, res in results["datasets"].items()], "",
        f"Wall time: {results['wall_s']:.0f} s.",
    ]
    return "\n".join(lines)


def run(quick: bool = False, out_dir: str = "bench-results", threads: int = 1, folds: int | None = None,
        steps: int | None = None, datasets: tuple[str, ...] | None = None) -> dict:
    """Cross-validate every model on every dataset; write `out_dir`/tabular.json, .md and .png; return the results."""
    suite = SuiteRun("tabular", quick, [threads])
    n_folds, steps = folds or (2 if quick else 5), steps or (40 if quick else 1500)
    datasets = datasets or (("wine", "diabetes") if quick else DATASETS)
    with torch_threads(threads):
        per_dataset = {name: run_dataset(name, n_folds, steps, threads) for name in datasets}
    recipe = {"folds": n_folds, "steps": steps, "threads": threads, "model": MODEL}
    return suite.finish(out_dir, {"recipe": recipe, "datasets": per_dataset}, markdown, figure)


def main() -> None:
    """`python -m benchmarks.tabular [--quick] [--folds 5] [--steps 1500] [--out DIR]`: run and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 folds of wine and diabetes, 40 steps (seconds)")
    parser.add_argument("--folds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--datasets", type=lambda s: tuple(s.split(",")), default=None)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    print(markdown(run(args.quick, args.out, folds=args.folds, steps=args.steps, datasets=args.datasets)))


if __name__ == "__main__":
    main()
