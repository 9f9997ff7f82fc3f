import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.processes import ROOT, free_port, is_launcher_variable, process_environment


def pytest_configure(config):
    """The C++ ops DeepSpeed compiles on first use (its CPU communication op) go into a folder of this
    environment's own, which every test's processes inherit: torch's default folder is one per user and Python
    version, so environments of other paths (another virtualenv, a fresh clone's) take turns rebuilding the op in
    it, a minute or more each time. TORCH_EXTENSIONS_DIR, when set, is kept."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))


@pytest.fixture
def clean_env(monkeypatch):
    """Run outside any scheduler or `fabric run`, whatever machine (or CI job) runs the test."""
    for name in list(os.environ):
        if is_launcher_variable(name):
            monkeypatch.delenv(name)


def outside_launchers(**extra):
    """`process_environment` on a free port with one thread per process, plus `extra`: where a test starts a job of
    its own."""
    return process_environment(MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1", **extra)


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
