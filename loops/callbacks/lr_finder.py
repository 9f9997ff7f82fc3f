"""LearningRateFinder: the learning-rate range test as a callback, run when fit starts (before the first epoch).
With `update_attr` training then continues at the suggested learning rate."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loops.callbacks.callback import Callback
from loops.tuner.exit import TunerExit
from loops.tuner.lr_finder import LRFinder, check_lr_find_arguments, lr_find

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class LearningRateFinder(Callback):
    """Sweep the learning rate from `min_lr` to `max_lr` over `num_training_steps` optimizer steps ("exponential"
    or "linear"), stopping early once the loss exceeds `early_stop_threshold` times its best; the model, optimizer
    and counters are restored afterwards. The result is `self.optimal_lr` (results, suggestion(), plot())."""

    SUPPORTED_MODES = ("linear", "exponential")

    def __init__(self, min_lr: float = 1e-8, max_lr: float = 1.0, num_training_steps: int = 100,
                 mode: str = "exponential", early_stop_threshold: float | None = 4.0, update_attr: bool = True,
                 attr_name: str = "") -> None:
        mode = mode.lower() if isinstance(mode, str) else mode
        check_lr_find_arguments(min_lr, max_lr, num_training_steps, mode, early_stop_threshold)
        self._min_lr, self._max_lr, self._num_training_steps = min_lr, max_lr, num_training_steps
        self._mode, self._early_stop_threshold = mode, early_stop_threshold
        self._update_attr, self._attr_name = update_attr, attr_name
        self._early_exit = False  # set by Tuner: end fit once the search is done
        self.optimal_lr: LRFinder | None = None

    def lr_find(self, trainer: Trainer, pl_module: Any) -> None:
        self.optimal_lr = lr_find(trainer, pl_module, min_lr=self._min_lr, max_lr=self._max_lr,
                                  num_training=self._num_training_steps, mode=self._mode,
                                  early_stop_threshold=self._early_stop_threshold, update_attr=self._update_attr,
                                  attr_name=self._attr_name)
        if self._early_exit:
            raise TunerExit()

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.lr_find(trainer, pl_module)
