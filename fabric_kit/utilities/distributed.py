"""Lightning's `lightning.fabric.utilities.distributed`; defined in `fabric_kit.data.sampler`."""
from fabric_kit.data.sampler import DistributedSamplerWrapper

__all__ = ["DistributedSamplerWrapper"]
