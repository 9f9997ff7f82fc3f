"""Processes launched by ``torchrun`` (torch.distributed.elastic)."""
from __future__ import annotations

import os

from fabric_kit.environments import _variables
from fabric_kit.environments.environment import ClusterEnvironment

_REQUIRED = ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class TorchElasticEnvironment(ClusterEnvironment):
    """torchrun sets every rank and the rendezvous endpoint; the node index is its ``GROUP_RANK``."""

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
        return _variables.read_int("LOCAL_RANK")

    def node_rank(self) -> int:
        return _variables.read_int("GROUP_RANK", 0)

    def validate_settings(self, num_devices: int | str | None, num_nodes: int) -> None:
        """The process count is torchrun's decision; an explicit devices/nodes request must agree with it."""
        if _variables.is_auto(num_devices):
            return
        world_size = self.world_size()
        if num_devices * num_nodes != world_size:
            raise ValueError(
                f"devices={num_devices} x num_nodes={num_nodes} = {num_devices * num_nodes} processes, but torchrun "
                f"started WORLD_SIZE={world_size}. Pass devices/num_nodes whose product is {world_size} "
                f"(or devices='auto'), or change torchrun's --nproc-per-node/--nnodes."
            )
