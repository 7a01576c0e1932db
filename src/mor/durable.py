"""Durable writes: flush a file, or a folder's entries, to disk, so a rename that points at it survives a power loss."""

import json
import os
from pathlib import Path

from mor.errors import MorError, check


def sync(path: Path) -> None:
    """fsync `path`, a file or a folder (a rename is durable only once its folder is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, value: dict, indent: int | None = None) -> None:
    """Replace `path` atomically: write `.NAME.tmp` beside it, flush it to disk, rename it over the old one; a
    failed write removes the temporary file and leaves `path` as it was."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(value, f, indent=indent)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_folder(path: Path, option: str) -> None:
    """A one-line error unless `path` can be a folder: it, or the nearest part of it that exists, is not a file."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    inside = "" if existing == path else f" inside '{existing}', which"
    check(existing is None or existing.is_dir(), f"{option}: '{path}'{inside} is a file; give a folder")


def make_folder(path: Path, option: str) -> Path:
    """Make the output folder `path` (given as `option`) before any work is done, or raise a one-line error saying
    what to give instead."""
    check_folder(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MorError(f"{option}: cannot make the folder '{path}' ({err.strerror or err}); give a folder you can "
                       f"write to") from None
    return path
