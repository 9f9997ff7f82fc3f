"""EarlyStopping (Lightning's arguments): stop fit when a monitored metric stops improving for `patience` checks,
reaches `stopping_threshold`, crosses `divergence_threshold`, or stops being finite. Every process takes the same
decision: one process stopping stops all."""
from __future__ import annotations

import math
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from loops.callbacks.callback import Callback

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class EarlyStoppingReason(Enum):
    """Why `EarlyStopping` stopped the run (`stopping_reason`)."""

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4


class EarlyStopping(Callback):
    """Checks at the end of each training epoch when validation runs once per epoch (or not at all), otherwise
    after each validation; `check_on_train_epoch_end` forces one or the other. `strict=True` makes a metric that
    was never logged an error listing the logged ones (with False the check is skipped). `min_delta`: the least
    change that counts as an improvement. `verbose` prints each decision (on rank 0 with `log_rank_zero_only`)."""

    monitors_metrics = True
    order = {"min": "<", "max": ">"}

    def __init__(self, monitor: str, min_delta: float = 0.0, patience: int = 3, verbose: bool = False,
                 mode: str = "min", strict: bool = True, check_finite: bool = True,
                 stopping_threshold: float | None = None, divergence_threshold: float | None = None,
                 check_on_train_epoch_end: bool | None = None, log_rank_zero_only: bool = False) -> None:
        if mode not in self.order:
            raise ValueError(f"EarlyStopping(mode={mode!r}) is not valid; accepted: 'min', 'max'")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping(patience={patience!r}) is not valid; pass an int >= 0")
        self.monitor, self.patience, self.verbose, self.mode = monitor, patience, verbose, mode
        self.min_delta = abs(min_delta) if mode == "max" else -abs(min_delta)
        self.strict, self.check_finite = strict, check_finite
        self.stopping_threshold, self.divergence_threshold = stopping_threshold, divergence_threshold
        self._check_on_train_epoch_end = check_on_train_epoch_end
        self.log_rank_zero_only = log_rank_zero_only
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self._check_on_train_epoch_end is None:
            # Validating several times an epoch, or not every epoch: check after each validation instead.
            self._check_on_train_epoch_end = trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        if self._check_on_train_epoch_end and not self._skip(trainer):
            self._check(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: Any) -> None:
        if not self._check_on_train_epoch_end and not self._skip(trainer):
            self._check(trainer)

    @staticmethod
    def _skip(trainer: Trainer) -> bool:
        return trainer.state.fn != "fit" or trainer.sanity_checking or bool(trainer.fast_dev_run)

    def _check(self, trainer: Trainer) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if self.strict:
                raise RuntimeError(f"EarlyStopping(monitor={self.monitor!r}) found no such metric; logged metrics: "
                                   f"{sorted(trainer.callback_metrics)}. Log it with self.log({self.monitor!r}, "
                                   "value), monitor one of these, or pass strict=False to skip the check")
            return
        stop, reason = self._evaluate(value.detach().float().cpu().squeeze())
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        trainer.should_stop = trainer.should_stop or stop
        if stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose:
            self._say(trainer, reason)

    def _evaluate(self, current: Tensor) -> tuple[bool, str | None]:
        """(stop?, why) for the new value; updates best score, wait count and stopping_reason."""
        better = torch.lt if self.mode == "min" else torch.gt
        name, order = self.monitor, self.order[self.mode]
        if self.check_finite and not torch.isfinite(current):
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            return True, (f"Monitored metric {name} = {current.item()} is not finite. Previous best value was "
                          f"{self.best_score.item():.3f}. Signaling Trainer to stop.")
        if self.stopping_threshold is not None and better(current, torch.tensor(self.stopping_threshold)):
            self.stopping_reason = EarlyStoppingReason.STOPPING_THRESHOLD
            return True, (f"Stopping threshold reached: {name} = {current.item()} {order} {self.stopping_threshold}."
                          " Signaling Trainer to stop.")
        if self.divergence_threshold is not None and better(-current, torch.tensor(-self.divergence_threshold)):
            self.stopping_reason = EarlyStoppingReason.DIVERGENCE_THRESHOLD
            return True, (f"Divergence threshold reached: {name} = {current.item()} {order} "
                          f"{self.divergence_threshold}. Signaling Trainer to stop.")
        if better(current - self.min_delta, self.best_score):
            message = (f"Metric {name} improved by {abs(self.best_score - current).item():.3f} >= min_delta = "
                       f"{abs(self.min_delta)}. New best score: {current.item():.3f}"
                       if torch.isfinite(self.best_score) else
                       f"Metric {name} improved. New best score: {current.item():.3f}")
            self.best_score, self.wait_count = current, 0
            return False, message
        self.wait_count += 1
        if self.wait_count >= self.patience:
            self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
            return True, (f"Monitored metric {name} did not improve in the last {self.wait_count} records. Best "
                          f"score: {self.best_score.item():.3f}. Signaling Trainer to stop.")
        return False, None

    def _say(self, trainer: Trainer, message: str) -> None:
        if trainer.world_size == 1:
            print(message)
        elif not self.log_rank_zero_only or trainer.global_rank == 0:
            print(f"[rank: {trainer.global_rank}] {message}")

    def state_dict(self) -> dict[str, Any]:
        return {"wait_count": self.wait_count, "stopped_epoch": self.stopped_epoch, "best_score": self.best_score,
                "patience": self.patience, "stopping_reason": self.stopping_reason.value,
                "stopping_reason_message": self.stopping_reason_message}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        self.patience = state_dict["patience"]
        self.stopping_reason = EarlyStoppingReason(state_dict.get("stopping_reason", 0))
        self.stopping_reason_message = state_dict.get("stopping_reason_message")
