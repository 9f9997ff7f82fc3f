from typing import Any

from fabric_kit.strategies.ddp import DDPStrategy
from fabric_kit.strategies.parallel import ParallelStrategy
from fabric_kit.strategies.registry import register, strategy_names
from fabric_kit.strategies.single_device import SingleDeviceStrategy
from fabric_kit.strategies.strategy import BackwardSyncControl, Strategy

__all__ = ["BackwardSyncControl", "DDPStrategy", "ModelParallelStrategy", "ParallelStrategy", "SingleDeviceStrategy",
           "Strategy", "register", "strategy_names"]

_LAZY = {"ModelParallelStrategy": "fabric_kit.strategies.model_parallel"}
"""Names imported on first use: their modules import torch.distributed's DeviceMesh and DTensor."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
