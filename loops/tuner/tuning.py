"""Tuner: run the learning-rate range test or the batch-size search on a Trainer without training. Each adds its
finder callback to the Trainer, runs `fit` until the search is done, and removes the callback again."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class Tuner:
    """`Tuner(trainer).lr_find(model, ...)` and `Tuner(trainer).scale_batch_size(model, ...)`, as in Lightning."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    def scale_batch_size(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None,
                         dataloaders: Any = None, datamodule: Any = None, method: str = "fit", mode: str = "power",
                         steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                         batch_arg_name: str = "batch_size", margin: float = 0.05, max_val: int = 8192,
                         floor: int = 1, keep_global_batch: bool = False) -> int | None:
        """The largest batch size that fits in memory on every rank (see BatchSizeFinder); it is also written to
        the module's (or datamodule's) `batch_arg_name`, and with `keep_global_batch` the Trainer's
        `accumulate_grad_batches` keeps the batch of an optimizer step. Returns None under fast_dev_run."""
        from loops.callbacks.batch_size_finder import BatchSizeFinder

        _check_fit_only(method, dataloaders)
        finder = BatchSizeFinder(mode=mode, steps_per_trial=steps_per_trial, init_val=init_val,
                                 max_trials=max_trials, batch_arg_name=batch_arg_name, margin=margin, max_val=max_val,
                                 floor=floor, keep_global_batch=keep_global_batch)
        self._search(finder, model, train_dataloaders, val_dataloaders, datamodule)
        return finder.optimal_batch_size

    def lr_find(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None,
                dataloaders: Any = None, datamodule: Any = None, method: str = "fit", min_lr: float = 1e-8,
                max_lr: float = 1.0, num_training: int = 100, mode: str = "exponential",
                early_stop_threshold: float | None = 4.0, update_attr: bool = True, attr_name: str = "") -> Any:
        """The learning-rate range test (see LearningRateFinder); returns its LRFinder (`results`,
        `suggestion()`, `plot()`), or None under fast_dev_run."""
        from loops.callbacks.lr_finder import LearningRateFinder

        _check_fit_only(method, dataloaders)
        finder = LearningRateFinder(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training, mode=mode,
                                    early_stop_threshold=early_stop_threshold, update_attr=update_attr,
                                    attr_name=attr_name)
        self._search(finder, model, train_dataloaders, val_dataloaders, datamodule)
        return finder.optimal_lr

    def _search(self, finder: Any, model: Any, train_dataloaders: Any, val_dataloaders: Any, datamodule: Any) -> None:
        trainer = self._trainer
        given = trainer._given_callbacks
        already = [type(c).__name__ for c in given if isinstance(c, type(finder))]
        if already:
            raise ValueError(f"the Trainer already has a {already[0]} callback; remove it to use the Tuner")
        finder._early_exit = True
        given.insert(0, finder)
        try:
            trainer.fit(model, train_dataloaders, val_dataloaders, datamodule)
        finally:
            given.remove(finder)
            trainer.callbacks = [c for c in trainer.callbacks if c is not finder]


def _check_fit_only(method: str, dataloaders: Any) -> None:
    if method != "fit":
        raise ValueError(f"method={method!r}: loops' Tuner searches during fit only; pass method='fit'")
    if dataloaders is not None:
        raise ValueError("with method='fit' pass train_dataloaders / val_dataloaders, not dataloaders")
