"""Trial runs inside `fit` for the tuners: a few training steps under temporary Trainer settings, after which the
model, optimizers, schedulers, counters, metrics and random generators are exactly as they were.

The state is kept as an in-memory copy on the CPU (not a temporary checkpoint file as Lightning does): nothing is
written to disk, there is no file to clean up after a crash, and restoring does not reload the dataloaders."""
from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor

from loops.callbacks.callback import Callback
from loops.logging.metrics import MetricsHub
from loops.trainer.fit_loop import FitLoop
from loops.trainer.hooks import HookTable

# Trainer attributes a trial changes (settings, counters, and where hooks and logs go).
_TRAINER_ATTRIBUTES = ("fit_loop", "callbacks", "_hooks", "_loggers", "_metrics", "current_epoch", "_global_step",
                       "should_stop", "max_steps", "max_epochs", "min_epochs", "min_steps", "limit_train_batches",
                       "limit_val_batches", "num_sanity_val_steps", "val_check_interval", "check_val_every_n_epoch",
                       "lr_scheduler_configs", "_results", "_train_results", "_log_defaults", "_batch")


class TrainerSnapshot:
    """A copy of everything a trial run can change; `restore` puts it back into the trainer and its module."""

    def __init__(self, trainer: Any) -> None:
        self.weights = cpu_copy(trainer.lightning_module.state_dict())
        self.optimizers = [cpu_copy(optimizer.state_dict()) for optimizer in trainer.optimizers]
        self.schedulers = [cpu_copy(config.scheduler.state_dict()) for config in trainer.lr_scheduler_configs]
        self.attributes = {name: getattr(trainer, name) for name in _TRAINER_ATTRIBUTES}
        self.stage = trainer.state.stage
        self.rng = _rng_states()

    def restore(self, trainer: Any) -> None:
        module = trainer.lightning_module
        module.load_state_dict(self.weights)
        module.zero_grad(set_to_none=True)
        for name, value in self.attributes.items():
            setattr(trainer, name, value)
        for optimizer, state in zip(trainer.optimizers, self.optimizers):
            optimizer.load_state_dict(state)
        for config, state in zip(trainer.lr_scheduler_configs, self.schedulers):
            config.scheduler.load_state_dict(state)
        trainer.state.stage = self.stage
        _set_rng_states(self.rng)


def run_trial(trainer: Any, callback: Callback, **settings: Any) -> FitLoop:
    """Run a fresh fit loop with `callback` as the only callback, no loggers, no sanity check, and `settings`
    (Trainer attribute name -> value) applied; returns the loop. Take a `TrainerSnapshot` first to undo it."""
    trainer.fit_loop = loop = FitLoop(trainer)
    trainer.callbacks = [callback]
    trainer._hooks = HookTable(trainer, trainer.lightning_module, [callback])
    trainer._loggers = []
    trainer._metrics = MetricsHub()
    trainer.should_stop = False
    trainer.min_epochs = trainer.min_steps = None
    trainer.num_sanity_val_steps = 0
    for name, value in settings.items():
        setattr(trainer, name, value)
    loop.run()
    return loop


def cpu_copy(value: Any) -> Any:
    """A deep copy of a (nested) state dict with every tensor copied to the CPU."""
    if isinstance(value, Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: cpu_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_copy(item) for item in value)
    return value


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy
    except ImportError:
        return states
    states["numpy"] = numpy.random.get_state()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states:
        import numpy

        numpy.random.set_state(states["numpy"])
