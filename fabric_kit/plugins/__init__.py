"""Plugins under Lightning's import paths (`lightning.fabric.plugins`): precision settings (`plugins.precision`),
cluster environments (`plugins.environments`) and checkpoint I/O (`plugins.io`), each the one class that
`fabric_kit.precision`, `fabric_kit.environments` and `fabric_kit.checkpoint` define. Pass one to
`Fabric(plugins=...)` to override the automatic choice."""
from fabric_kit.lazy import lazy_attributes
from fabric_kit.plugins.environments import ClusterEnvironment
from fabric_kit.plugins.io import CheckpointIO, TorchCheckpointIO, XLACheckpointIO
from fabric_kit.plugins.precision import (
    LAZY,
    DoublePrecision,
    HalfPrecision,
    MixedPrecision,
    Precision,
    TruePrecision,
    XLAPrecision,
)

__getattr__, __dir__ = lazy_attributes(__name__, LAZY)

__all__ = ["CheckpointIO", "ClusterEnvironment", "DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision",
           "TorchCheckpointIO", "TruePrecision", "XLACheckpointIO", "XLAPrecision", *LAZY]
