"""Start the 2-rank job of scripts/job.py under each launcher, and find what it left behind, by process id."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.cli_processes import finish as finish_process

ROOT = Path(__file__).resolve().parents[3]
JOB = Path(__file__).resolve().parent / "scripts" / "job.py"
LAUNCHERS = ("ddp", "ddp_spawn", "ddp_fork", "fabric-run", "torchrun")


def command(launcher: str, out: Path, behaviour: str, rank: int, *options: str, port: str) -> list[str]:
    """`launcher` is one of LAUNCHERS, or "task": one process that a scheduler (SLURM) started."""
    job = [JOB, out, "external", behaviour, rank, *options]
    if launcher == "task":
        job = [sys.executable, *job]
    elif launcher == "fabric-run":
        job = [sys.executable, "-m", "fabric_kit", "run", "--devices", "2", *job]
    elif launcher == "torchrun":
        job = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", port, *job]
    else:
        job = [sys.executable, JOB, out, launcher, behaviour, rank, *options]
    return [str(part) for part in job]


def start(launcher: str, out: Path, behaviour: str, rank: int, *options: str, env: dict[str, str],
          launcher_options: tuple[str, ...] = ()) -> subprocess.Popen:
    """The job, in a session of its own so that a test can kill whatever is left of it."""
    argv = command(launcher, out, behaviour, rank, *options, port=env["MASTER_PORT"])
    if launcher_options:
        argv[4:4] = launcher_options  # after `python -m fabric_kit run`
    return subprocess.Popen(argv, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str, float]:
    """Wait for the job; (its return code, its output, when it ended). On timeout kill it and fail."""
    status, output = finish_process(process, timeout)
    return status, output, time.time()


def failed_at(out: Path) -> float:
    return float((out / "failed_at").read_text())


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def survivors(out: Path, within: float = 2.0) -> list[int]:
    """The job's processes (every pid in OUT/pids) still running `within` seconds after the job ended."""
    pids = [int(line) for line in (out / "pids").read_text().split()]
    deadline = time.monotonic() + within
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def line_of(text: str) -> int:
    """The line of job.py that holds `text`."""
    return next(number for number, line in enumerate(JOB.read_text().splitlines(), start=1) if text in line)
