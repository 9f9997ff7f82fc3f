"""Route `training_step` & co. through the module fabric set up, so DDP's forward (gradient-sync bookkeeping)
and the precision's autocast wrap the user's step exactly as they would wrap `forward`."""
from __future__ import annotations

from typing import Any

from torch import nn


class StepRouter(nn.Module):
    """`router("training_step", batch, batch_idx)` calls `module.training_step(batch, batch_idx)`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, step: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, step)(*args, **kwargs)
