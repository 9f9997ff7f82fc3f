"""Collectives at Lightning's `lightning.fabric.plugins.collectives`; `fabric_kit.collectives` defines them."""
from fabric_kit.collectives import Collective, SingleDeviceCollective, TorchCollective

__all__ = ["Collective", "SingleDeviceCollective", "TorchCollective"]
