"""Processes started by ``srun`` inside a SLURM allocation."""
from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess

from fabric_kit.environments import _variables
from fabric_kit.environments.environment import ClusterEnvironment

# Inside `salloc`/`srun --pty bash` the script runs without srun, as a single unmanaged process: not SLURM's job.
_INTERACTIVE_JOB_NAMES = ("bash", "interactive")
# Ports derived from the job id land in [_PORT_BASE, _PORT_BASE + _PORT_SPAN): high enough to avoid well-known
# services, low enough to stay below the usual ephemeral range (32768+) the OS hands out on its own.
_PORT_BASE = 15000
_PORT_SPAN = 10000

_BRACKET = re.compile(r"\[([^\[\]]*)\]")


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand SLURM's compressed host list, e.g. ``"node[001-003,7],gpu5"`` -> node001 node002 node003 node7 gpu5.

    A range keeps the zero padding of its start (``[08-10]`` -> 08 09 10); several bracket groups in one name
    combine as a product (``r[1-2]n[1-2]`` -> r1n1 r1n2 r2n1 r2n2). Spaces separate hosts as commas do
    (``"alpha beta"``) and are ignored inside brackets (``"1.2.3.[089, 100-110]"``).
    """
    hosts: list[str] = []
    for pattern in _split_top_level(_spaces_as_commas(hostlist)):
        literals = _BRACKET.split(pattern)  # alternates literal text and bracket contents
        if any(c in literal for literal in literals[::2] for c in "[]"):
            raise ValueError(f"Malformed SLURM host list {hostlist!r}: unbalanced brackets in {pattern!r}.")
        choices = [[text] if i % 2 == 0 else _expand_ranges(text, hostlist) for i, text in enumerate(literals)]
        hosts.extend("".join(parts) for parts in itertools.product(*choices))
    return hosts


def _spaces_as_commas(hostlist: str) -> str:
    """Drop spaces inside brackets; outside, a run of spaces (with a comma or not) separates two hosts."""
    inside = _BRACKET.sub(lambda match: match.group(0).replace(" ", ""), hostlist.strip())
    return re.sub(r"\s*,\s*|\s+", ",", inside)


def _split_top_level(hostlist: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    patterns, depth, start = [], 0, 0
    for i, char in enumerate(hostlist):
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            patterns.append(hostlist[start:i])
            start = i + 1
    patterns.append(hostlist[start:])
    if any(not p for p in patterns):
        raise ValueError(f"Malformed SLURM host list {hostlist!r}: empty host name; expected e.g. 'node[1-3],gpu5'.")
    return patterns


def _expand_ranges(ranges: str, hostlist: str) -> list[str]:
    numbers: list[str] = []
    for item in ranges.split(","):
        start, _, end = item.partition("-")
        if not start.isdigit() or not (end or start).isdigit() or int(end or start) < int(start):
            raise ValueError(
                f"Malformed SLURM host list {hostlist!r}: range {item!r} is not 'N' or 'N-M' with N <= M."
            )
        width = len(start)
        numbers.extend(str(n).zfill(width) for n in range(int(start), int(end or start) + 1))
    return numbers


class SLURMEnvironment(ClusterEnvironment):
    """Ranks come from srun's per-task variables; rank 0 runs on the first host of the allocation (or at
    ``MASTER_ADDR`` when set).

    The port is ``MASTER_PORT`` when set, else ``15000 + SLURM_JOB_ID % 10000`` so every task of the job derives the
    same port without talking to each other, and concurrent jobs on one node rarely collide.

    Args:
        auto_requeue: whether the job should be put back in the queue when SLURM warns of its time limit; read by
            the code that decides (as in Lightning, Fabric itself requeues nothing: see `requeue_job`).
        requeue_signal: the signal SLURM sends as that warning (`#SBATCH --signal=USR1@90`); default SIGUSR1.
    """

    def __init__(self, auto_requeue: bool = True, requeue_signal: signal.Signals | None = None) -> None:
        if requeue_signal is not None and not isinstance(requeue_signal, signal.Signals):
            raise TypeError(f"requeue_signal={requeue_signal!r} is not supported; accepted: a signal.Signals member "
                            "such as signal.SIGUSR1, or None for SIGUSR1")
        self.auto_requeue = bool(auto_requeue)
        self.requeue_signal: signal.Signals = requeue_signal or signal.SIGUSR1
        _check_task_variables()

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        if "MASTER_ADDR" in os.environ:  # the user's choice, e.g. a node's fast interconnect address
            return os.environ["MASTER_ADDR"]
        nodelist = os.environ.get("SLURM_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
        if nodelist is None:
            return "127.0.0.1"
        return self.resolve_root_node_address(nodelist)

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return _variables.read_int("MASTER_PORT")
        return _PORT_BASE + _variables.read_int("SLURM_JOB_ID") % _PORT_SPAN

    @staticmethod
    def detect() -> bool:
        return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in _INTERACTIVE_JOB_NAMES

    @staticmethod
    def resolve_root_node_address(nodes: str) -> str:
        """The first host of a SLURM host list (``"gpu[07-08],cpu1"`` -> ``"gpu07"``), where rank 0 runs."""
        return expand_hostlist(nodes)[0]

    @staticmethod
    def job_name() -> str | None:
        return os.environ.get("SLURM_JOB_NAME")

    @staticmethod
    def job_id() -> int | None:
        """SLURM_JOB_ID as a number; None outside SLURM, in an interactive allocation (whose runs are not one job's)
        or when the id is not a number."""
        job_id = os.environ.get("SLURM_JOB_ID")
        if SLURMEnvironment.job_name() in _INTERACTIVE_JOB_NAMES or job_id is None or not job_id.isdigit():
            return None
        return int(job_id)

    def world_size(self) -> int:
        return _variables.read_int("SLURM_NTASKS")

    def global_rank(self) -> int:
        return _variables.read_int("SLURM_PROCID")

    def local_rank(self) -> int:
        return _variables.read_int("SLURM_LOCALID")

    def node_rank(self) -> int:
        return _variables.read_int("SLURM_NODEID")

    def validate_settings(self, num_devices: int | str | None, num_nodes: int) -> None:
        """SLURM, not fabric_kit, decides how many tasks run; catch a mismatch before the process group hangs."""
        if not isinstance(num_devices, int):  # None or "auto": whatever SLURM started, nothing to validate
            return
        if "SLURM_NTASKS_PER_NODE" in os.environ:
            per_node = _variables.read_int("SLURM_NTASKS_PER_NODE")
            if per_node != num_devices:
                raise ValueError(
                    f"devices={num_devices} but SLURM runs SLURM_NTASKS_PER_NODE={per_node} tasks per node. "
                    f"Set devices={per_node} or submit with --ntasks-per-node={num_devices}."
                )
        if "SLURM_NNODES" in os.environ:
            nodes = _variables.read_int("SLURM_NNODES")
            if nodes != num_nodes:
                raise ValueError(
                    f"num_nodes={num_nodes} but the SLURM allocation has SLURM_NNODES={nodes} nodes. "
                    f"Set num_nodes={nodes} or submit with --nodes={num_nodes}."
                )


def _check_task_variables() -> None:
    """`--ntasks=N` (N > 1) without `--ntasks-per-node` leaves SLURM free to place the tasks on nodes unevenly, which
    the one device count per node cannot describe; Lightning refuses it with the same hint."""
    tasks = _variables.read_int("SLURM_NTASKS", 1)
    if tasks > 1 and "SLURM_NTASKS_PER_NODE" not in os.environ:
        raise RuntimeError(f"the SLURM job sets --ntasks={tasks} without --ntasks-per-node, which is not supported "
                           f"(tasks may be spread unevenly over nodes): submit with --ntasks-per-node={tasks} (per "
                           "node) instead")


def slurm_job_id() -> str:
    """This job's id as `scontrol` expects it: `<array job id>_<task id>` for a task of a job array, else
    SLURM_JOB_ID."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{_variables.require('SLURM_ARRAY_TASK_ID')}"
    return _variables.require("SLURM_JOB_ID")


def requeue_job(job_id: str | None = None) -> None:
    """Put this SLURM job back in the queue (`scontrol requeue <job id>`), e.g. once a preempted run has saved its
    checkpoint; call it from one process (global rank 0). The job then restarts from its batch script, which
    resumes from the latest checkpoint."""
    job_id = job_id or slurm_job_id()
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        raise RuntimeError(f"cannot requeue SLURM job {job_id}: `scontrol` is not on PATH (this process runs outside "
                           "SLURM, or SLURM's commands are not installed on this node)")
    done = subprocess.run([scontrol, "requeue", job_id], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`scontrol requeue {job_id}` failed with exit status {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip() or 'no message'}")
