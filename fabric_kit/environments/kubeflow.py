"""Pods started by Kubeflow's PyTorchJob operator."""
from __future__ import annotations

from fabric_kit.environments import _variables
from fabric_kit.environments.environment import TorchVariablesEnvironment


class KubeflowEnvironment(TorchVariablesEnvironment):
    """One process per pod: the operator's ``RANK`` is both the global and the node rank, the local rank is 0.

    Never auto-detected: these variables also appear in ordinary Kubernetes pods running torchrun or a single
    process, where this reading would be wrong. Pass ``KubeflowEnvironment()`` explicitly via ``plugins``.
    ``detect()`` only reports whether the variables it needs are present.
    """

    required_variables = TorchVariablesEnvironment.required_variables + ("KUBERNETES_PORT",)

    def local_rank(self) -> int:
        return 0

    def node_rank(self) -> int:
        return _variables.read_int("RANK")
