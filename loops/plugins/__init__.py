"""Lightning's `lightning.pytorch.plugins`: `Trainer(plugins=...)` takes fabric_kit's precision and checkpoint plugins,
re-exported here (the DeepSpeed, bitsandbytes and XLA ones still load when first named)."""
from fabric_kit.lazy import lazy_attributes

_FROM_FABRIC_KIT = {"AsyncCheckpointIO": "fabric_kit.plugins.io"}
__all__ = ["AsyncCheckpointIO", "BitsandbytesPrecision", "CheckpointIO", "DeepSpeedPrecision", "DoublePrecision",
           "FSDPPrecision", "HalfPrecision", "MixedPrecision", "Precision", "TorchCheckpointIO", "XLACheckpointIO",
           "XLAPrecision"]
__getattr__, __dir__ = lazy_attributes(
    __name__, {name: f"{_FROM_FABRIC_KIT.get(name, 'fabric_kit.plugins')}:{name}" for name in __all__})
