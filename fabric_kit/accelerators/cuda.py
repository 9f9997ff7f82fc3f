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

    def get_parallel_devices(self, devices: list[int]) -> list[torch.device]:
        return [torch.device("cuda", index) for index in devices]

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


def find_usable_cuda_devices(num_devices: int = -1) -> list[int]:
    """Indices of `num_devices` visible GPUs that accept a tensor now (-1: all that do), e.g. for
    `Fabric(devices=find_usable_cuda_devices(2))` on a shared machine whose GPUs other jobs may hold exclusively.
    A `ValueError` when the machine has fewer (or no) visible GPUs, a `RuntimeError` when too few are free. Two
    processes asking at once may both pick the same free GPU."""
    if num_devices == 0:
        return []
    visible = list(range(torch.cuda.device_count()))
    if not visible:
        raise ValueError(f"find_usable_cuda_devices({num_devices}): this machine has no visible CUDA devices")
    if num_devices > len(visible):
        raise ValueError(f"find_usable_cuda_devices({num_devices}): this machine has only {len(visible)} GPUs")
    usable, occupied = [], []
    for index in visible:
        try:
            torch.tensor(0, device=torch.device("cuda", index))
        except RuntimeError:
            occupied.append(index)
            continue
        usable.append(index)
        if len(usable) == num_devices:
            break
    if num_devices != -1 and len(usable) != num_devices:
        raise RuntimeError(f"find_usable_cuda_devices({num_devices}): only {len(usable)} GPUs are free now; "
                           f"{occupied} are held by other processes")
    return usable
