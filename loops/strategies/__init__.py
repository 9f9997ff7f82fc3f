"""Lightning's `lightning.pytorch.strategies`: the Trainer takes fabric_kit's strategies, re-exported here (the ones
that pull in FSDP, DeepSpeed or XLA still load when first named)."""
from fabric_kit.lazy import lazy_attributes

__all__ = ["DDPStrategy", "DeepSpeedStrategy", "FSDPStrategy", "ModelParallelStrategy", "ParallelStrategy",
           "SingleDeviceStrategy", "SingleDeviceXLAStrategy", "Strategy", "XLAStrategy"]
__getattr__, __dir__ = lazy_attributes(__name__, {name: f"fabric_kit.strategies:{name}" for name in __all__})
