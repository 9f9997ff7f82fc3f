"""The layout of a sharded checkpoint directory: torch.distributed.checkpoint (DCP) files holding every rank's shards
of the models and optimizers, and one ordinary checkpoint file for everything else in the state."""
from __future__ import annotations

import os
from pathlib import Path

PLAIN_ENTRIES = "fabric_kit_plain.pt"
"""The file inside the directory with the state's other entries (step counters, schedulers, RNG states)."""

DCP_METADATA = ".metadata"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / DCP_METADATA).is_file()


def needs_sharded_strategy(path: str | os.PathLike) -> str:
    """What to tell a user who loads a directory where only a checkpoint file can be read."""
    if not is_sharded_checkpoint(path):
        return f"checkpoint {os.fspath(path)!r} is a directory, not a checkpoint file"
    return (f"checkpoint {os.fspath(path)!r} is a directory of shards written by a sharded strategy (FSDP); load it "
            "with strategy='fsdp', or turn it into one file that any strategy and plain torch.load can read: "
            f"`fabric consolidate {os.fspath(path)} --output model.pt`")
