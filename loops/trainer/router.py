"""Route `training_step` & co. through the module fabric set up, so DDP's forward (gradient-sync bookkeeping)
and the precision's autocast wrap the user's step exactly as they would wrap `forward`."""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

_STEPS = ("training_step", "validation_step", "test_step", "predict_step")


class Kept:
    """A step's output that fabric's precision hands back unconverted (a leaf to its collection walk): Lightning's
    Trainer returns predictions in the dtype the step made them (float64 under "64-true")."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class StepRouter(nn.Module):
    """`router("training_step", batch, batch_idx)` calls `module.training_step(batch, batch_idx)`, without
    `batch_idx` for a step that takes none and with the first argument alone for a step that pulls its batches
    (`training_step(self, dataloader_iter)`; the signatures are read once, here); `predict_step`'s output comes
    back as `Kept` (its `.value` is the prediction)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.without_idx = frozenset(name for name in _STEPS if not takes_batch_idx(getattr(module, name, None)))
        self.pulling = frozenset(name for name in _STEPS if pulls_batches(getattr(module, name, None)))

    def forward(self, step: str, *args: Any, **kwargs: Any) -> Any:
        if step in self.pulling:
            args = args[:1]
        elif step in self.without_idx:
            args = args[:1] + args[2:]
        output = getattr(self.module, step)(*args, **kwargs)
        return Kept(output) if step == "predict_step" else output


def takes_batch_idx(step: Any) -> bool:
    """Lightning's rule: a step gets `batch_idx` when its signature names it, takes `*args` or has at least two
    positional parameters (`validation_step(self, batch)` gets the batch alone). True for what is no function."""
    if not callable(step):
        return True
    try:
        parameters = list(inspect.signature(step).parameters.values())
    except (TypeError, ValueError):  # a builtin without a readable signature
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return any(p.kind is p.VAR_POSITIONAL or p.name == "batch_idx" for p in parameters) or len(positional) >= 2


def pulls_batches(step: Any) -> bool:
    """Lightning's rule: a step whose signature names a `dataloader_iter` parameter receives the loader's iterator
    instead of a batch, and fetches its batches itself."""
    try:
        return callable(step) and "dataloader_iter" in inspect.signature(step).parameters
    except (TypeError, ValueError):
        return False
