"""Optimizers and LR schedulers chosen on the command line (`--optimizer Adam --optimizer.lr 0.01`,
`--lr_scheduler StepLR --lr_scheduler.step_size 10`) and how they replace the model's `configure_optimizers`."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from types import MethodType
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """torch's ReduceLROnPlateau plus the metric it watches, so a config can say which one:
    `--lr_scheduler ReduceLROnPlateau --lr_scheduler.monitor val_loss`."""

    def __init__(self, optimizer: Optimizer, monitor: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(optimizer, *args, **kwargs)
        self.monitor = monitor


SCHEDULER_BASES = (LRScheduler, ReduceLROnPlateau)
"""What `--lr_scheduler` accepts: torch's schedulers, and for plateau scheduling the one above (torch's own has no
`monitor`)."""

OptimizerCallable = Callable[[Iterable], Optimizer]
"""Type hint for a model argument that builds its optimizer from parameters: `optimizer: OptimizerCallable`."""
LRSchedulerCallable = Callable[[Optimizer], LRScheduler | ReduceLROnPlateau]
"""Type hint for a model argument that builds its scheduler from an optimizer."""


def instantiate_class(args: Any, init: dict[str, Any]) -> Any:
    """Build `init["class_path"]` with positional `args` (one value or a tuple) and `init["init_args"]`."""
    if not isinstance(init, dict) or "class_path" not in init:
        raise ValueError(f"instantiate_class needs a dict with 'class_path' (and optional 'init_args'); got {init!r}")
    module_name, _, class_name = init["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(*(args if isinstance(args, tuple) else (args,)), **init.get("init_args", {}))


def replace_configure_optimizers(model: torch.nn.Module, optimizer_init: dict[str, Any],
                                 scheduler_init: dict[str, Any] | None, build: Callable[..., Any]) -> None:
    """Make `model.configure_optimizers()` return `build(model, optimizer, scheduler)`, both made from their
    configs with the parameters the model has when it is called: a sharding strategy calls it again after sharding
    and gets fresh ones."""

    def configured(module: torch.nn.Module) -> Any:
        optimizer = instantiate_class(module.parameters(), optimizer_init)
        scheduler = instantiate_class(optimizer, scheduler_init) if scheduler_init else None
        return build(module, optimizer, scheduler)

    # setattr: nn.Module types its attributes as tensors or modules, and this is a bound method
    setattr(model, "configure_optimizers", MethodType(configured, model))  # noqa: B010  (this instance only)
