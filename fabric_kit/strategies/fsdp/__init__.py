"""Fully sharded data parallel; see `FSDPStrategy`."""
from fabric_kit.strategies.fsdp.strategy import FSDPStrategy

__all__ = ["FSDPStrategy"]
