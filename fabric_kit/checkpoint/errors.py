"""The errors a checkpoint can raise. Each names the file and says what is wrong with it, so a user never has to
decode an unpickling or zip error to learn that a file is damaged or needs an explicit opt-in."""
from __future__ import annotations

import os


class CheckpointError(RuntimeError):
    """Base of every checkpoint problem fabric_kit reports; `path` is the offending file or directory."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path!r}: {reason}")


class CheckpointCorruptedError(CheckpointError):
    """The file (or a file of a directory checkpoint) is truncated, changed or missing: restore from another one."""


class UnsafeCheckpointError(CheckpointError):
    """The safe loader (`weights_only=True`) met an object beyond tensors and plain containers."""
