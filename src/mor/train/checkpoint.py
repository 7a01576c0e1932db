"""Checkpoints: weights in safetensors, optimiser/scheduler/RNG/step in a side file, the run's config beside them.

Each checkpoint is written into a temporary folder, flushed to disk and renamed into place, and `best.json` then
`latest.json` are replaced atomically after it, so neither a crash nor a power loss leaves a broken "latest", and
a crash between the two costs a few steps of retraining instead of the best checkpoint.
Loading never unpickles arbitrary objects (safetensors for weights, `torch.load(weights_only=True)` for the rest)
and maps everything to the CPU, so a checkpoint written on a GPU loads on a machine without one.
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mor.durable import sync, write_json
from mor.errors import CheckpointError, first_line

WEIGHTS, STATE, CONFIG = "model.safetensors", "state.pt", "config.yaml"
LATEST, BEST = "latest.json", "best.json"


@dataclass
class Loaded:
    """What a checkpoint holds: its folder, weights, training state and the config text it was trained with."""

    path: Path
    weights: dict[str, torch.Tensor]
    state: dict
    config: str


def save(run_dir: Path, step: int, model: nn.Module, state: dict, config: str, *, keep_last: int,
         best: float | None = None) -> Path:
    """Write checkpoint `step` (and mark it best when `best` is a new best score); prune old ones."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final, tmp = run_dir / f"step-{step:08d}", run_dir / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, tmp / WEIGHTS,
              metadata={"step": str(step)})
    torch.save({**state, "step": step}, tmp / STATE)
    (tmp / CONFIG).write_text(config)
    for path in (tmp / WEIGHTS, tmp / STATE, tmp / CONFIG, tmp):
        sync(path)
    if final.exists():  # the same step saved again after a resume: swap it out whole
        old = run_dir / f".old-step-{step:08d}"
        shutil.rmtree(old, ignore_errors=True)  # left by a crash during an earlier swap
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    sync(run_dir)
    if best is not None:  # first: a resume from an older latest re-marks this step, an older best would stick
        write_json(run_dir / BEST, {"step": step, "dir": final.name, "score": best})
    write_json(run_dir / LATEST, {"step": step, "dir": final.name})
    _prune(run_dir, keep_last)
    return final


def _prune(run_dir: Path, keep_last: int) -> None:
    """Delete step folders beyond the last `keep_last`, never the best one."""
    keep = {p.name for p in sorted(run_dir.glob("step-*"))[-keep_last:]}
    if (run_dir / BEST).is_file():
        keep.add(json.loads((run_dir / BEST).read_text())["dir"])
    for folder in run_dir.glob("step-*"):
        if folder.name not in keep:
            shutil.rmtree(folder)


def resolve(path: Path) -> Path:
    """A checkpoint folder from a step folder itself, a run folder (its latest) or `RUN/best`; a folder holding a
    checkpoint or a run is taken as such first, so a run folder may be named `best`."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        return path
    if (path / LATEST).is_file():
        return _follow(path / LATEST)
    if path.name == "best" and (path.parent / BEST).is_file():
        return _follow(path.parent / BEST)
    raise CheckpointError(f"{path}: no checkpoint here; give a run folder (with {LATEST}), RUN/best, "
                          f"or a step-* folder")


def _follow(pointer: Path) -> Path:
    """The step folder a `latest.json` or `best.json` names."""
    try:
        return pointer.parent / json.loads(pointer.read_text())["dir"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:  # TypeError: JSON, but not {"dir": "step-…"}
        raise CheckpointError(f"{pointer}: unreadable pointer file ({err}); point at a step-* folder instead") from None


def load(path: Path) -> Loaded:
    """Read a checkpoint, refusing a missing, truncated or corrupt one with a one-line error."""
    folder = resolve(path)
    for name in (WEIGHTS, STATE, CONFIG):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: incomplete checkpoint, {name} is missing; use another step-* folder")
    try:
        weights = load_file(folder / WEIGHTS)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{folder / WEIGHTS}: corrupt or truncated weights ({err}); "
                              f"resume from an earlier step-* folder") from None
    try:
        state = torch.load(folder / STATE, weights_only=True, map_location="cpu")  # the optimizer moves it back
    except Exception as err:  # torch raises several types for a damaged or unsafe file
        raise CheckpointError(f"{folder / STATE}: corrupt, truncated or unsafe training state "
                              f"({first_line(err)[:160]}); resume from an earlier step-* folder") from None
    return Loaded(folder, weights, state, (folder / CONFIG).read_text())


def restore(model: nn.Module, weights: dict[str, torch.Tensor], where: Path) -> None:
    """Load `weights` into `model`, or say exactly how the checkpoint and the model differ."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    shapes = [k for k in set(own) & set(weights) if own[k].shape != weights[k].shape]
    if missing or extra or shapes:
        detail = "; ".join(part for part in (
            f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else "",
            f"shape of {shapes[0]}: checkpoint {tuple(weights[shapes[0]].shape)} vs model "
            f"{tuple(own[shapes[0]].shape)}" if shapes else "") if part)
        raise CheckpointError(f"{where}: checkpoint does not match the configured model ({detail}); "
                              f"use the config it was trained with")
    model.load_state_dict(weights)


def check_data(state: dict, data: tuple[str | None, ...], where: Path, fix: str) -> None:
    """Refuse data that differ from those the checkpoint was trained on (`Task.fingerprints`: the current form
    first, then earlier ones): a changed file under data.path or data.root re-splits and re-scales the rows, so
    test rows could be ones the model trained on. Checkpoints from before fingerprints pass."""
    trained = state.get("data")
    if trained is not None and trained not in data:
        raise CheckpointError(f"{where}: the task's data differ from those it was trained on (fingerprint {data[0]}, "
                              f"trained on {trained}): a file under data.path or data.root changed; {fix}")
