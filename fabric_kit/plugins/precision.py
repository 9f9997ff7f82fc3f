"""Precision plugins at Lightning's `lightning.fabric.plugins.precision`; `fabric_kit.precision` defines them. The
FSDP, DeepSpeed, bitsandbytes and FP8 ones are imported when first named."""
from fabric_kit.lazy import lazy_attributes
from fabric_kit.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision, TruePrecision, XLAPrecision

LAZY = {"FSDPPrecision": "fabric_kit.precision.fsdp:FSDPPrecision",
        "DeepSpeedPrecision": "fabric_kit.strategies.deepspeed:DeepSpeedPrecision",
        "BitsandbytesPrecision": "fabric_kit.precision.bitsandbytes:BitsandbytesPrecision",
        "Float8Precision": "fabric_kit.precision.fp8:Float8Precision"}
__getattr__, __dir__ = lazy_attributes(__name__, LAZY)

__all__ = ["DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision", "TruePrecision", "XLAPrecision", *LAZY]
