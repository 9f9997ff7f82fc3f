"""The hardware seam: which device this process computes on and how many there are."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Accelerator(ABC):
    """One kind of device. Strategies ask it for the device of a local rank; nothing else touches the hardware."""

    name: str = ""
    distributed_backend: str = "gloo"

    @staticmethod
    @abstractmethod
    def is_available() -> bool: ...

    @staticmethod
    @abstractmethod
    def auto_device_count() -> int:
        """How many devices `devices="auto"` means."""

    @abstractmethod
    def device(self, index: int) -> torch.device:
        """The device that local process `index` uses."""

    def setup_device(self, device: torch.device) -> None:
        """Make `device` current for this process (CUDA needs it before collectives)."""

    def teardown(self) -> None: ...

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
