"""`fabric consolidate`: turn a sharded checkpoint directory into one plain torch.save file, so a model can be
loaded without the sharded strategy, without a process group, and without fabric_kit:
`model.load_state_dict(torch.load(FILE)["model"])`."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from fabric_kit.checkpoint import optimizer_keys
from fabric_kit.checkpoint.directory import verify_directory
from fabric_kit.checkpoint.io import fsync_directory, load_file
from fabric_kit.checkpoint.sharded import PLAIN_ENTRIES, is_sharded_checkpoint


def consolidate(checkpoint_dir: str | os.PathLike, output_file: str | os.PathLike) -> None:
    """Gather every shard of `checkpoint_dir` into `output_file` (written atomically). Model entries become plain
    state dicts; optimizer entries get torch's index keys, so a plain optimizer over `model.parameters()` loads them;
    the other entries of the saved state are copied as they were."""
    checkpoint_dir, output_file = Path(checkpoint_dir), Path(output_file)
    if not is_sharded_checkpoint(checkpoint_dir):
        raise ValueError(f"{str(checkpoint_dir)!r} is not a sharded checkpoint directory (one written by "
                         "strategy='fsdp' with state_dict_type='sharded', holding a .metadata file)")
    verify_directory(checkpoint_dir)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_file.parent) as scratch:
        gathered = Path(scratch) / "gathered.pt"
        dcp_to_torch_save(checkpoint_dir, gathered)  # reads every shard in this one process
        entries: dict[str, Any] = torch.load(gathered, weights_only=True)
        entries = {key: _index_keyed(value) for key, value in entries.items()}
        entries.update(load_file(checkpoint_dir / PLAIN_ENTRIES))
        staged = Path(scratch) / output_file.name
        with open(staged, "wb") as f:
            torch.save(entries, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, output_file)
    fsync_directory(output_file.parent)


def _index_keyed(value: Any) -> Any:
    """An optimizer state dict keyed by parameter names (as sharded checkpoints store it) gets index keys."""
    if isinstance(value, dict) and set(value) == {"state", "param_groups"}:
        return optimizer_keys.by_index(value)
    return value
