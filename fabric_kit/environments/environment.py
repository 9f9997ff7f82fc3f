"""The seam between fabric_kit and whatever placed this process in a cluster.

An environment answers four questions — how many processes, which one am I, where is the main process, and did
someone else (torchrun, SLURM, MPI) already create the processes — so that strategies never read environment
variables themselves.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod

from fabric_kit.environments import _variables


class ClusterEnvironment(ABC):
    """Where this process sits in the job. Subclasses read their scheduler's variables."""

    @property
    @abstractmethod
    def creates_processes_externally(self) -> bool:
        """True when the processes already exist (launched by torchrun, srun, mpirun, ...), so fabric_kit must not
        start any itself."""

    @property
    @abstractmethod
    def main_address(self) -> str:
        """Host name or IP of the rank-0 process, for the process group's store."""

    @property
    @abstractmethod
    def main_port(self) -> int:
        """Port of the rank-0 process's store."""

    @staticmethod
    @abstractmethod
    def detect() -> bool:
        """Whether the current process runs under this environment."""

    @abstractmethod
    def world_size(self) -> int: ...

    @abstractmethod
    def global_rank(self) -> int: ...

    @abstractmethod
    def local_rank(self) -> int: ...

    @abstractmethod
    def node_rank(self) -> int: ...

    def set_world_size(self, size: int) -> None:
        """Environments whose size is fixed by the scheduler ignore this."""

    def set_global_rank(self, rank: int) -> None:
        """Environments whose rank is fixed by the scheduler ignore this."""

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """Raise a ValueError when the requested devices/nodes contradict what the scheduler allocated."""

    def teardown(self) -> None:
        """Undo what the environment set up (e.g. variables exported for child processes)."""


class TorchVariablesEnvironment(ClusterEnvironment):
    """A launcher that already started the processes and set torch.distributed's own variables (``MASTER_ADDR``,
    ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``); subclasses name the variables that identify it and place the ranks
    on nodes."""

    required_variables: tuple[str, ...] = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return _variables.require("MASTER_ADDR")

    @property
    def main_port(self) -> int:
        return _variables.read_int("MASTER_PORT")

    @classmethod
    def detect(cls) -> bool:
        return all(name in os.environ for name in cls.required_variables)

    def world_size(self) -> int:
        return _variables.read_int("WORLD_SIZE")

    def global_rank(self) -> int:
        return _variables.read_int("RANK")
