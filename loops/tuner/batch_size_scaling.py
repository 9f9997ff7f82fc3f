"""Find the largest batch size that fits in memory: run short trials (`steps_per_trial` training and validation
batches) at growing sizes until one runs out of memory, then keep the last size that fitted ("power") or bisect
between it and the first that failed ("binsearch"). Trials run inside `fit` and are undone afterwards (see
`trial.py`); only the batch-size attribute keeps its new value."""
from __future__ import annotations

import gc
import warnings
from typing import TYPE_CHECKING, Any

import torch

from loops.callbacks.callback import Callback
from loops.tuner.attributes import get_attribute, set_attribute
from loops.tuner.trial import TrainerSnapshot, run_trial

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer

MODES = ("power", "binsearch")


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, or a RuntimeError whose message says the device or the CPU allocator ran out."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def check_scale_arguments(mode: str, steps_per_trial: int, init_val: int, max_trials: int, margin: float,
                          max_val: int) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a batch-size search; accepted: {MODES}")
    for name, value in (("steps_per_trial", steps_per_trial), ("init_val", init_val), ("max_trials", max_trials),
                        ("max_val", max_val)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: pass an int >= 1")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin={margin}: pass a fraction in [0.0, 1.0)")


def scale_batch_size(trainer: Trainer, mode: str = "power", steps_per_trial: int = 3, init_val: int = 2,
                     max_trials: int = 25, batch_arg_name: str = "batch_size", margin: float = 0.05,
                     max_val: int = 8192) -> int | None:
    """Search inside a running `fit` (after the optimizers exist), undo the trials, set `batch_arg_name` to the
    result and make the fit loop rebuild its dataloaders with it. `margin` shrinks a binsearch result by that
    fraction for headroom."""
    check_scale_arguments(mode, steps_per_trial, init_val, max_trials, margin, max_val)
    if trainer.fast_dev_run:
        warnings.warn("fast_dev_run is on: the batch-size finder is skipped", stacklevel=2)
        return None
    get_attribute(trainer, batch_arg_name)  # a missing attribute is an error before any trial
    snapshot = TrainerSnapshot(trainer)
    search = _Search(trainer, snapshot, steps_per_trial, batch_arg_name, max_val)
    try:
        size = search.power(init_val, max_trials) if mode == "power" else search.binsearch(init_val, max_trials)
    finally:
        snapshot.restore(trainer)
    if mode == "binsearch" and margin > 0:
        size = max(1, int(size * (1 - margin)))
    set_attribute(trainer, batch_arg_name, size)
    trainer.fit_loop.reload_data()
    return size


class _Search:
    def __init__(self, trainer: Trainer, snapshot: TrainerSnapshot, steps: int, name: str, max_val: int) -> None:
        self.trainer, self.snapshot, self.steps, self.name, self.max_val = trainer, snapshot, steps, name, max_val
        self.dataset_length: int | None = None
        self.smallest_failed: int | None = None

    def fits(self, size: int) -> bool:
        """One trial at `size`: True when it ran, False when it ran out of memory (other errors propagate)."""
        trainer = self.trainer
        set_attribute(trainer, self.name, size)
        try:
            loop = run_trial(trainer, Callback(), limit_train_batches=self.steps, limit_val_batches=self.steps,
                             max_epochs=trainer.current_epoch + 1, max_steps=-1, val_check_interval=1.0,
                             check_val_every_n_epoch=1)
            self.dataset_length = _dataset_length(loop.train_loader)
            return True
        except RuntimeError as error:  # torch.OutOfMemoryError is one
            if not is_out_of_memory(error):
                raise
        finally:
            self.snapshot.restore(trainer)
        # Out of memory. Outside the except block the failed trial's frames (and their tensors) can be freed.
        self.smallest_failed = min(size, self.smallest_failed or size)
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        return False

    def can_grow(self, size: int) -> bool:
        return size < self.max_val and (self.dataset_length is None or size < self.dataset_length)

    def power(self, size: int, max_trials: int) -> int:
        """Double after each success; after a failure halve, and stop if some size had fitted."""
        fitted = None
        for _ in range(max_trials):
            if self.fits(size):
                fitted = size
                if not self.can_grow(size):
                    break
                size = min(size * 2, self.max_val)
            else:
                size //= 2
                if fitted is not None or size < 1:
                    break
        return self._result(fitted)

    def binsearch(self, size: int, max_trials: int) -> int:
        """Double until a failure, then bisect between the largest size that fitted and the smallest that failed."""
        fitted, failed = None, None
        for _ in range(max_trials):
            if self.fits(size):
                fitted = size
                if failed is None and not self.can_grow(size):
                    break
                size = min(size * 2, self.max_val) if failed is None else (size + failed) // 2
            else:
                failed = size
                size = ((fitted or 0) + failed) // 2
            if failed is not None and failed - (fitted or 0) <= 1:
                break
        return self._result(fitted)

    def _result(self, fitted: int | None) -> int:
        if fitted is None:
            raise RuntimeError(f"no {self.name} fitted in memory: every size tried ran out of it, down to "
                               f"{self.smallest_failed}; lower init_val, raise max_trials or free memory")
        return fitted


def _dataset_length(loader: Any) -> int | None:
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError, NotImplementedError):
        return None
