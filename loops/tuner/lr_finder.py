"""The learning-rate range test: train a few steps while the learning rate sweeps from `min_lr` to `max_lr`, record
the smoothed loss at each, and suggest the rate where the loss falls fastest. The trial runs inside `fit` and is
undone afterwards (weights, optimizer, counters and RNG as before; see `trial.py`)."""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from loops.callbacks.callback import Callback
from loops.core.optimizer_config import SchedulerConfig
from loops.tuner.attributes import has_attribute, set_attribute
from loops.tuner.trial import TrainerSnapshot, run_trial

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer

MODES = ("exponential", "linear")


class LRFinder:
    """What the range test found: `results` ({"lr": [...], "loss": [...]}, one entry per optimizer step, the loss
    smoothed), `suggestion()` and `plot()`."""

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        self.mode, self.lr_min, self.lr_max, self.num_training = mode, lr_min, lr_max, num_training
        self.results: dict[str, list[float]] = {"lr": [], "loss": []}
        self._optimal_idx: int | None = None

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The learning rate where the loss decreases most steeply (ignoring the first `skip_begin` and last
        `skip_end` points and non-finite losses); None when fewer than two points remain."""
        end = len(self.results["loss"]) - skip_end
        indices = [i for i in range(skip_begin, end) if math.isfinite(self.results["loss"][i])]
        if len(indices) < 2:
            warnings.warn(f"the learning-rate finder has {len(indices)} usable points after skipping "
                          f"{skip_begin} + {skip_end}; no suggestion. Raise num_training or use more data",
                          stacklevel=2)
            self._optimal_idx = None
            return None
        losses = torch.tensor([self.results["loss"][i] for i in indices], dtype=torch.float64)
        lrs = torch.tensor([self.results["lr"][i] for i in indices], dtype=torch.float64)
        slopes = torch.gradient(losses, spacing=[lrs])[0]
        self._optimal_idx = indices[int(torch.argmin(slopes))]
        return self.results["lr"][self._optimal_idx]

    def plot(self, suggest: bool = False, show: bool = False, ax: Any = None) -> Any:
        """Loss against learning rate (log scale in exponential mode); `suggest` marks the suggestion. Returns the
        matplotlib figure."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as missing:
            raise ModuleNotFoundError("LRFinder.plot needs matplotlib: pip install matplotlib") from missing
        if ax is None:
            figure, ax = plt.subplots()
        else:
            figure = ax.figure
        ax.plot(self.results["lr"], self.results["loss"])
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        index = self._optimal_idx if suggest and self.suggestion() is not None else None
        if index is not None:
            ax.plot(self.results["lr"][index], self.results["loss"][index], marker="o", markersize=10, color="red")
        if show:
            plt.show()
        return figure


def check_lr_find_arguments(min_lr: float, max_lr: float, num_training: int, mode: str,
                            early_stop_threshold: float | None) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a learning-rate sweep; accepted: {MODES}")
    if not 0 < min_lr < max_lr:
        raise ValueError(f"min_lr={min_lr} and max_lr={max_lr}: need 0 < min_lr < max_lr")
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 2:
        raise ValueError(f"num_training={num_training!r}: pass an int >= 2 (the number of learning rates tried)")
    if early_stop_threshold is not None and early_stop_threshold <= 1:
        raise ValueError(f"early_stop_threshold={early_stop_threshold}: pass a float > 1 or None")


