"""Strategies under Lightning's names (`lightning.fabric.strategies`). The ones that pull in FSDP, DeepSpeed or
XLA are imported when first named, so `import fabric_kit.strategies` stays light."""
from fabric_kit.lazy import lazy_attributes
from fabric_kit.strategies.ddp import DDPStrategy
from fabric_kit.strategies.parallel import ParallelStrategy
from fabric_kit.strategies.registry import STRATEGY_REGISTRY, register, strategy_names
from fabric_kit.strategies.single_device import SingleDeviceStrategy
from fabric_kit.strategies.strategy import BackwardSyncControl, Strategy

LAZY = {
    "DeepSpeedStrategy": "fabric_kit.strategies.deepspeed:DeepSpeedStrategy",
    "FSDPStrategy": "fabric_kit.strategies.fsdp:FSDPStrategy",
    "ModelParallelStrategy": "fabric_kit.strategies.model_parallel:ModelParallelStrategy",
    "SingleDeviceXLAStrategy": "fabric_kit.strategies.xla:SingleXLAStrategy",  # Lightning's name for it
    "SingleXLAStrategy": "fabric_kit.strategies.xla:SingleXLAStrategy",
    "XLAFSDPStrategy": "fabric_kit.strategies.xla_fsdp:XLAFSDPStrategy",
    "XLAStrategy": "fabric_kit.strategies.xla:XLAStrategy",
}
__getattr__, __dir__ = lazy_attributes(__name__, LAZY)

__all__ = ["STRATEGY_REGISTRY", "BackwardSyncControl", "DDPStrategy", "ParallelStrategy", "SingleDeviceStrategy",
           "Strategy", "register", "strategy_names", *LAZY]
