from __future__ import annotations

import torch

from fabric_kit.accelerators.accelerator import Accelerator


class CPUAccelerator(Accelerator):
    """Every process computes on the CPU; `devices=N` means N processes."""

    name = "cpu"
    distributed_backend = "gloo"

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def auto_device_count() -> int:
        return 1

    def get_parallel_devices(self, devices: list[int]) -> list[torch.device]:
        return [torch.device("cpu")] * len(devices)

    def parse_devices(self, devices: int | str | list[int]) -> list[int]:
        # On CPU a list means "this many processes", not device indices.
        parsed = super().parse_devices(devices)
        return list(range(len(parsed)))
