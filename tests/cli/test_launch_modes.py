"""The same script, unchanged, forms one world of 2 processes under every way of starting it."""
import os
import sys

import pytest

from fabric_kit.cli.main import main
from tests.helpers.cli_processes import (
    FABRIC,
    SCRIPT,
    assert_one_world_of_two,
    clean_environment,
    finish,
    results,
    run,
    start,
)
from tests.helpers.processes import free_port


@pytest.mark.parametrize("launcher", [
    pytest.param([sys.executable, SCRIPT], id="python"),
    pytest.param([*FABRIC, "run", "--devices", "2", SCRIPT], id="fabric-run"),
    pytest.param([*FABRIC, "run", "--devices", "2", "-m", "scripts.hello"], id="fabric-run-module"),
    pytest.param([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", SCRIPT], id="torchrun"),
])
def test_launchers(launcher, tmp_path):
    status, output = run([*launcher, tmp_path], MASTER_PORT=str(free_port()))
    assert status == 0, output
    assert_one_world_of_two(tmp_path)


def test_fabric_run_exports_its_flags(tmp_path):
    status, output = run([*FABRIC, "run", "--devices", "2", "--accelerator", "cpu", "--strategy", "ddp",
                          "--precision", "32-true", SCRIPT, tmp_path])
    assert status == 0, output
    threads = str(max(1, os.cpu_count() // 2))  # the cores, shared between the 2 processes
    assert results(tmp_path)[0]["environment"] == {
        "FABRIC_KIT_ACCELERATOR": "cpu", "FABRIC_KIT_STRATEGY": "ddp", "FABRIC_KIT_DEVICES": "2",
        "FABRIC_KIT_NUM_NODES": "1", "FABRIC_KIT_PRECISION": "32-true", "OMP_NUM_THREADS": threads,
    }


def test_slurm_tasks(tmp_path):
    """Two tasks as `srun --ntasks 2 python hello.py` would start them: the script finds SLURM and uses it."""
    slurm = dict(SLURM_NTASKS="2", SLURM_NODEID="0", SLURM_NODELIST="localhost", SLURM_JOB_ID="4242",
                 SLURM_JOB_NAME="train", SLURM_NTASKS_PER_NODE="2", MASTER_PORT=str(free_port()))
    tasks = [start([sys.executable, SCRIPT, tmp_path], SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), **slurm)
             for rank in range(2)]
    for task in tasks:
        status, output = finish(task)
        assert status == 0, output
    assert_one_world_of_two(tmp_path)


def test_two_nodes_on_one_machine(tmp_path):
    port = str(free_port())
    nodes = [start([*FABRIC, "run", "--num-nodes", "2", "--node-rank", str(rank), "--devices", "1",
                    "--main-address", "127.0.0.1", "--main-port", port, SCRIPT, tmp_path, "--devices", "1",
                    "--num-nodes", "2"])
             for rank in range(2)]
    for node in nodes:
        status, output = finish(node)
        assert status == 0, output
    assert_one_world_of_two(tmp_path)


def test_script_contradicting_a_flag_is_an_error(tmp_path):
    status, output = run([*FABRIC, "run", "--devices", "1", SCRIPT, tmp_path])  # the script says devices=2
    assert status != 0
    assert "--devices" in output and "Fabric(devices=2)" in output


def test_main_called_from_code_returns_the_status_and_restores_the_environment(tmp_path, monkeypatch):
    for name, value in clean_environment().items():
        monkeypatch.setenv(name, value)
    for name in set(os.environ) - set(clean_environment()):
        monkeypatch.delenv(name)
    before = dict(os.environ)
    assert main(["run", "--devices", "2", str(SCRIPT), str(tmp_path)]) == 0
    assert dict(os.environ) == before
    assert_one_world_of_two(tmp_path)
