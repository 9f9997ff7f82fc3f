"""`fabric consolidate`: turn a sharded checkpoint directory into one plain torch.save file, so a model can be
loaded without the sharded strategy, without a process group, and without fabric_kit:
`model.load_state_dict(torch.load(FILE)["model"])`.

One process reads every shard: the metadata says which entries exist and each tensor's full size, so the whole
tensors are allocated from it and DCP fills them in; as in `Fabric.load`, nothing stored in the directory is
unpickled by the full unpickler unless `weights_only=False`."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import Metadata, TensorStorageMetadata

from fabric_kit.checkpoint.directory import MANIFEST, verify_directory
from fabric_kit.checkpoint.io import load_file, save_file
from fabric_kit.checkpoint.sharded import PLAIN_ENTRIES, by_index, is_sharded_checkpoint
from fabric_kit.checkpoint.sharded_reading import load_sharded, read_metadata, set_nested

__all__ = ["consolidate", "read_consolidated"]


def consolidate(checkpoint_dir: str | os.PathLike[str], output_file: str | os.PathLike[str], weights_only: bool = True
                ) -> None:
    """Gather every shard of `checkpoint_dir` into `output_file` (written atomically): what `read_consolidated`
    returns.

    A damaged directory raises `CheckpointCorruptedError`, an object the safe loaders refuse
    `UnsafeCheckpointError` (`weights_only=False` reads it, for a trusted checkpoint only); both name the file. A
    path that is no sharded checkpoint at all raises ValueError."""
    save_file(read_consolidated(checkpoint_dir, weights_only), Path(output_file))


def read_consolidated(checkpoint_dir: str | os.PathLike[str], weights_only: bool = True) -> dict[str, Any]:
    """Every shard of `checkpoint_dir` gathered in this one process, without a process group: model entries become
    plain state dicts; optimizer entries get torch's index keys, so a plain optimizer over `model.parameters()`
    loads them; the other entries of the saved state come as they were. Errors as for `consolidate`."""
    checkpoint_dir = Path(checkpoint_dir)
    if not is_sharded_checkpoint(checkpoint_dir) and not (checkpoint_dir / MANIFEST).is_file():
        raise ValueError(f"{str(checkpoint_dir)!r} is not a sharded checkpoint directory (one written by "
                         "strategy='fsdp' with state_dict_type='sharded', holding a .metadata file)")
    verify_directory(checkpoint_dir)  # also names a .metadata the manifest lists but the directory lacks
    if not is_sharded_checkpoint(checkpoint_dir):
        raise ValueError(f"{str(checkpoint_dir)!r} is a directory checkpoint but not a sharded one: it holds no "
                         ".metadata file (strategy='fsdp' with state_dict_type='sharded' writes one)")
    metadata = read_metadata(checkpoint_dir, weights_only)
    flat = _allocate(metadata)
    with warnings.catch_warnings():
        # Loading in this one process without a process group is the point; DCP warns that it assumes so.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        load_sharded(flat, checkpoint_dir, weights_only=weights_only, no_dist=True)
    entries: dict[str, Any] = {}
    paths = metadata.planner_data or {}  # the nested path of every flattened entry, as the save recorded it
    for fqn, value in flat.items():
        set_nested(entries, paths.get(fqn, (fqn,)), value)
    entries = {key: _index_keyed(value) for key, value in entries.items()}
    entries.update(load_file(checkpoint_dir / PLAIN_ENTRIES, weights_only=weights_only))
    return entries


def _allocate(metadata: Metadata) -> dict[str, Any]:
    """One entry per flattened key of the checkpoint: a whole tensor of the saved size and dtype to read into, or
    a placeholder for a non-tensor entry (which DCP replaces by the stored object)."""
    return {fqn: torch.empty(item.size, dtype=item.properties.dtype) if isinstance(item, TensorStorageMetadata)
            else None for fqn, item in metadata.state_dict_metadata.items()}


def _index_keyed(value: Any) -> Any:
    """An optimizer state dict keyed by parameter names (as sharded checkpoints store it) gets index keys."""
    if isinstance(value, dict) and set(value) == {"state", "param_groups"}:
        return by_index(value)
    return value
