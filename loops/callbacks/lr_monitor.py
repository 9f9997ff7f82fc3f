"""LearningRateMonitor: send each optimizer's learning rate (and optionally momentum and weight decay) to the
loggers, per step or per epoch, under Lightning's names: "lr-SGD", "lr-Adam/pg2", "lr-Adam-1" for a second Adam,
a scheduler's `name` when it has one, "lr-SGD-momentum", "lr-SGD-weight_decay"."""
from __future__ import annotations

import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch.optim import Optimizer

from loops.callbacks.callback import Callback

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class LearningRateMonitor(Callback):
    """`logging_interval`: "step", "epoch", or None (each scheduler's own interval; optimizers without a
    scheduler every step). Values are logged with the Trainer's `log_every_n_steps` and kept in `self.lrs`."""

    def __init__(self, logging_interval: str | None = None, log_momentum: bool = False,
                 log_weight_decay: bool = False) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise ValueError(f"LearningRateMonitor(logging_interval={logging_interval!r}) is not valid; accepted: "
                             "None, 'step', 'epoch'")
        self.logging_interval, self.log_momentum, self.log_weight_decay = logging_interval, log_momentum, \
            log_weight_decay
        self.lrs: dict[str, list[float]] = {}

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        if not trainer.loggers and not trainer.fast_dev_run:  # fast_dev_run drops the loggers: nothing to send
            raise ValueError("LearningRateMonitor needs a logger to send learning rates to; the Trainer has none "
                             "(logger=False?)")
        if self.log_momentum and not all(_momentum_key(group) for opt in trainer.optimizers
                                         for group in opt.param_groups):
            warnings.warn("LearningRateMonitor(log_momentum=True): an optimizer has neither 'momentum' nor 'betas'; "
                          "its momentum is logged as 0", stacklevel=2)
        self.lrs = {name: [] for name, entry in self._names(trainer).items() if entry.kind == "lr"}

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.run_state.progress.batches_stepped  # the loggers' step
        if self.logging_interval != "epoch" and ((step + 1) % trainer.log_every_n_steps == 0 or trainer.should_stop):
            self._log(trainer, "step" if self.logging_interval is None else "any")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        if self.logging_interval != "step":
            self._log(trainer, "epoch" if self.logging_interval is None else "any")

    def _log(self, trainer: Trainer, interval: str) -> None:
        # Every current value is monitorable, as in Lightning (e.g. by EarlyStopping(monitor="lr-SGD", ...)).
        trainer.callback_metrics.update({name: torch.tensor(value, device=trainer.strategy.root_device)
                                         for name, value in self._stats(trainer, "any").items()})
        stats = self._stats(trainer, interval)
        if not stats:
            return
        for name, value in stats.items():
            if name in self.lrs:  # learning rates only
                self.lrs[name].append(value)
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=trainer.run_state.progress.batches_stepped)

    def _names(self, trainer: Trainer) -> dict[str, _Entry]:
        named: dict[str, _Entry] = {}
        seen: Counter[type] = Counter()
        sources: list[tuple[Optimizer, str | None, str | None]] = [
            (c.scheduler.optimizer, c.name, c.interval) for c in trainer.lr_scheduler_configs]
        scheduled = [opt for opt, _, _ in sources]
        sources += [(opt, None, None) for opt in trainer.optimizers if not any(opt is s for s in scheduled)]
        kinds = ["lr"] + ["momentum"] * self.log_momentum + ["weight_decay"] * self.log_weight_decay
        for optimizer, given, interval in sources:
            if given is None:
                seen[type(optimizer)] += 1
                count = seen[type(optimizer)]
                given = f"lr-{type(optimizer).__name__}" + (f"-{count - 1}" if count > 1 else "")
            groups = optimizer.param_groups
            names = [group.get("name", f"pg{i + 1}") for i, group in enumerate(groups)]
            if len(set(names)) != len(names):
                raise ValueError(f"{given}: parameter groups of one optimizer need distinct 'name' values; got "
                                 f"{names}")
            for index, group in enumerate(groups):
                base = given + (f"/{names[index]}" if len(groups) > 1 or "name" in group else "")
                for kind in kinds:
                    named[base if kind == "lr" else f"{base}-{kind}"] = _Entry(optimizer, index, interval, kind)
        return named

    def _stats(self, trainer: Trainer, interval: str) -> dict[str, float]:
        """Values due at `interval` ("step", "epoch" or "any"); optimizers without a scheduler are due each step."""
        stats = {}
        for name, entry in self._names(trainer).items():
            if interval == "any" or (entry.interval or "step") == interval:
                stats[name] = entry.value()
        return stats


class _Entry(NamedTuple):
    """One logged value: which optimizer and param group, the interval it is due at (a scheduler's, or None),
    and what: "lr", "momentum" (the first beta for Adam-like optimizers) or "weight_decay"."""

    optimizer: Optimizer
    group_index: int
    interval: str | None
    kind: str

    def value(self) -> float:
        group = self.optimizer.param_groups[self.group_index]
        if self.kind == "momentum":
            key = _momentum_key(group)
            return float(0.0 if key is None else group[key][0] if key == "betas" else group[key])
        return float(group.get(self.kind, 0.0))


def _momentum_key(group: dict[str, Any]) -> str | None:
    return "betas" if "betas" in group else ("momentum" if "momentum" in group else None)
