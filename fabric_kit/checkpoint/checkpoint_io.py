"""The CheckpointIO plugin, Lightning's `lightning.fabric.plugins.io` interface: how a strategy that stores a
checkpoint as one file writes, reads and removes it. Pass one to `Fabric(plugins=[...])` to store checkpoints
elsewhere or in another format; the default, `TorchCheckpointIO`, is fabric_kit's atomic, checksummed torch.save
file (`fabric_kit.checkpoint.io`).

What goes through it is the whole dict `Fabric.save` builds (fabric_kit's RNG and precision state included), and
what its `load_checkpoint` returns is what `Fabric.load` restores from. Strategies that store a directory of shards
(FSDP and ModelParallel with sharded checkpoints, DeepSpeed, XLA FSDP) write it in their own format."""
from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from torch import Tensor

from fabric_kit.accelerators.xla import import_torch_xla
from fabric_kit.checkpoint.io import load_file, save_file
from fabric_kit.collections import apply_to_collection

CheckpointPath = str | os.PathLike[str]


class CheckpointIO(ABC):
    """Writes, reads and removes one checkpoint file. `save_checkpoint` runs on rank 0 only, `load_checkpoint`
    on every rank."""

    @abstractmethod
    def save_checkpoint(self, checkpoint: dict[str, Any], path: CheckpointPath, storage_options: Any = None) -> None:
        """Store `checkpoint` at `path`; `storage_options` are the plugin's own (None unless it defines some)."""

    @abstractmethod
    def load_checkpoint(self, path: CheckpointPath, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        """The checkpoint stored at `path`. `weights_only` None or True: tensors and plain containers only;
        False unpickles arbitrary objects (only for checkpoints from a trusted source)."""

    @abstractmethod
    def remove_checkpoint(self, path: CheckpointPath) -> None:
        """Delete the checkpoint at `path` (nothing when there is none)."""

    def teardown(self) -> None:
        """Release what the plugin holds (threads, connections); called when its strategy tears down."""


class TorchCheckpointIO(CheckpointIO):
    """torch.save files, written atomically (a crash leaves the old file or the new one) and verified on load by
    the CRC-32s the archive records; `torch.load(path)` reads them."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: CheckpointPath, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options (got "
                            f"{storage_options!r}); write a CheckpointIO subclass that defines what they mean")
        save_file(checkpoint, path)

    def load_checkpoint(self, path: CheckpointPath, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        loaded: dict[str, Any] = load_file(path, map_location="cpu" if map_location is None else map_location,
                                           weights_only=weights_only is not False)
        return loaded

    def remove_checkpoint(self, path: CheckpointPath) -> None:
        path = Path(path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


class XLACheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` for a checkpoint whose tensors live on XLA devices (Lightning's TPU plugin): saving runs
    the pending lazy graph once, then copies every tensor to the CPU, so the file loads anywhere, without
    torch_xla. fabric_kit's XLA strategies copy their state to the CPU themselves; this plugin is for states
    built elsewhere. It needs torch_xla (the `xla` extra): constructing it without raises, naming the extra."""

    def __init__(self) -> None:
        import_torch_xla("XLACheckpointIO")

    def save_checkpoint(self, checkpoint: dict[str, Any], path: CheckpointPath, storage_options: Any = None) -> None:
        tensors: list[Tensor] = []
        apply_to_collection(checkpoint, Tensor, tensors.append)
        if any(tensor.device.type == "xla" for tensor in tensors):
            import_torch_xla("XLACheckpointIO").sync()  # one execution, instead of one per tensor copied
        on_cpu = apply_to_collection(checkpoint, Tensor, lambda tensor: tensor.detach().cpu())
        super().save_checkpoint(on_cpu, path, storage_options)


class AsyncCheckpointIO(CheckpointIO):
    """Saves on a background thread through `checkpoint_io` (default `TorchCheckpointIO`), so training goes on
    while the file is written. The checkpoint's tensors are copied first, on the caller's thread, so later
    updates do not leak into it. Loading or removing waits for the saves before it; an error of a background save
    is raised by the next call (or by `teardown`, which waits for every save)."""

    def __init__(self, checkpoint_io: CheckpointIO | None = None) -> None:
        if checkpoint_io is not None and not isinstance(checkpoint_io, CheckpointIO):
            raise TypeError(f"AsyncCheckpointIO wraps a CheckpointIO instance; got {type(checkpoint_io).__name__}")
        self.checkpoint_io = checkpoint_io or TorchCheckpointIO()
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def save_checkpoint(self, checkpoint: dict[str, Any], path: CheckpointPath, storage_options: Any = None) -> None:
        self._raise_failures(wait=False)
        copy = apply_to_collection(checkpoint, Tensor, lambda t: t.detach().clone())
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fabric_kit-checkpoint")
        self._pending.append(self._executor.submit(self.checkpoint_io.save_checkpoint, copy, path, storage_options))

    def load_checkpoint(self, path: CheckpointPath, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        self._raise_failures(wait=True)
        return self.checkpoint_io.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: CheckpointPath) -> None:
        self._raise_failures(wait=True)
        self.checkpoint_io.remove_checkpoint(path)

    def teardown(self) -> None:
        try:
            self._raise_failures(wait=True)
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self.checkpoint_io.teardown()

    def _raise_failures(self, wait: bool) -> None:
        """Forget finished saves (all of them, after waiting, with `wait`); raise the first one's error."""
        finished = self._pending if wait else [future for future in self._pending if future.done()]
        self._pending = [future for future in self._pending if future not in finished]
        errors = [future.exception() for future in finished]  # waits for each
        first = next((error for error in errors if error is not None), None)
        if first is not None:
            raise first


def writes_local_files(io: CheckpointIO) -> bool:
    """Whether `io` is fabric_kit's own file (`TorchCheckpointIO`, also behind `AsyncCheckpointIO`), which takes
    local paths only; a CheckpointIO of the user's may write wherever its paths point."""
    while isinstance(io, AsyncCheckpointIO):
        io = io.checkpoint_io
    return isinstance(io, TorchCheckpointIO)
