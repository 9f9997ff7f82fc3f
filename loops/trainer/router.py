"""Route `training_step` & co. through the module fabric set up, so DDP's forward (gradient-sync bookkeeping)
and the precision's autocast wrap the user's step exactly as they would wrap `forward`."""
from __future__ import annotations

from typing import Any

from torch import nn


class Kept:
    """A step's output that fabric's precision hands back unconverted (a leaf to its collection walk): Lightning's
    Trainer returns predictions in the dtype the step made them (float64 under "64-true")."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class StepRouter(nn.Module):
    """`router("training_step", batch, batch_idx)` calls `module.training_step(batch, batch_idx)`; `predict_step`'s
    output comes back as `Kept` (its `.value` is the prediction)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, step: str, *args: Any, **kwargs: Any) -> Any:
        output = getattr(self.module, step)(*args, **kwargs)
        return Kept(output) if step == "predict_step" else output
