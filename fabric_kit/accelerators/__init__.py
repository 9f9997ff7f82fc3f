"""Accelerators by name. `auto` picks the best available: cuda, then mps, then cpu. `ACCELERATOR_REGISTRY` is
Lightning's: `ACCELERATOR_REGISTRY.register("mine", MyAccelerator, "what it is")` makes
`Fabric(accelerator="mine")` build `MyAccelerator()`."""
from __future__ import annotations

from fabric_kit.accelerators.accelerator import Accelerator
from fabric_kit.accelerators.cpu import CPUAccelerator
from fabric_kit.accelerators.cuda import CUDAAccelerator, find_usable_cuda_devices
from fabric_kit.accelerators.mps import MPSAccelerator
from fabric_kit.accelerators.xla import XLAAccelerator
from fabric_kit.registry import Registry

TPUAccelerator = XLAAccelerator  # Lightning's name for it


class AcceleratorRegistry(Registry):
    kind = "accelerator"

    def available_accelerators(self) -> list[str]:
        return list(self)


ACCELERATOR_REGISTRY = AcceleratorRegistry()
ACCELERATOR_REGISTRY.register("cpu", CPUAccelerator, "the CPU; processes talk over gloo")
ACCELERATOR_REGISTRY.register("cuda", CUDAAccelerator, "NVIDIA GPUs; one process per device, nccl between them")
ACCELERATOR_REGISTRY.register("gpu", CUDAAccelerator, "cuda")
ACCELERATOR_REGISTRY.register("mps", MPSAccelerator, "Apple silicon GPUs")
ACCELERATOR_REGISTRY.register("xla", XLAAccelerator, "TPUs (and other XLA devices) through torch_xla")
ACCELERATOR_REGISTRY.register("tpu", XLAAccelerator, "xla")


def accelerator_names() -> list[str]:
    return ["auto", *ACCELERATOR_REGISTRY]


def create_accelerator(name: str) -> Accelerator:
    """Build the accelerator called `name`; `auto` picks cuda, then mps, then cpu."""
    if name == "auto":
        for candidate in (CUDAAccelerator, MPSAccelerator):
            if candidate.is_available():
                return candidate()
        return CPUAccelerator()
    cls, kwargs = ACCELERATOR_REGISTRY.resolve(name)
    check_requirements = getattr(cls, "check_requirements", None)  # names the extra to install, if one is missing
    if check_requirements is not None:
        check_requirements()
    if not cls.is_available():  # type: ignore[attr-defined]
        raise RuntimeError(f"accelerator={name!r} was requested but is not available on this machine")
    accelerator: Accelerator = cls(**kwargs)
    return accelerator


__all__ = ["ACCELERATOR_REGISTRY", "Accelerator", "AcceleratorRegistry", "CPUAccelerator", "CUDAAccelerator",
           "MPSAccelerator", "TPUAccelerator", "XLAAccelerator", "accelerator_names", "create_accelerator",
           "find_usable_cuda_devices"]
