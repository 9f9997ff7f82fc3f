"""Accelerators by name. `auto` picks the best available: cuda, then mps, then cpu."""
from __future__ import annotations

from fabric_kit.accelerators.accelerator import Accelerator
from fabric_kit.accelerators.cpu import CPUAccelerator
from fabric_kit.accelerators.cuda import CUDAAccelerator
from fabric_kit.accelerators.mps import MPSAccelerator
from fabric_kit.accelerators.xla import XLAAccelerator

ACCELERATORS: dict[str, type[Accelerator]] = {
    "cpu": CPUAccelerator,
    "cuda": CUDAAccelerator,
    "gpu": CUDAAccelerator,
    "mps": MPSAccelerator,
    "xla": XLAAccelerator,
    "tpu": XLAAccelerator,
}


def accelerator_names() -> list[str]:
    return ["auto", *ACCELERATORS]


def create_accelerator(name: str) -> Accelerator:
    """Build the accelerator called `name`; `auto` picks cuda, then mps, then cpu."""
    if name == "auto":
        for candidate in (CUDAAccelerator, MPSAccelerator):
            if candidate.is_available():
                return candidate()
        return CPUAccelerator()
    cls = ACCELERATORS.get(name)
    if cls is None:
        raise ValueError(f"accelerator={name!r} is not known; accepted: {', '.join(accelerator_names())}")
    check_requirements = getattr(cls, "check_requirements", None)  # names the extra to install, if one is missing
    if check_requirements is not None:
        check_requirements()
    if not cls.is_available():
        raise RuntimeError(f"accelerator={name!r} was requested but is not available on this machine")
    return cls()


__all__ = ["Accelerator", "CPUAccelerator", "CUDAAccelerator", "MPSAccelerator", "XLAAccelerator",
           "accelerator_names", "create_accelerator"]
