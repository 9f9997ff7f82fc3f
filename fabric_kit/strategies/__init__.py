from fabric_kit.strategies.ddp import DDPStrategy
from fabric_kit.strategies.parallel import ParallelStrategy
from fabric_kit.strategies.registry import register, strategy_names
from fabric_kit.strategies.single_device import SingleDeviceStrategy
from fabric_kit.strategies.strategy import BackwardSyncControl, Strategy

__all__ = ["BackwardSyncControl", "DDPStrategy", "ParallelStrategy", "SingleDeviceStrategy", "Strategy", "register",
           "strategy_names"]
