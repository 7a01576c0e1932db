"""Durable writes: flush a file, or a folder's entries, to disk, so a rename that points at it survives a power loss."""

import os
from pathlib import Path


def sync(path: Path) -> None:
    """fsync `path`, a file or a folder (a rename is durable only once its folder is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
