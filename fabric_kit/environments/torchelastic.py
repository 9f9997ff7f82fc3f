"""Processes launched by ``torchrun`` (torch.distributed.elastic)."""
from __future__ import annotations

from fabric_kit.environments import _variables
from fabric_kit.environments.environment import TorchVariablesEnvironment


class TorchElasticEnvironment(TorchVariablesEnvironment):
    """torchrun sets every rank and the rendezvous endpoint; the node index is its ``GROUP_RANK``."""

    required_variables = TorchVariablesEnvironment.required_variables + ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")

    def local_rank(self) -> int:
        return _variables.read_int("LOCAL_RANK")

    def node_rank(self) -> int:
        return _variables.read_int("GROUP_RANK", 0)

    def validate_settings(self, num_devices: int | str | None, num_nodes: int) -> None:
        """The process count is torchrun's decision; an explicit devices/nodes request must agree with it."""
        if not isinstance(num_devices, int):  # None or "auto": whatever torchrun started, nothing to validate
            return
        world_size = self.world_size()
        if num_devices * num_nodes != world_size:
            raise ValueError(
                f"devices={num_devices} x num_nodes={num_nodes} = {num_devices * num_nodes} processes, but torchrun "
                f"started WORLD_SIZE={world_size}. Pass devices/num_nodes whose product is {world_size} "
                f"(or devices='auto'), or change torchrun's --nproc-per-node/--nnodes."
            )
