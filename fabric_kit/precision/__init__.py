"""Precision settings by name, with Lightning's aliases (`16` means `16-mixed`, `bf16` means `bf16-mixed`), and the
precision plugin classes (Lightning's `lightning.fabric.plugins.precision`) that implement them. `FSDPPrecision`
lives in `fabric_kit.precision.fsdp` (it needs torch.distributed.fsdp) and `DeepSpeedPrecision` in
`fabric_kit.strategies.deepspeed`; `fabric_kit.plugins` names both lazily."""
from __future__ import annotations

from fabric_kit.precision.amp import MixedPrecision
from fabric_kit.precision.dtype import DoublePrecision, HalfPrecision, TruePrecision
from fabric_kit.precision.precision import Precision
from fabric_kit.precision.xla import XLAPrecision

PRECISION_ALIASES = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}
# "fp8" is fabric_kit's (torchao's float8 matmuls, `Float8Precision()`; Lightning names no FP8 setting but
# "transformer-engine", which needs NVIDIA's Transformer Engine).
PRECISION_NAMES = ("32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "fp8")


def precision_names() -> list[str]:
    return [*PRECISION_NAMES, *PRECISION_ALIASES]


def normalize_precision(value: str | int | None) -> str:
    """`16` / "16" / "16-mixed" -> "16-mixed"; raise with the accepted list otherwise."""
    if value is None:
        return "32-true"
    name = str(value)
    name = PRECISION_ALIASES.get(name, name)
    if name not in PRECISION_NAMES:
        raise ValueError(f"precision={value!r} is not supported; accepted: {', '.join(precision_names())}")
    return name


def create_precision(name: str, device_type: str) -> Precision:
    """The precision object for a normalised name on a device type ("cpu", "cuda", "mps", "xla")."""
    if device_type == "xla":
        return XLAPrecision(name)
    if name == "32-true":
        return Precision()
    if name == "64-true":
        return DoublePrecision()
    if name in ("16-true", "bf16-true"):
        return HalfPrecision(name)
    if name == "fp8":
        from fabric_kit.precision.fp8 import Float8Precision  # torchao is optional: imported when asked for

        return Float8Precision()
    return MixedPrecision(name, device_type)


__all__ = ["DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision", "TruePrecision", "XLAPrecision",
           "create_precision", "normalize_precision", "precision_names"]
