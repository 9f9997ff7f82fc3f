"""Processes launched by ``torchrun`` (torch.distributed.elastic)."""
from __future__ import annotations

import os
import warnings

import torch

from fabric_kit.environments import _variables
from fabric_kit.environments.environment import TorchVariablesEnvironment

_DEFAULT_ADDRESS, _DEFAULT_PORT = "127.0.0.1", 12910
"""What a torchrun process without MASTER_ADDR / MASTER_PORT (a custom rendezvous) meets on; Lightning's values."""


class TorchElasticEnvironment(TorchVariablesEnvironment):
    """torchrun sets every rank and the rendezvous endpoint; the node index is its ``GROUP_RANK``.

    Detected, as torch itself tells (`torch.distributed.is_torchelastic_launched`), by ``TORCHELASTIC_RUN_ID``
    alone; a missing ``MASTER_ADDR`` / ``MASTER_PORT`` is then set to 127.0.0.1 / 12910 with a warning, as
    Lightning does.
    """

    @property
    def main_address(self) -> str:
        return _exported_default("MASTER_ADDR", _DEFAULT_ADDRESS)

    @property
    def main_port(self) -> int:
        _exported_default("MASTER_PORT", str(_DEFAULT_PORT))
        return _variables.read_int("MASTER_PORT")

    @classmethod
    def detect(cls) -> bool:
        return torch.distributed.is_available() and "TORCHELASTIC_RUN_ID" in os.environ

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


def _exported_default(name: str, default: str) -> str:
    """`name`'s value; when unset, `default`, exported (libraries that read the variable agree) with a warning."""
    if name not in os.environ:
        warnings.warn(f"torchrun started this process without {name}; using {name}={default}", stacklevel=3)
        os.environ[name] = default
    return os.environ[name]
