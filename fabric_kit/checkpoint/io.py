"""Reading and writing checkpoint files. A write never leaves a torn file: it goes to a temporary name in the
target's own directory, is fsynced, and is renamed over the target."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_file(obj: Any, path: str | os.PathLike) -> None:
    """Atomically write `obj` to `path` with torch.save (parents are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_file(path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool = True) -> Any:
    """Read a checkpoint file; a missing path is an error that names it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {str(path)!r} is a directory (a sharded checkpoint); load it with the "
                                "strategy that wrote it")
    return torch.load(path, map_location=map_location, weights_only=weights_only)


def _fsync_dir(directory: Path) -> None:
    # The rename itself must reach the disk, or a crash can resurrect the old entry.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
