"""Reading `evaluate` results and metrics logs: the accessors the report and its plots share."""

import json
from pathlib import Path


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """The JSON objects of a JSONL file (none if it is missing) and how many lines could not be read."""
    if not path.is_file():
        return [], 0
    records, skipped = [], 0
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                skipped += 1
    return [r for r in records if isinstance(r, dict)], skipped


def depth_rows(ev: dict, size: int | None) -> list[dict]:
    """Fixed-depth rows of `ev` at `size`, shallowest first."""
    return sorted((r for r in ev["depth"] if r["size"] == size), key=lambda r: r["max_steps"])


def ranked_on(ev: dict) -> tuple[str, str, bool]:
    """The metric that ranks `ev`'s rows: its key, its name in reports, and whether higher is better. Accuracy for
    classes; mean squared error for values, whose "accuracy" is only the share within a tolerance."""
    return ("mse", "MSE", False) if "mse" in ev["depth"][0] else ("accuracy", "accuracy", True)


def better(ev: dict, mine: float, theirs: float) -> bool:
    """Whether `mine` beats `theirs` on `ev`'s ranking metric."""
    return mine > theirs if ranked_on(ev)[2] else mine < theirs


def best_depth(ev: dict, size: int | None) -> dict | None:
    """The fixed depth at `size` best on the ranking metric, the shallowest among ties."""
    key, _, higher = ranked_on(ev)
    return max(depth_rows(ev, size), key=lambda r: (r[key] if higher else -r[key], -r["max_steps"]), default=None)


def at_train_depth(ev: dict, size: int | None) -> dict | None:
    """The fixed-depth row at the model's training depth."""
    return next((r for r in depth_rows(ev, size) if r["max_steps"] == ev["model"]["train_depth"]), None)


def own_rule(ev: dict, size: int | None) -> dict | None:
    """The halting row of the model's own rule at `size`."""
    return next((r for r in ev["halting"] if r["size"] == size and r["own"]), None)


def is_token_eval(ev: dict) -> bool:
    """Whether `ev` evaluates a token model, scored in bits per character."""
    return "bits_per_char" in ev["depth"][0]


def size_label(size: int | None) -> str:
    """How a size is named in tables and titles."""
    return "eval set" if size is None else f"size {size}"
