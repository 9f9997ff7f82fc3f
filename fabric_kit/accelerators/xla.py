"""XLA devices (TPUs; also XLA on CPU for testing) through torch_xla, the optional extra `fabric_kit[xla]`.

torch_xla is imported inside methods only: importing fabric_kit must not pull it in (it is large, pins one exact
torch version, and initialising its runtime before `xmp.spawn` breaks the spawn)."""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import torch

from fabric_kit.accelerators.accelerator import Accelerator

INSTALL_HINT = ("install the extra with `pip install 'fabric_kit[xla]'`; torch_xla 2.9.0 requires torch==2.9.0 "
                "exactly, so pin `pip install torch==2.9.0 torch_xla==2.9.0` in its own environment")


def import_torch_xla(needed_by: str = "the XLA accelerator") -> ModuleType:
    """torch_xla, or an error that says what `needed_by` it and how to get it (missing, or built for another
    torch)."""
    try:
        return importlib.import_module("torch_xla")
    except ImportError as error:
        raise ModuleNotFoundError(f"{needed_by} needs torch_xla, which could not be imported ({error}); "
                                  f"{INSTALL_HINT}") from error


class XLAAccelerator(Accelerator):
    """One process per XLA device. PJRT starts either one process or one per device of the host, so `devices` is
    1, a single index, or all of them."""

    name = "xla"
    distributed_backend = "xla"

    @staticmethod
    def check_requirements() -> None:
        """Raise naming the extra to install when torch_xla is absent (called before `is_available`)."""
        if importlib.util.find_spec("torch_xla") is None:
            raise ModuleNotFoundError(f"accelerator='xla' needs torch_xla, which is not installed; {INSTALL_HINT}")

    @staticmethod
    def is_available() -> bool:
        try:
            return XLAAccelerator.auto_device_count() > 0
        except (ImportError, RuntimeError, OSError):
            return False

    @staticmethod
    def auto_device_count() -> int:
        """TPU chips on this host; any other PJRT device (CPU, CUDA) counts as one device per process here.
        Counted without initialising the XLA runtime, which must stay untouched until processes are spawned."""
        import_torch_xla()
        import torch_xla.runtime as xr

        if xr.device_type() == "TPU":
            from torch_xla._internal import tpu

            return int(tpu.num_available_devices())
        return 1

    def get_parallel_devices(self, devices: list[int]) -> list[torch.device]:
        return [torch.device("xla", index) for index in devices]

    def setup_device(self, device: torch.device) -> None:
        import_torch_xla()  # registers the "xla" device with torch

    def parse_devices(self, devices: int | str | list[int]) -> list[int]:
        parsed = super().parse_devices(devices)
        available = self.auto_device_count()
        if len(parsed) == 1 and parsed[0] < available:
            return parsed
        if parsed == list(range(available)):
            return parsed
        raise ValueError(f"devices={devices!r} is not possible with XLA: this host has {available} XLA device(s) "
                         f"and PJRT runs on one of them or on all; pass devices=1, devices=[index] or "
                         f"devices={available}")

