"""What ``--devices`` accepts and how many processes per machine it means.

Parsing needs no torch (so flag errors are instant); counting needs it only to ask how many GPUs exist.
"""
from __future__ import annotations

import argparse
from typing import Literal

DevicesSpec = int | list[int] | Literal["auto"]

ACCEPTED = "a positive count like 2, a comma list of device indices like 0,1 (one index: 1,), or auto"


def parse_devices(text: str) -> DevicesSpec:
    """argparse ``type`` for ``--devices``: ``"2"`` -> 2, ``"0,1"`` -> [0, 1], ``"1,"`` -> [1], ``"auto"`` -> "auto"."""
    value = text.strip()
    if value == "auto":
        return "auto"
    try:
        if "," in value:
            indices = [int(item) for item in value.split(",") if item.strip()]
            if indices and min(indices) >= 0 and len(set(indices)) == len(indices):
                return indices
        elif int(value) > 0:
            return int(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {ACCEPTED}")


def format_devices(devices: DevicesSpec) -> str:
    """The inverse of `parse_devices`, for the FABRIC_KIT_DEVICES variable (a one-index list keeps its comma)."""
    if isinstance(devices, list):
        return ",".join(map(str, devices)) + ("," if len(devices) == 1 else "")
    return str(devices)


def processes_per_node(devices: DevicesSpec, accelerator: str) -> int:
    """One process per device. Raises ValueError when the machine lacks the devices asked for.

    CPU "devices" are processes, so ``auto`` means 1 there; on CUDA ``auto`` means every visible GPU. mps has one
    device, and an XLA strategy starts its own process per core, so both run a single launcher-side process.
    """
    if accelerator == "auto" and not isinstance(devices, int):
        accelerator = _available_accelerator()
    if accelerator in ("mps", "tpu", "xla"):
        return 1
    if accelerator in ("cuda", "gpu"):
        import torch

        available = torch.cuda.device_count()
        if available == 0:
            raise ValueError(f"--accelerator {accelerator}: no CUDA device is visible on this machine; "
                             "use --accelerator cpu or auto")
        if devices == "auto":
            return available
        wanted = len(devices) if isinstance(devices, list) else devices
        highest = max(devices) if isinstance(devices, list) else devices - 1
        if highest >= available:
            raise ValueError(f"--devices {format_devices(devices)}: this machine has {available} CUDA device(s), "
                             f"indices 0..{available - 1}")
        return wanted
    if isinstance(devices, list):
        raise ValueError(f"--devices {format_devices(devices)}: device indices only apply to GPUs; on "
                         f"{accelerator} pass a process count like --devices {len(devices)}")
    return 1 if devices == "auto" else devices


def _available_accelerator() -> str:
    """What ``--accelerator auto`` resolves to, in the same order as ``Fabric``: cuda, then mps, then cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"
