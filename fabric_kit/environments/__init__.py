"""Cluster environments and the single place that decides which one this process runs under."""
from __future__ import annotations

from fabric_kit.environments.environment import ClusterEnvironment
from fabric_kit.environments.kubeflow import KubeflowEnvironment
from fabric_kit.environments.local import LocalEnvironment
from fabric_kit.environments.lsf import LSFEnvironment
from fabric_kit.environments.mpi import MPIEnvironment
from fabric_kit.environments.slurm import SLURMEnvironment, requeue_job
from fabric_kit.environments.torchelastic import TorchElasticEnvironment

__all__ = [
    "ClusterEnvironment",
    "KubeflowEnvironment",
    "LSFEnvironment",
    "LocalEnvironment",
    "MPIEnvironment",
    "SLURMEnvironment",
    "TorchElasticEnvironment",
    "detect_environment",
    "requeue_job",
]

# Most specific launcher first: torchrun may run inside a SLURM allocation, and its variables then describe the
# processes that actually exist. Local is the fallback and always detects.
# Kubeflow is deliberately absent: its variables are indistinguishable from a plain Kubernetes pod, so it is only
# used when passed explicitly via `plugins`.
_DETECTION_ORDER: tuple[type[ClusterEnvironment], ...] = (
    TorchElasticEnvironment,
    SLURMEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    LocalEnvironment,
)


def detect_environment() -> ClusterEnvironment:
    """An instance of the first environment in ``_DETECTION_ORDER`` that recognises this process."""
    return next(env for env in _DETECTION_ORDER if env.detect())()
