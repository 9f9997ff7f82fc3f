"""The hardware seam: which device this process computes on and how many there are. The interface is Lightning's
(`setup_device`, `teardown`, `parse_devices`, `get_parallel_devices`, `auto_device_count`, `is_available`, `name`,
`register_accelerators`), so an accelerator written for Lightning Fabric subclasses this class unchanged."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class AcceleratorName(str):
    """An accelerator's name: a string (`accelerator.name == "cpu"`) that can also be called, as Lightning's
    `accelerator.name()` static method is."""

    def __call__(self) -> str:
        return str(self)


class Accelerator(ABC):
    """One kind of device. The connector asks it which devices the processes use; strategies make one current;
    nothing else touches the hardware.

    `name` is a class attribute (a string), or, as in Lightning, a static method returning it; either way
    `accelerator.name` compares as the string and `accelerator.name()` returns it."""

    name: str = AcceleratorName("")
    distributed_backend: str = "gloo"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("name")
        if isinstance(declared, (staticmethod, classmethod)):
            cls.name = AcceleratorName(declared.__get__(None, cls)())
        elif isinstance(declared, str):
            cls.name = AcceleratorName(declared)

    @staticmethod
    @abstractmethod
    def is_available() -> bool: ...

    @staticmethod
    @abstractmethod
    def auto_device_count() -> int:
        """How many devices `devices="auto"` means."""

    @abstractmethod
    def get_parallel_devices(self, devices: Any) -> list[torch.device]:
        """The device of each local process, given what `parse_devices` returned."""

    def setup_device(self, device: torch.device) -> None:
        """Make `device` current for this process (CUDA needs it before collectives)."""

    def teardown(self) -> None:
        """Release what the accelerator holds (cached memory)."""

    @classmethod
    def register_accelerators(cls, accelerator_registry: Any) -> None:
        """Register this class under its names in `accelerator_registry` (`ACCELERATOR_REGISTRY`), e.g.
        `accelerator_registry.register("mine", cls, description="...")`, so `Fabric(accelerator="mine")` builds
        it. Lightning's hook; nothing by default."""

    def parse_devices(self, devices: int | str | list[int]) -> list[int]:
        """Normalise the `devices` argument into a list of local device indices."""
        if devices == "auto" or devices == -1 or devices == "-1":
            return list(range(self.auto_device_count()))
        if isinstance(devices, str):
            devices = devices.strip()
            if "," in devices:
                return [int(d) for d in devices.split(",") if d.strip()]
            if not devices.lstrip("-").isdigit():
                raise ValueError(f"devices={devices!r} is not understood: pass a positive int, a list of indices, "
                                 "a comma-separated string such as '0,1', or 'auto'")
            devices = int(devices)
        if isinstance(devices, bool) or not isinstance(devices, (int, list, tuple)):
            raise ValueError(f"devices={devices!r} is not understood: pass a positive int, a list of indices, or "
                             "'auto'")
        if isinstance(devices, int):
            if devices <= 0:
                raise ValueError(f"devices={devices} is not valid: pass a positive number of devices, a list of "
                                 "indices, or 'auto'")
            return list(range(devices))
        if not devices or any(not isinstance(d, int) or d < 0 for d in devices):
            raise ValueError(f"devices={devices!r} is not valid: a list of devices must hold non-negative indices")
        return list(devices)
