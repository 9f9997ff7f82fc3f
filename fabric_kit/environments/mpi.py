"""Processes started by ``mpirun``/``mpiexec``, coordinated through mpi4py."""
from __future__ import annotations

import importlib.util
import os
import socket
from typing import Any

from fabric_kit.environments import _variables
from fabric_kit.environments.environment import ClusterEnvironment
from fabric_kit.environments.local import find_free_port

# Open MPI exports OMPI_COMM_WORLD_SIZE; MPICH/Intel MPI (Hydra) export PMI_SIZE.
_LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


class MPIEnvironment(ClusterEnvironment):
    """MPI exports no portable main address, node index or local rank, so on first use every rank shares its host
    name (and rank 0 a free port, unless ``MASTER_PORT`` is set) in one ``allgather``. Node rank is the position of
    this host among distinct hosts in rank order; local rank counts lower ranks on the same host.

    mpi4py is imported only when an instance first needs it, so importing fabric_kit never pulls in MPI.
    """

    def __init__(self) -> None:
        self._layout: dict[str, Any] | None = None

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return str(self._gathered()["main_address"])

    @property
    def main_port(self) -> int:
        return int(self._gathered()["main_port"])

    @staticmethod
    def detect() -> bool:
        launched = any(name in os.environ for name in _LAUNCHER_VARIABLES)
        return launched and importlib.util.find_spec("mpi4py") is not None

    def world_size(self) -> int:
        return int(self._gathered()["world_size"])

    def global_rank(self) -> int:
        return int(self._gathered()["global_rank"])

    def local_rank(self) -> int:
        return int(self._gathered()["local_rank"])

    def node_rank(self) -> int:
        return int(self._gathered()["node_rank"])

    def _gathered(self) -> dict[str, Any]:
        """A collective call: every rank must reach its first property access (any property) exactly once."""
        if self._layout is None:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
            rank = comm.Get_rank()
            port = None
            if rank == 0:
                port = _variables.read_int("MASTER_PORT") if "MASTER_PORT" in os.environ else find_free_port()
            entries = comm.allgather((socket.gethostname(), port))
            hosts = [host for host, _ in entries]
            hostname = hosts[rank]
            self._layout = {
                "world_size": comm.Get_size(),
                "global_rank": rank,
                "local_rank": hosts[:rank].count(hostname),
                "node_rank": list(dict.fromkeys(hosts)).index(hostname),
                "main_address": hosts[0],
                "main_port": entries[0][1],
            }
        return self._layout
