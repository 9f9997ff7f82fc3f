"""Trial runs inside `fit` for the tuners: a few training steps under temporary Trainer settings, after which the
model, optimizers, schedulers, counters, metrics and random generators are exactly as they were.

The state is kept as an in-memory copy on the CPU (not a temporary checkpoint file as Lightning does): nothing is
written to disk, there is no file to clean up after a crash, and restoring does not reload the dataloaders."""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from loops.callbacks.callback import Callback
from loops.logging.metrics import MetricsHub
from loops.trainer.fit_loop import FitLoop
from loops.trainer.hooks import HookTable
from loops.trainer.run_state import RunState

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class TrainerSnapshot:
    """A copy of everything a trial run can change: the run state, the module's weights, the optimizers' and
    schedulers' states and the random generators; `restore` puts it back."""

    def __init__(self, trainer: Trainer) -> None:
        self.weights = cpu_copy(trainer.run_state.hooks.pl_module.state_dict())
        self.optimizers = [cpu_copy(optimizer.state_dict()) for optimizer in trainer.optimizers]
        self.schedulers = [cpu_copy(config.scheduler.state_dict()) for config in trainer.lr_scheduler_configs]
        self.run_state: RunState = trainer.run_state.snapshot()
        self.rng = _rng_states()

    def restore(self, trainer: Trainer) -> None:
        trainer.run_state.restore(self.run_state)
        module = trainer.run_state.hooks.pl_module
        module.load_state_dict(self.weights)
        module.zero_grad(set_to_none=True)
        for optimizer, state in zip(trainer.optimizers, self.optimizers, strict=False):
            optimizer.load_state_dict(state)
        for config, state in zip(trainer.lr_scheduler_configs, self.schedulers, strict=False):
            config.scheduler.load_state_dict(state)
        _set_rng_states(self.rng)


def run_trial(trainer: Trainer, callback: Callback, **settings: Any) -> FitLoop:
    """Run a fresh fit loop with `callback` as the only callback, no loggers, no sanity check and `settings`
    (Trainer attribute name -> value); returns the loop. The Trainer's attributes are as before when it returns;
    take a `TrainerSnapshot` first to undo the rest."""
    loop = FitLoop(trainer)
    temporary = {"fit_loop": loop, "callbacks": [callback], "loggers": [], "min_epochs": None, "min_steps": None,
                 "num_sanity_val_steps": 0, **settings}
    saved = {name: getattr(trainer, name) for name in temporary}
    state = trainer.run_state
    state.progress.restart_loop()
    state.should_stop = False
    state.metrics = MetricsHub()
    try:
        for name, value in temporary.items():
            setattr(trainer, name, value)
        state.hooks = HookTable(trainer, state.hooks.pl_module, state.hooks.datamodule)  # only `callback`
        loop.run()
    finally:
        for name, value in saved.items():
            setattr(trainer, name, value)
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
