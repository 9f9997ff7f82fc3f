"""Find the largest batch size that fits in memory: run short trials (`steps_per_trial` training and validation
batches) at growing sizes until one runs out of memory, then keep the last size that fitted ("power") or bisect
between it and the first that failed ("binsearch"). Trials run inside `fit` and are undone afterwards (see
`trial.py`); only the batch-size attribute (and, with `keep_global_batch`, `accumulate_grad_batches`) keeps its new
value. Under DDP each trial ends in fabric_kit's out-of-memory agreement (`fabric_kit.out_of_memory`): a rank that runs
out makes every rank count the trial as failed, so all ranks try the same sizes and settle on the same one."""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from fabric_kit.out_of_memory import OutOfMemoryAgreement, free_memory
from loops.callbacks.callback import Callback
from loops.tuner.attributes import get_attribute, set_attribute
from loops.tuner.trial import TrainerSnapshot, run_trial

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer

MODES = ("power", "binsearch")


def check_scale_arguments(mode: str, steps_per_trial: int, init_val: int, max_trials: int, margin: float,
                          max_val: int, floor: int = 1) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a batch-size search; accepted: {MODES}")
    for name, value in (("steps_per_trial", steps_per_trial), ("init_val", init_val), ("max_trials", max_trials),
                        ("max_val", max_val), ("floor", floor)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: pass an int >= 1")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin={margin}: pass a fraction in [0.0, 1.0)")
    if floor > min(init_val, max_val):
        raise ValueError(f"floor={floor} is above init_val={init_val} or max_val={max_val}: the floor is the "
                         "smallest batch size tried")


def scale_batch_size(trainer: Trainer, mode: str = "power", steps_per_trial: int = 3, init_val: int = 2,
                     max_trials: int = 25, batch_arg_name: str = "batch_size", margin: float = 0.05,
                     max_val: int = 8192, floor: int = 1, keep_global_batch: bool = False) -> int | None:
    """Search inside a running `fit` (after the optimizers exist), undo the trials, set `batch_arg_name` to the
    result and make the fit loop rebuild its dataloaders with it. `margin` shrinks a binsearch result by that
    fraction for headroom; no size below `floor` is tried, and a RuntimeError naming it is raised when even the
    floor runs out of memory. `keep_global_batch`: the batch of each optimizer step stays `batch_arg_name *
    accumulate_grad_batches` as it was before the search: the result is the largest divisor of it that fits, and
    `accumulate_grad_batches` becomes the quotient (never above the current size)."""
    check_scale_arguments(mode, steps_per_trial, init_val, max_trials, margin, max_val, floor)
    if trainer.fast_dev_run:
        warnings.warn("fast_dev_run is on: the batch-size finder is skipped", stacklevel=2)
        return None
    step_batch = get_attribute(trainer, batch_arg_name) * trainer.accumulate_grad_batches  # errors before trials
    if keep_global_batch:
        if floor > step_batch:
            raise ValueError(f"floor={floor} is above the batch of one optimizer step ({batch_arg_name} * "
                             f"accumulate_grad_batches = {step_batch}) that keep_global_batch keeps")
        max_val = min(max_val, step_batch)
        init_val = max(floor, min(init_val, max_val))
    snapshot = TrainerSnapshot(trainer)
    search = _Search(trainer, snapshot, steps_per_trial, batch_arg_name, max_val, floor)
    try:
        size = search.power(init_val, max_trials) if mode == "power" else search.binsearch(init_val, max_trials)
    finally:
        snapshot.restore(trainer)
    if mode == "binsearch" and margin > 0:
        size = max(floor, int(size * (1 - margin)))
    if keep_global_batch:
        size = max(d for d in range(1, size + 1) if step_batch % d == 0)
        trainer.accumulate_grad_batches = step_batch // size
    set_attribute(trainer, batch_arg_name, size)
    trainer.fit_loop.reload_data()
    return size


class _Search:
    def __init__(self, trainer: Trainer, snapshot: TrainerSnapshot, steps: int, name: str, max_val: int,
                 floor: int) -> None:
        self.trainer, self.snapshot, self.steps, self.name, self.max_val = trainer, snapshot, steps, name, max_val
        self.floor = floor
        self.dataset_length: int | None = None
        self.smallest_failed: int | None = None

    def fits(self, size: int) -> bool:
        """One trial at `size`: True when it ran on every rank, False when it ran out of memory on some rank
        (other errors propagate)."""
        trainer = self.trainer
        set_attribute(trainer, self.name, size)
        try:
            with OutOfMemoryAgreement(trainer.fabric) as trial:
                loop = run_trial(trainer, Callback(), limit_train_batches=self.steps, limit_val_batches=self.steps,
                                 max_epochs=trainer.current_epoch + 1, max_steps=-1, val_check_interval=1.0,
                                 check_val_every_n_epoch=1, on_oom="raise")  # a trial's error is the answer
                self.dataset_length = _dataset_length(loop.train_loader)
        finally:
            self.snapshot.restore(trainer)
        if not trial.failed:
            return True
        self.smallest_failed = min(size, self.smallest_failed or size)
        free_memory()
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
                if fitted is not None or size <= self.floor:
                    break
                size = max(self.floor, size // 2)
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
                size = max(self.floor, ((fitted or 0) + failed) // 2)
            if failed is not None and failed - (fitted or self.floor - 1) <= 1:
                break
        return self._result(fitted)

    def _result(self, fitted: int | None) -> int:
        if fitted is None and self.smallest_failed == self.floor:
            raise RuntimeError(f"no {self.name} fitted in memory: even the floor, {self.floor}, ran out of it; "
                               "lower floor or free memory")
        if fitted is None:
            raise RuntimeError(f"no {self.name} fitted in memory: every size tried ran out of it, down to "
                               f"{self.smallest_failed}; lower init_val, raise max_trials or free memory")
        return fitted


def _dataset_length(loader: Any) -> int | None:
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError, NotImplementedError):
        return None
