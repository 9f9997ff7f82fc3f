"""Start launcher commands in real processes, isolated from whatever launched the test run itself."""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI_TESTS = ROOT / "tests" / "cli"
SCRIPT = CLI_TESTS / "scripts" / "hello.py"
FABRIC = [sys.executable, "-m", "fabric_kit"]  # the `fabric` console script, whichever package installed it last
_LAUNCHER_PREFIXES = ("SLURM_", "LSB_", "JSM_", "OMPI_", "PMI_", "PET_", "TORCHELASTIC_", "FABRIC_KIT_")
_LAUNCHER_NAMES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                   "NODE_RANK", "GROUP_RANK", "OMP_NUM_THREADS")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environment(**extra: str) -> dict[str, str]:
    """This environment minus every variable a launcher or scheduler sets, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith(_LAUNCHER_PREFIXES) or k in _LAUNCHER_NAMES)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return {**env, **extra}


def start(command: list[str], **extra: str) -> subprocess.Popen:
    """Start `command` from tests/cli in its own session, so a test can kill everything it left behind."""
    return subprocess.Popen([str(c) for c in command], cwd=CLI_TESTS, env=clean_environment(**extra), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 90) -> tuple[int, str]:
    """Wait for `process`; on timeout kill its session and fail."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{process.args} still ran after {timeout} s:\n{output}")
    return process.returncode, output


def run(command: list[str], timeout: float = 90, **extra: str) -> tuple[int, str]:
    return finish(start(command, **extra), timeout)


def results(out_dir: Path) -> list[dict]:
    """What each rank of a finished hello.py run wrote, by rank."""
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(2)]


def assert_one_world_of_two(out_dir: Path) -> None:
    seen = results(out_dir)
    assert [r["rank"] for r in seen] == [0, 1]
    assert [r["world_size"] for r in seen] == [2, 2]
    assert [r["sum"] for r in seen] == [3.0, 3.0]  # (0 + 1) + (1 + 1): both ranks took part in one all_reduce
