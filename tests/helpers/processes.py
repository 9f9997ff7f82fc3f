"""What the tests that start real processes share: a free port, and an environment that no launcher of the test
run itself leaks into, with this checkout first on PYTHONPATH."""
import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN_TWO = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", "{port}"]
"""`python` arguments that start a script on 2 local processes (`run_ranks` fills in the free port)."""
LAUNCHER_PREFIXES = ("SLURM_", "LSB_", "JSM_", "OMPI_", "PMI_", "PET_", "TORCHELASTIC_", "FABRIC_KIT_")
LAUNCHER_NAMES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK",
                  "GROUP_RANK",
                  "PL_GLOBAL_SEED", "PL_SEED_WORKERS")  # Lightning-style launchers export the seed (as does ours)


def is_launcher_variable(name: str) -> bool:
    """Whether a launcher or scheduler (torchrun, SLURM, LSF, MPI, `fabric run`, ...) sets `name` to tell a process
    where it sits."""
    return name.startswith(LAUNCHER_PREFIXES) or name in LAUNCHER_NAMES


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a process group to meet on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_environment(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables, with the repository root first on PYTHONPATH (so the
    process imports this checkout and `tests.helpers`), plus `extra`."""
    env = {name: value for name, value in os.environ.items() if not is_launcher_variable(name)}
    env["PYTHONPATH"] = os.pathsep.join(path for path in (str(ROOT), env.get("PYTHONPATH")) if path)
    return {**env, **extra}


@contextlib.contextmanager
def as_one_process() -> Iterator[None]:
    """Inside: this (the test's) process without any launcher's variables, for a one-process Fabric run here instead
    of in a fresh interpreter; the environment and the global RNG state come back afterwards."""
    launcher_free = {name: value for name, value in os.environ.items() if not is_launcher_variable(name)}
    with mock.patch.dict(os.environ, launcher_free, clear=True), torch.random.fork_rng():
        yield


def run_in_turn(out_dir: str, names: list[str], run: Callable[[str, str], tuple[int, Any]]) -> None:
    """In each rank of a launched worker: `run(name, folder)` for every name in turn, in the same processes (one
    start-up for several configurations), each in a folder of its own under `out_dir`; `run` returns this rank's
    number and its result. The results, by name, go to `out_dir/rank{N}.pt`."""
    results = {}
    rank = 0
    for name in names:
        folder = os.path.join(out_dir, name)
        os.makedirs(folder, exist_ok=True)
        rank, results[name] = run(name, folder)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
