"""Checkpoints that survive crashes: atomic plain torch.save files verified by the CRC-32s their zip archive records,
atomic directories with a manifest, RNG and dataloader state for bit-exact resume, and finding the newest intact
checkpoint."""
from fabric_kit.checkpoint.directory import atomic_directory, staging_path, verify_directory
from fabric_kit.checkpoint.errors import (
    CheckpointCorruptedError,
    CheckpointError,
    CheckpointWriteError,
    UnsafeCheckpointError,
)
from fabric_kit.checkpoint.io import load_file, read_checkpoint, save_file, verify_file
from fabric_kit.checkpoint.latest import latest_checkpoint

__all__ = [
    "CheckpointCorruptedError",
    "CheckpointError",
    "CheckpointWriteError",
    "UnsafeCheckpointError",
    "atomic_directory",
    "latest_checkpoint",
    "load_file",
    "read_checkpoint",
    "save_file",
    "staging_path",
    "verify_directory",
    "verify_file",
]
