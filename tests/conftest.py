import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# Variables through which a launcher (torchrun, SLURM, `fabric run`, our own) tells a process where it sits.
_PREFIXES = ("SLURM_", "LSB_", "JSM_", "OMPI_", "PMI_", "TORCHELASTIC_", "FABRIC_KIT_")
_NAMES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK",
          "GROUP_RANK")


def _launcher_variable(name):
    return name.startswith(_PREFIXES) or name in _NAMES


@pytest.fixture
def clean_env(monkeypatch):
    """Run outside any scheduler or `fabric run`, whatever machine (or CI job) runs the test."""
    for name in list(os.environ):
        if _launcher_variable(name):
            monkeypatch.delenv(name)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def outside_launchers(**extra):
    """This process's environment minus every launcher's variables, on a free port with one thread per process and
    this checkout importable, plus `extra`: where a test starts a job of its own."""
    env = {name: value for name, value in os.environ.items() if not _launcher_variable(name)}
    env.update(MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    return {**env, **extra}


@pytest.fixture(scope="session")
def job_environment():
    """`outside_launchers`, for tests that start and watch a job themselves."""
    return outside_launchers


@pytest.fixture(scope="session")
def run_ranks():
    """`run(args, out_dir)` runs `python *args` from the repository root, outside any launcher and on a free port,
    and returns (the finished process, [what rank 0 saved, what rank 1 saved]); `check=False` returns the process
    alone, whatever its exit status. An argument "{port}" is replaced by that port."""

    def run(args, out_dir=None, check=True, timeout=120):
        env = outside_launchers()
        port = env["MASTER_PORT"]
        args = [port if arg == "{port}" else str(arg) for arg in args]
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if not check:
            return proc
        assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc, [torch.load(Path(out_dir) / f"rank{rank}.pt") for rank in range(2)]

    return run
