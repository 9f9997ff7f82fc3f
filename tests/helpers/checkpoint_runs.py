"""Running tests/checkpoint/scripts/train.py in real processes, and comparing what they trained."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "checkpoint" / "scripts" / "train.py"
_LAUNCHER_PREFIXES = ("SLURM_", "LSB_", "JSM_", "OMPI_", "PMI_", "TORCHELASTIC_", "FABRIC_KIT_")
_LAUNCHER_NAMES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                   "NODE_RANK", "GROUP_RANK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_training(config: dict, *launcher: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run scripts/train.py (through `launcher`, e.g. `-m fabric_kit run ...`, else directly) in a fresh process
    group outside any launcher's environment; the whole group is killed if it outlives `timeout`."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith(_LAUNCHER_PREFIXES) or k in _LAUNCHER_NAMES)}
    env.update({k: str(v) for k, v in config.items()}, OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    command = [sys.executable, *launcher, str(SCRIPT)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # children orphaned by a SIGKILLed parent
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(command, proc.returncode, output)


def assert_same_weights(expected: dict, actual: dict) -> None:
    assert expected["model"].keys() == actual["model"].keys()
    for name in expected["model"]:
        assert torch.equal(expected["model"][name], actual["model"][name]), f"{name} differs"
