"""SpikeDetection for the Trainer: fabric_kit's detector fed from `on_train_batch_end`, deciding on every rank
together. `on_spike="raise"` raises `TrainingSpikeException`, as Lightning's callback does. `on_spike="rollback"`
goes back inside `fit`: the newest checkpoint of the run saved before the offending batches (by a ModelCheckpoint
of the Trainer, or by this callback every `every_n_train_steps` optimizer steps into `checkpoint_dir`) is restored
on every rank (`FitLoop.roll_back`), exactly those batches' samples are left out of the training loader, and fit
continues from the checkpoint's position; the checkpoints saved after it, which belong to the abandoned history,
are removed, and `skipped_samples.json` lists what was skipped."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from fabric_kit import is_wrapped
from fabric_kit.checkpoint import read_checkpoint
from fabric_kit.spike import ON_SPIKE, TrainingSpikeException
from fabric_kit.spike import SpikeDetection as FabricSpikeDetection
from loops.callbacks.callback import Callback

if TYPE_CHECKING:
    from fabric_kit.wrappers import FabricDataLoader
    from loops.trainer.trainer import Trainer


class SpikeDetection(FabricSpikeDetection, Callback):
    """Lightning's arguments (`mode`, `window`, `warmup`, `atol`, `rtol`, `exclude_batches_path`, `finite_only`;
    see `fabric_kit.spike.SpikeDetection`); the batch indices to exclude go to
    `<default_root_dir>/skip_batches.json` unless a path is given. The loss is the training step's output (a
    tensor, or the "loss" entry of a mapping).

    Rolling back (`on_spike="rollback"`) needs checkpoints holding the training loader's position, which loops
    saves: a `ModelCheckpoint` in the Trainer's callbacks (one saving every few steps, e.g.
    `every_n_train_steps=...`, `save_top_k=-1`), or `every_n_train_steps=N` here, which saves one into
    `checkpoint_dir` every N optimizer steps. `skipped_samples.json` goes to `checkpoint_dir` (default
    `default_root_dir`); a fit resumed with `ckpt_path` from any checkpoint of the run leaves its samples out too.
    """

    def __init__(self, *args: Any, on_spike: Literal["raise", "rollback"] = "raise",
                 checkpoint_dir: str | os.PathLike[str] | None = None, every_n_train_steps: int | None = None,
                 **kwargs: Any) -> None:
        if on_spike not in ON_SPIKE:
            raise ValueError(f"on_spike={on_spike!r} is invalid; expected one of {ON_SPIKE}")
        if every_n_train_steps is not None and (isinstance(every_n_train_steps, bool)
                                                or not isinstance(every_n_train_steps, int)
                                                or every_n_train_steps < 1):
            raise ValueError(f"every_n_train_steps={every_n_train_steps!r} is invalid; expected None or an int >= 1")
        if every_n_train_steps is not None and checkpoint_dir is None:
            raise ValueError("every_n_train_steps= needs checkpoint_dir=, the directory to save the checkpoints to")
        super().__init__(*args, checkpoint_dir=checkpoint_dir, **kwargs)  # the Fabric loop's own rollback is not used
        self.on_spike = on_spike
        self.every_n_train_steps = every_n_train_steps
        self._record_dir: Path | None = None
        self._saved_step = -1

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.exclude_batches_path is None:
            self.exclude_batches_path = os.path.join(trainer.default_root_dir, "skip_batches.json")
        self._record_dir = self.checkpoint_dir or Path(trainer.default_root_dir)
        if stage == "fit" and self.on_spike == "rollback" and not trainer.checkpoint_callbacks \
                and self.every_n_train_steps is None:
            raise ValueError("SpikeDetection(on_spike='rollback') has no checkpoint to roll back to: add a "
                             "ModelCheckpoint to Trainer(callbacks=[...]) or pass every_n_train_steps= and "
                             "checkpoint_dir=")

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        if self.on_spike == "rollback" and trainer.ckpt_path is not None and self._record_dir is not None:
            # a fit resumed from a checkpoint written before a rollback still leaves its samples out
            self.apply_skips(self._loader(trainer), self._record_dir)

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
        rollback = self.on_spike == "rollback"
        loader = self._loader(trainer) if rollback else None
        spiked = self.detect(trainer.fabric, loss, batch_idx, loader)
        if spiked and loader is not None:
            self._roll_back_fit(trainer, loader, batch_idx, spiked)
        elif spiked:
            raise TrainingSpikeException(batch_idx)
        elif self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0 \
                and trainer.global_step != self._saved_step:
            assert self.checkpoint_dir is not None and loader is not None  # checked in __init__ and above
            self._saved_step = trainer.global_step
            position = loader.state_dict()
            trainer.save_checkpoint(self.checkpoint_dir / f"epoch={position['epoch']}-samples="
                                                          f"{position['samples']}.ckpt")

    # -- rolling back ---------------------------------------------------------------------------------------------
    def _loader(self, trainer: Trainer) -> FabricDataLoader:
        loader = trainer.fit_loop.train_loader
        if not is_wrapped(loader):
            raise ValueError("SpikeDetection(on_spike='rollback') needs the training loader that the Trainer sets "
                             f"up with use_distributed_sampler=True; got {type(loader).__name__}")
        return loader

    def _roll_back_fit(self, trainer: Trainer, loader: FabricDataLoader, batch_idx: int, ranks: list[int]) -> None:
        """Restore the newest checkpoint from before the offending batches, leave their samples out, record it."""
        assert self._record_dir is not None  # set in setup
        fabric = trainer.fabric
        epoch, first = self.offending_start(batch_idx)
        positions = self._checkpoint_positions(trainer) if fabric.is_global_zero else {}
        earlier = {path: at for path, at in positions.items() if at <= (epoch, first)}
        target = fabric.broadcast(max(earlier, key=earlier.__getitem__) if earlier else None)
        if target is None:
            raise TrainingSpikeException(batch_idx, f"and no checkpoint of this fit was saved before epoch {epoch}, "
                                                    f"position {first} to roll back to")
        self.skip_offending(loader, batch_idx, ranks, os.path.basename(target))
        if fabric.is_global_zero:  # the abandoned history's checkpoints
            for path, at in positions.items():
                if at > positions[target]:
                    os.remove(path)
        fabric.barrier()
        trainer.fit_loop.roll_back(target)
        self.apply_skips(loader, self._record_dir)
        self.write_record(fabric, self._record_dir)
        self.rolled_back = True

    def _checkpoint_positions(self, trainer: Trainer) -> dict[str, tuple[int, int]]:
        """The checkpoint files this fit can roll back to (in the checkpoint callbacks' directories and
        `checkpoint_dir`), with the training loader's position `(epoch, samples)` each holds (read from each file,
        on rank 0: rollbacks are rare)."""
        directories = {str(d) for d in [*(getattr(cb, "dirpath", None) for cb in trainer.checkpoint_callbacks),
                                        self.checkpoint_dir] if d is not None and os.path.isdir(d)}
        weights_only = trainer.run_state.weights_only is not False  # as fit reads the one it restores
        positions = {}
        for directory in directories:
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                if not name.endswith(".ckpt") or not os.path.isfile(path):
                    continue
                loader_state = read_checkpoint(path, weights_only=weights_only).get("train_dataloader")
                if isinstance(loader_state, Mapping):  # else a weights-only file: fit cannot continue from it
                    positions[path] = (int(loader_state["epoch"]), int(loader_state["samples"]))
        return positions


__all__ = ["SpikeDetection"]
