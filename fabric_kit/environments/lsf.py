"""Processes started by ``jsrun`` inside an IBM Spectrum LSF job (e.g. Summit-style machines)."""
from __future__ import annotations

import os
import socket

from fabric_kit.environments import _variables
from fabric_kit.environments.environment import ClusterEnvironment

_REQUIRED = ("LSB_JOBID", "LSB_DJOB_RANKFILE", "JSM_NAMESPACE_SIZE", "JSM_NAMESPACE_RANK", "JSM_NAMESPACE_LOCAL_RANK")
# Ports derived from the job id land in [10000, 20000): every task computes the same one without communicating.
_PORT_BASE = 10000
_PORT_SPAN = 10000


class LSFEnvironment(ClusterEnvironment):
    """Ranks come from jsrun's ``JSM_NAMESPACE_*`` variables. LSF exports no node index or main host, so both are
    read from the rank file (``LSB_DJOB_RANKFILE``): one host name per slot, the first line being the launch node,
    which runs no tasks. The node rank is this host's position among the distinct compute hosts.
    """

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return self._compute_hosts()[0]

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return _variables.read_int("MASTER_PORT")
        return _PORT_BASE + _variables.read_int("LSB_JOBID") % _PORT_SPAN

    @staticmethod
    def detect() -> bool:
        return all(name in os.environ for name in _REQUIRED)

    def world_size(self) -> int:
        return _variables.read_int("JSM_NAMESPACE_SIZE")

    def global_rank(self) -> int:
        return _variables.read_int("JSM_NAMESPACE_RANK")

    def local_rank(self) -> int:
        return _variables.read_int("JSM_NAMESPACE_LOCAL_RANK")

    def node_rank(self) -> int:
        hosts = self._compute_hosts()
        hostname = socket.gethostname()
        if hostname not in hosts:
            raise ValueError(
                f"This host {hostname!r} is not in the LSF rank file {os.environ['LSB_DJOB_RANKFILE']!r}; "
                f"expected one of {hosts}."
            )
        return hosts.index(hostname)

    def _compute_hosts(self) -> list[str]:
        """Distinct compute hosts in rank-file order (the launch node on the first line excluded)."""
        path = _variables.require("LSB_DJOB_RANKFILE")
        with open(path) as file:
            lines = [line.strip() for line in file if line.strip()]
        hosts = list(dict.fromkeys(lines[1:]))
        if not hosts:
            raise ValueError(
                f"LSF rank file LSB_DJOB_RANKFILE={path!r} lists no compute hosts; expected a launch-node line "
                f"followed by one host name per slot."
            )
        return hosts
