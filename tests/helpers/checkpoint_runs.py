"""Running tests/checkpoint/scripts/train.py in real processes, and comparing what they trained."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers.processes import ROOT, free_port, process_environment

SCRIPT = ROOT / "tests" / "checkpoint" / "scripts" / "train.py"


def run_training(config: dict, *launcher: str, timeout: float = 120, script: Path = SCRIPT,
                 args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `script` (scripts/train.py unless told) with `args` (through `launcher`, e.g. `-m fabric_kit run ...`,
    else directly) in a fresh process group outside any launcher's environment; the whole group is killed if it
    outlives `timeout`."""
    env = process_environment(**{k: str(v) for k, v in config.items()}, OMP_NUM_THREADS="1",
                              MASTER_PORT=str(free_port()))
    command = [sys.executable, *launcher, str(script), *args]
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
