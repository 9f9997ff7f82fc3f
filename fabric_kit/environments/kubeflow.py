"""Pods started by Kubeflow's PyTorchJob operator."""
from __future__ import annotations

import os

from fabric_kit.environments import _variables
from fabric_kit.environments.environment import ClusterEnvironment

_REQUIRED = ("KUBERNETES_PORT", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


class KubeflowEnvironment(ClusterEnvironment):
    """One process per pod: the operator's ``RANK`` is both the global and the node rank, the local rank is 0.

    Never auto-detected: these variables also appear in ordinary Kubernetes pods running torchrun or a single
    process, where this reading would be wrong. Pass ``KubeflowEnvironment()`` explicitly via ``plugins``.
    ``detect()`` only reports whether the variables it needs are present.
    """

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return _variables.require("MASTER_ADDR")

    @property
    def main_port(self) -> int:
        return _variables.read_int("MASTER_PORT")

    @staticmethod
    def detect() -> bool:
        return all(name in os.environ for name in _REQUIRED)

    def world_size(self) -> int:
        return _variables.read_int("WORLD_SIZE")

    def global_rank(self) -> int:
        return _variables.read_int("RANK")

    def local_rank(self) -> int:
        return 0

    def node_rank(self) -> int:
        return _variables.read_int("RANK")
