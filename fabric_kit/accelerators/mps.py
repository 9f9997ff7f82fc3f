from __future__ import annotations

import platform

import torch

from fabric_kit.accelerators.accelerator import Accelerator


class MPSAccelerator(Accelerator):
    """Apple-silicon GPU: a single device, no distributed backend of its own."""

    name = "mps"
    distributed_backend = "gloo"

    @staticmethod
    def is_available() -> bool:
        return torch.backends.mps.is_available() and platform.processor() in ("arm", "arm64")

    @staticmethod
    def auto_device_count() -> int:
        return 1

    def get_parallel_devices(self, devices: list[int]) -> list[torch.device]:
        return [torch.device("mps", index) for index in devices]
