"""EarlyStopping (minimal, Lightning's arguments): stop fit when a monitored metric stops improving for `patience`
checks, crosses a threshold, or becomes non-finite."""
from __future__ import annotations

import math
from typing import Any

import torch

from loops.callbacks.callback import Callback


class EarlyStopping(Callback):
    """Checks after each validation (or each training epoch with `check_on_train_epoch_end=True` or without
    validation); every process takes the same decision."""

    monitors_metrics = True

    def __init__(self, monitor: str, min_delta: float = 0.0, patience: int = 3, verbose: bool = False,
                 mode: str = "min", strict: bool = True, check_finite: bool = True,
                 stopping_threshold: float | None = None, divergence_threshold: float | None = None,
                 check_on_train_epoch_end: bool | None = None, log_rank_zero_only: bool = False) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping(mode={mode!r}) is not valid; accepted: 'min', 'max'")
        self.monitor, self.patience, self.verbose, self.mode = monitor, patience, verbose, mode
        self.min_delta = abs(min_delta) if mode == "max" else -abs(min_delta)
        self.strict, self.check_finite = strict, check_finite
        self.stopping_threshold, self.divergence_threshold = stopping_threshold, divergence_threshold
        self.check_on_train_epoch_end = check_on_train_epoch_end
        self.log_rank_zero_only = log_rank_zero_only
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.stopping_reason: str | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._on_train_epoch_end(trainer):
            self._check(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._on_train_epoch_end(trainer) and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._check(trainer)

    def _on_train_epoch_end(self, trainer: Any) -> bool:
        if self.check_on_train_epoch_end is not None:
            return self.check_on_train_epoch_end
        return not any(n > 0 for n in trainer.num_val_batches)

    def _check(self, trainer: Any) -> None:
        if trainer.fast_dev_run:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            message = (f"EarlyStopping(monitor={self.monitor!r}) found no such metric; logged metrics: "
                       f"{sorted(trainer.callback_metrics)}. Log it with self.log({self.monitor!r}, value) or pass "
                       "strict=False")
            if self.strict:
                raise KeyError(message)
            return
        current = value.detach().float().cpu().squeeze()
        stop, reason = self._evaluate(current)
        stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason = reason
            if self.verbose:
                trainer.print(reason)

    def _evaluate(self, current: torch.Tensor) -> tuple[bool, str | None]:
        better = torch.lt if self.mode == "min" else torch.gt
        if self.check_finite and not torch.isfinite(current):
            return True, f"Monitored metric {self.monitor} = {current.item()} is not finite. Stopping."
        if self.stopping_threshold is not None and better(current, torch.tensor(self.stopping_threshold)):
            return True, f"Monitored metric {self.monitor} = {current.item()} reached the stopping threshold."
        if self.divergence_threshold is not None and better(-current, torch.tensor(-self.divergence_threshold)):
            return True, f"Monitored metric {self.monitor} = {current.item()} diverged past the threshold."
        if better(current - self.min_delta, self.best_score):
            self.best_score, self.wait_count = current, 0
            return False, None
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, (f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} checks. "
                          f"Best score: {self.best_score.item():.3f}.")
        return False, None

    def state_dict(self) -> dict[str, Any]:
        return {"wait_count": self.wait_count, "stopped_epoch": self.stopped_epoch, "best_score": self.best_score,
                "patience": self.patience}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        self.patience = state_dict["patience"]
