"""SpikeDetection for the Trainer: fabric_kit's detector fed from `on_train_batch_end`, deciding on every rank
together and raising `TrainingSpikeException` on a spike, as Lightning's callback does. Rolling back is for Fabric
loops (`fabric_kit.spike`), whose loop restarts its pass over the loader after a rollback."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from fabric_kit.spike import SpikeDetection as FabricSpikeDetection
from loops.callbacks.callback import Callback

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class SpikeDetection(FabricSpikeDetection, Callback):
    """Lightning's arguments (`mode`, `window`, `warmup`, `atol`, `rtol`, `exclude_batches_path`, `finite_only`;
    see `fabric_kit.spike.SpikeDetection`); the batch indices to exclude go to
    `<default_root_dir>/skip_batches.json` unless a path is given. The loss is the training step's output (a
    tensor, or the "loss" entry of a mapping)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("on_spike", "raise") != "raise":
            raise ValueError(f"on_spike={kwargs['on_spike']!r}: the Trainer's SpikeDetection only raises; rolling "
                             "back is fabric_kit.spike.SpikeDetection's, for Fabric loops")
        super().__init__(*args, **kwargs)

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any,  # type: ignore[override]
                           batch_idx: int) -> None:
        if isinstance(outputs, torch.Tensor):
            loss = outputs
        elif isinstance(outputs, Mapping) and "loss" in outputs:
            loss = outputs["loss"]
        else:
            raise TypeError(f"SpikeDetection needs the training step to return the loss, a tensor or a mapping with "
                            f"'loss'; got {type(outputs).__qualname__}")
        if self.exclude_batches_path is None:
            self.exclude_batches_path = os.path.join(trainer.default_root_dir, "skip_batches.json")
        FabricSpikeDetection.on_train_batch_end(self, trainer.fabric, loss, batch, batch_idx)


__all__ = ["SpikeDetection"]
