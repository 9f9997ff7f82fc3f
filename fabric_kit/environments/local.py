"""The environment for processes fabric_kit starts itself (and the fallback when no scheduler is detected)."""
from __future__ import annotations

import os
import socket

from fabric_kit.environments import _variables
from fabric_kit.environments.environment import ClusterEnvironment


def find_free_port() -> int:
    """A port the OS reports as unused right now. Racy by nature, so it is picked once per job and shared."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


class LocalEnvironment(ClusterEnvironment):
    """Single machine; the main process picks the rendezvous port and exports it so the children it spawns agree.

    Our launcher starts children with ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``NODE_RANK`` set, which is how a child
    recognises that it must not launch processes of its own.
    """

    def __init__(self) -> None:
        self._world_size = _variables.read_int("WORLD_SIZE", 1)
        self._global_rank = _variables.read_int("RANK", 0)
        self._exported_port = False

    @property
    def creates_processes_externally(self) -> bool:
        return "LOCAL_RANK" in os.environ

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(find_free_port())
            self._exported_port = True
        return _variables.read_int("MASTER_PORT")

    @staticmethod
    def detect() -> bool:
        return True

    def world_size(self) -> int:
        return self._world_size

    def set_world_size(self, size: int) -> None:
        self._world_size = size

    def global_rank(self) -> int:
        return self._global_rank

    def set_global_rank(self, rank: int) -> None:
        self._global_rank = rank

    def local_rank(self) -> int:
        return _variables.read_int("LOCAL_RANK", 0)

    def node_rank(self) -> int:
        """``NODE_RANK``, else torch.distributed.elastic's ``GROUP_RANK`` (as Lightning reads it), else 0."""
        return _variables.read_int("NODE_RANK", _variables.read_int("GROUP_RANK", 0))

    def teardown(self) -> None:
        """Forget the port we exported, so a later job in this interpreter picks a fresh one."""
        if self._exported_port:
            os.environ.pop("MASTER_PORT", None)
            self._exported_port = False
