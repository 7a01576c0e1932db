"""Reading a trained router's files: a file that is missing, malformed or at odds with the others is a one-line
MorError that names it and says how to fix it."""

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mor.errors import MorError


def unusable(path: Path, what: str) -> str:
    """The one-line message for a router file that is missing, malformed or at odds with the others."""
    return " ".join(f"router {path.parent}: {path.name} {what}; retrain the router with "
                    f"`mor route train --data FILE.jsonl --out {path.parent}`".split())


def read_json(path: Path) -> Any:
    """A router folder's JSON file, or a one-line MorError naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MorError(unusable(path, f"cannot be read ({e})")) from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A router folder's safetensors file, or a one-line MorError naming it."""
    try:
        return load_file(path)
    except (OSError, SafetensorError) as e:
        raise MorError(unusable(path, f"cannot be read ({e})")) from None
