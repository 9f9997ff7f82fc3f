"""BatchSizeFinder: the batch-size search as a callback, run when fit starts; training then uses the size found."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loops.callbacks.callback import Callback
from loops.tuner.attributes import get_attribute
from loops.tuner.batch_size_scaling import check_scale_arguments, scale_batch_size
from loops.tuner.exit import TunerExit

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class BatchSizeFinder(Callback):
    """Find the largest `batch_arg_name` (an attribute or hparams key of the module or datamodule, read by its
    `*_dataloader()` methods) that trains `steps_per_trial` batches without running out of memory. "power" doubles
    from `init_val` until a failure; "binsearch" then bisects, and keeps `margin` of headroom. No size below
    `floor` is tried; when even it runs out of memory, a RuntimeError names it. Under DDP every rank settles on the
    same size (a rank that runs out of memory fails the trial on all). `keep_global_batch` (fabric_kit's
    addition): keep the batch of an optimizer step (`batch_arg_name * accumulate_grad_batches` before the search)
    by raising `accumulate_grad_batches`; the size found then divides it. Result: `self.optimal_batch_size`. Fit
    only."""

    SUPPORTED_MODES = ("power", "binsearch")

    def __init__(self, mode: str = "power", steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                 batch_arg_name: str = "batch_size", margin: float = 0.05, max_val: int = 8192, floor: int = 1,
                 keep_global_batch: bool = False) -> None:
        mode = mode.lower() if isinstance(mode, str) else mode
        check_scale_arguments(mode, steps_per_trial, init_val, max_trials, margin, max_val, floor)
        self._mode, self._steps_per_trial, self._init_val = mode, steps_per_trial, init_val
        self._max_trials, self._batch_arg_name = max_trials, batch_arg_name
        self._margin, self._max_val = margin, max_val
        self._floor, self._keep_global_batch = floor, keep_global_batch
        self._early_exit = False  # set by Tuner: end fit once the search is done
        self.optimal_batch_size: int | None = init_val

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            raise ValueError(f"BatchSizeFinder searches during fit; Trainer.{stage} got one (remove it from the "
                             "callbacks for this stage)")
        if trainer.run_state.dataloaders["train"] is not None:
            raise ValueError("BatchSizeFinder cannot resize dataloaders passed to fit(); build them in the module's "
                             "or datamodule's train_dataloader() from the batch-size attribute instead")
        get_attribute(trainer, self._batch_arg_name)

    def scale_batch_size(self, trainer: Trainer, pl_module: Any) -> None:
        self.optimal_batch_size = scale_batch_size(trainer, self._mode, self._steps_per_trial, self._init_val,
                                                   self._max_trials, self._batch_arg_name, self._margin,
                                                   self._max_val, self._floor, self._keep_global_batch)
        if self._early_exit:
            raise TunerExit()

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.scale_batch_size(trainer, pl_module)
