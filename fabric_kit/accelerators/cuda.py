from __future__ import annotations

import torch

from fabric_kit.accelerators.accelerator import Accelerator


class CUDAAccelerator(Accelerator):
    """NVIDIA GPUs; one process per device, nccl between them."""

    name = "cuda"
    distributed_backend = "nccl"

    @staticmethod
    def is_available() -> bool:
        return torch.cuda.is_available()

    @staticmethod
    def auto_device_count() -> int:
        return torch.cuda.device_count()

    def device(self, index: int) -> torch.device:
        return torch.device("cuda", index)

    def setup_device(self, device: torch.device) -> None:
        torch.cuda.set_device(device)

    def teardown(self) -> None:
        torch.cuda.empty_cache()

    def parse_devices(self, devices: int | str | list[int]) -> list[int]:
        parsed = super().parse_devices(devices)
        available = self.auto_device_count()
        missing = [d for d in parsed if d >= available]
        if missing:
            raise ValueError(f"devices={devices!r} asks for CUDA device(s) {missing}, but this machine has "
                             f"{available} visible GPU(s)")
        return parsed
