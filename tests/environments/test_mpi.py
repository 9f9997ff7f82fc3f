import importlib.machinery
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import fabric_kit.environments
from fabric_kit.environments import MPIEnvironment


class _FakeComm:
    """COMM_WORLD of a 4-rank job on two hosts, seen from one rank; allgather answers with every rank's entry."""

    hosts = ["hostA", "hostA", "hostB", "hostB"]

    def __init__(self, rank):
        self.rank = rank
        self.calls = 0

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return len(self.hosts)

    def allgather(self, entry):
        self.calls += 1
        host, port = entry
        assert host == self.hosts[self.rank]
        root_port = port if self.rank == 0 else 29999
        return [(h, root_port if r == 0 else None) for r, h in enumerate(self.hosts)]


@pytest.fixture
def fake_mpi4py(monkeypatch):
    def install(rank):
        comm = _FakeComm(rank)
        package = types.ModuleType("mpi4py")
        package.__spec__ = importlib.machinery.ModuleSpec("mpi4py", None)
        package.MPI = types.SimpleNamespace(COMM_WORLD=comm)
        monkeypatch.setitem(sys.modules, "mpi4py", package)
        monkeypatch.setitem(sys.modules, "mpi4py.MPI", package.MPI)
        monkeypatch.setattr("socket.gethostname", lambda: comm.hosts[rank])
        return comm

    return install


@pytest.mark.parametrize("variable", ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"])
def test_detected_when_launched_by_mpirun_with_mpi4py(fake_mpi4py, setenv, variable):
    fake_mpi4py(rank=0)
    assert not MPIEnvironment.detect()
    setenv(**{variable: 4})
    assert MPIEnvironment.detect()


def test_not_detected_without_mpi4py(setenv, monkeypatch):
    setenv(OMPI_COMM_WORLD_SIZE=4)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert not MPIEnvironment.detect()


def test_layout_from_one_allgather(fake_mpi4py):
    comm = fake_mpi4py(rank=3)
    env = MPIEnvironment()
    assert env.creates_processes_externally
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 3, 1, 1)
    assert env.main_address == "hostA"
    assert env.main_port == 29999
    assert comm.calls == 1


def test_rank_zero_shares_master_port(fake_mpi4py, setenv):
    fake_mpi4py(rank=0)
    setenv(MASTER_PORT=4444)
    env = MPIEnvironment()
    assert (env.global_rank(), env.local_rank(), env.node_rank(), env.main_port) == (0, 0, 0, 4444)


def test_rank_zero_picks_a_free_port(fake_mpi4py):
    fake_mpi4py(rank=0)
    assert 0 < MPIEnvironment().main_port < 65536


def test_importing_and_detecting_never_imports_mpi4py(tmp_path):
    """An mpi4py that explodes on import proves neither import nor detection executes it."""
    (tmp_path / "mpi4py").mkdir()
    (tmp_path / "mpi4py" / "__init__.py").write_text("raise RuntimeError('mpi4py was imported')\n")
    code = (
        "import sys, os\n"
        "os.environ['OMPI_COMM_WORLD_SIZE'] = '1'\n"
        "import fabric_kit.environments as e\n"
        "assert e.MPIEnvironment.detect()\n"
        "assert isinstance(e.detect_environment(), e.MPIEnvironment)\n"
        "assert 'mpi4py' not in sys.modules\n"
    )
    repo_root = Path(fabric_kit.environments.__file__).parents[2]
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{repo_root}"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