def lr_find(trainer: Trainer, model: Any, min_lr: float = 1e-8, max_lr: float = 1.0, num_training: int = 100,
            mode: str = "exponential", early_stop_threshold: float | None = 4.0, update_attr: bool = False,
            attr_name: str = "") -> LRFinder | None:
    """Run the range test inside a running `fit` (after the optimizers exist) and undo it; with `update_attr`
    the suggestion becomes the module's learning-rate attribute and the optimizer's learning rate."""
    check_lr_find_arguments(min_lr, max_lr, num_training, mode, early_stop_threshold)
    if trainer.fast_dev_run:
        warnings.warn("fast_dev_run is on: the learning-rate finder is skipped", stacklevel=2)
        return None
    if len(trainer.optimizers) != 1:
        raise ValueError(f"the learning-rate finder sweeps one optimizer; configure_optimizers returned "
                         f"{len(trainer.optimizers)}")
    if update_attr:
        attr_name = _lr_attribute(trainer, model, attr_name)
    finder = LRFinder(mode, min_lr, max_lr, num_training)
    recorder = _SweepRecorder(early_stop_threshold)
    snapshot = TrainerSnapshot(trainer)
    try:
        optimizer = trainer.optimizers[0]
        for group in optimizer.param_groups:  # the sweep's base rate, also over a user scheduler's initial_lr
            group["lr"] = group["initial_lr"] = min_lr
        sweep = LambdaLR(optimizer, _sweep_factor(mode, min_lr, max_lr, num_training))
        trainer.run_state.lr_scheduler_configs = [SchedulerConfig(sweep, interval="step")]
        # One step per learning rate; at least one step per epoch, so the epoch bound never cuts the sweep short.
        run_trial(trainer, recorder, max_steps=trainer.global_step + num_training,
                  max_epochs=trainer.current_epoch + num_training, limit_val_batches=0)
    finally:
        snapshot.restore(trainer)
    results = {"lr": recorder.lrs, "loss": recorder.losses}
    finder.results = trainer.strategy.broadcast(results) if trainer.world_size > 1 else results
    if update_attr:
        suggested = finder.suggestion()
        if suggested is not None:
            set_attribute(trainer, attr_name, suggested)
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = suggested
    return finder


def _sweep_factor(mode: str, min_lr: float, max_lr: float, steps: int) -> Any:
    """Step i's learning rate as a multiple of min_lr: from 1 at step 0 to max_lr / min_lr at the last step."""
    if mode == "exponential":
        return lambda step: (max_lr / min_lr) ** (min(step, steps - 1) / (steps - 1))
    return lambda step: (min_lr + (max_lr - min_lr) * min(step, steps - 1) / (steps - 1)) / min_lr


def _lr_attribute(trainer: Trainer, model: Any, attr_name: str) -> str:
    if attr_name:
        if not has_attribute(trainer, attr_name):
            raise AttributeError(f"attr_name={attr_name!r} is not an attribute or hparams key of "
                                 f"{type(model).__name__} (or its datamodule)")
        return attr_name
    for name in ("lr", "learning_rate"):
        if has_attribute(trainer, name):
            return name
    raise AttributeError(f"update_attr=True needs the learning rate in {type(model).__name__}.lr / .learning_rate or "
                         "in hparams under one of those names; or pass attr_name=..., or update_attr=False")


class _SweepRecorder(Callback):
    """Records, for each optimizer step of the sweep, the learning rate it used and the exponentially smoothed
    loss; stops the sweep once the smoothed loss exceeds `early_stop_threshold` times the best one."""

    def __init__(self, early_stop_threshold: float | None, beta: float = 0.98) -> None:
        self.early_stop_threshold, self.beta = early_stop_threshold, beta
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self._average = 0.0
        self._best = math.inf
        self._lr = 0.0
        self._steps_before = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]
        self._steps_before = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self._steps_before:
            return  # an accumulation batch: the learning rate is recorded with the batch that steps
        self.lrs.append(self._lr)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:  # training_step skipped the batch
            self.losses.append(math.nan)
            return
        self._average = self.beta * self._average + (1 - self.beta) * float(loss)
        smoothed = self._average / (1 - self.beta ** len(self.lrs))
        self.losses.append(smoothed)
        diverged = self.early_stop_threshold is not None and len(self.lrs) > 1 \
            and smoothed > self.early_stop_threshold * self._best
        self._best = min(self._best, smoothed)
        trainer.should_stop = trainer.strategy.broadcast(diverged) if trainer.world_size > 1 else diverged
