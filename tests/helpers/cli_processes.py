"""Start launcher commands in real processes, isolated from whatever launched the test run itself."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.processes import ROOT, process_environment

CLI_TESTS = ROOT / "tests" / "cli"
SCRIPT = CLI_TESTS / "scripts" / "hello.py"
FABRIC = [sys.executable, "-m", "fabric_kit"]  # the `fabric` console script, whichever package installed it last


def clean_environment(**extra: str) -> dict[str, str]:
    """This environment minus every variable a launcher or scheduler sets and OMP_NUM_THREADS (which the launcher
    under test sets per process), plus `extra`."""
    env = process_environment()
    env.pop("OMP_NUM_THREADS", None)
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
