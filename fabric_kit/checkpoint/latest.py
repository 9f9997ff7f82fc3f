"""Finding the checkpoint to resume from: the newest one that is intact, so a damaged newest file (a disk that
filled up, a copy cut short) costs a few steps instead of the run."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from fabric_kit.checkpoint.directory import verify_directory
from fabric_kit.checkpoint.errors import CheckpointCorruptedError
from fabric_kit.checkpoint.io import verify_file


def latest_checkpoint(directory: str | os.PathLike[str], pattern: str = "*.ckpt") -> Path | None:
    """The newest (by modification time, then name) intact checkpoint matching `pattern` in `directory`, or None.

    Damaged candidates are skipped with a warning naming them; hidden names (fabric_kit's temporary files and
    staging directories start with a dot) are ignored. Every candidate newer than the result is read in full to
    verify its CRC-32s.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    candidates = []
    for path in directory.glob(pattern):
        if path.name.startswith("."):
            continue
        try:
            candidates.append((path.stat().st_mtime_ns, path.name, path))
        except FileNotFoundError:  # replaced or removed since the listing
            continue
    for _, _, path in sorted(candidates, reverse=True):
        try:
            verify_directory(path) if path.is_dir() else verify_file(path)
        except (CheckpointCorruptedError, FileNotFoundError) as error:
            warnings.warn(f"skipping checkpoint {str(path)!r}: {error}", stacklevel=2)
            continue
        return path
    return None
