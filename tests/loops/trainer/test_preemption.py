"""Preemption of a Trainer's fit with 2 real gloo ranks: SIGTERM mid-epoch (to `python train.py` or `fabric run`)
saves last.ckpt at the step boundary where the ranks agree on it (every 10 steps), ends the job with 143 within the
grace period and leaves no process behind; `fit(ckpt_path="last")` then ends bit-identical to an uninterrupted run.
Under SLURM, SIGUSR1 does the same and rank 0 requeues the job once (a stub `scontrol` records the call); SIGTERM
there saves without requeueing."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fabric_kit.strategies.launchers.processes import GRACE_PERIOD_VARIABLE, exit_status
from tests.helpers.processes import ROOT
from tests.helpers.slurm import fake_slurm_job
from tests.strategies.launchers.launcher_jobs import finish, survivors, wait_for

SCRIPT = Path(__file__).parent / "scripts" / "loops_preempt.py"
GRACE = 20  # seconds; the jobs below end well within it
AGREED_STEP = 10  # paused after step 3, the ranks agree on the signal at the 10th read of `fabric.preempted`


def start(out: Path, mode: str, env: dict[str, str], launcher: str = "python") -> subprocess.Popen:
    """The script as `python` runs it, or under `fabric run`; in a session of its own."""
    argv = [sys.executable, str(SCRIPT), str(out), mode]
    if launcher == "fabric-run":
        argv[1:1] = ["-m", "fabric_kit", "run", "--devices", "2", "--grace-period", str(GRACE)]
    return subprocess.Popen(argv, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_to_end(out: Path, mode: str, env: dict[str, str]) -> dict:
    status, output, _ = finish(start(out, mode, env))
    assert status == 0, output
    return torch.load(out / f"{mode}.pt")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, job_environment):
    return run_to_end(tmp_path_factory.mktemp("full"), "full", job_environment())


def signal_when_ready(jobs: list[subprocess.Popen], out: Path, number: int) -> list[tuple[int, str, float]]:
    """Send `number` to every job once rank 0 paused mid-epoch, let the ranks go on; (status, output, seconds from
    the signal to the end) of each."""
    wait_for(out / "ready")
    sent = time.time()
    for job in jobs:
        os.kill(job.pid, number)
    (out / "go").touch()
    return [(exit_status(status), output, ended - sent) for status, output, ended in map(finish, jobs)]


def assert_saved_at_the_agreed_step(out: Path) -> None:
    assert [(out / f"preempted{rank}").read_text() for rank in range(2)] == [str(AGREED_STEP)] * 2
    last = torch.load(out / "run" / "last.ckpt")
    assert last["global_step"] == AGREED_STEP and last["epoch"] == 1  # mid-epoch: 8 steps an epoch


def assert_resumes_bit_exactly(out: Path, env: dict[str, str], uninterrupted: dict) -> None:
    resumed = run_to_end(out, "resume", env)
    assert resumed["global_step"] == uninterrupted["global_step"] == 24
    weights = uninterrupted["weights"]
    assert all(torch.equal(resumed["weights"][name], weights[name]) for name in weights)


@pytest.mark.parametrize("launcher", ["python", "fabric-run"])
def test_sigterm_saves_at_a_step_boundary_exits_143_and_resumes_bit_exactly(launcher, tmp_path, job_environment,
                                                                             uninterrupted):
    env = job_environment(**{GRACE_PERIOD_VARIABLE: str(GRACE)})
    [(status, output, took)] = signal_when_ready([start(tmp_path, "preempt", env, launcher)], tmp_path,
                                                 signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, output
    assert took < GRACE / 2, output
    assert survivors(tmp_path) == [], output
    assert_saved_at_the_agreed_step(tmp_path)
    assert_resumes_bit_exactly(tmp_path, job_environment(), uninterrupted)


@pytest.mark.parametrize("stop, requeues", [(signal.SIGUSR1, ["requeue 4242"]), (signal.SIGTERM, [])])
def test_under_slurm_sigusr1_saves_and_requeues_once_and_sigterm_only_saves(stop, requeues, tmp_path,
                                                                           job_environment):
    """Two tasks as `srun --ntasks 2` starts them; SLURM sends SIGUSR1 to every task before the time limit, and
    SIGTERM when the job is cancelled (`scancel`), which must not put it back in the queue."""
    env, calls = fake_slurm_job(tmp_path, job_environment())
    tasks = [start(tmp_path, "preempt", {**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)})
             for rank in range(2)]
    for status, output, _ in signal_when_ready(tasks, tmp_path, stop):
        assert status == 128 + signal.SIGTERM, output
    assert_saved_at_the_agreed_step(tmp_path)
    assert (calls.read_text().splitlines() if calls.exists() else []) == requeues
    assert survivors(tmp_path) == []
