from __future__ import annotations

import torch

from fabric_kit.accelerators import Accelerator
from fabric_kit.checkpoint.checkpoint_io import CheckpointIO
from fabric_kit.precision import Precision
from fabric_kit.strategies.strategy import Strategy


class SingleDeviceStrategy(Strategy):
    """One process, one device: modules are moved there and nothing else happens."""

    def __init__(self, device: torch.device | str = "cpu", accelerator: Accelerator | None = None,
                 precision: Precision | None = None, checkpoint_io: CheckpointIO | None = None) -> None:
        super().__init__(accelerator, precision, checkpoint_io)
        self._device = torch.device(device)

    @property
    def root_device(self) -> torch.device:
        return self._device
