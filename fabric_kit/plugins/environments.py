"""Cluster environments at Lightning's `lightning.fabric.plugins.environments`; `fabric_kit.environments` defines
them. `LightningEnvironment` is Lightning's name for the local one, `LocalEnvironment`."""
from fabric_kit.environments import (
    ClusterEnvironment,
    KubeflowEnvironment,
    LocalEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)

LightningEnvironment = LocalEnvironment

__all__ = ["ClusterEnvironment", "KubeflowEnvironment", "LSFEnvironment", "LightningEnvironment", "LocalEnvironment",
           "MPIEnvironment", "SLURMEnvironment", "TorchElasticEnvironment"]
