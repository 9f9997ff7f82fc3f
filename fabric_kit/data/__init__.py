"""Per-rank data sharding for ``Fabric.setup_dataloaders``."""
from fabric_kit.data.loader import distributed_loader, resumable_loader, with_sampler
from fabric_kit.data.sampler import DistributedShardSampler

__all__ = ["DistributedShardSampler", "distributed_loader", "resumable_loader", "with_sampler"]
