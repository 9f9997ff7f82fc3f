"""SIGTERM / SIGINT to a job reach every rank: the launching process forwards them (`python job.py`, ddp_spawn, and
`fabric run`, which is torchrun underneath). With `fabric.preempted` read every step, SIGTERM stops every rank after
the same step, where the script saves; the job exits with 128 + the signal within the grace period, and a rank that
does not stop is killed when the grace period ends. Under SLURM, SIGUSR1 does the same and rank 0 requeues the job
(a stub `scontrol` records the call)."""
import os
import signal
import time

import pytest
from launcher_jobs import finish, start, survivors, wait_for

from fabric_kit.strategies.launchers.processes import GRACE_PERIOD_VARIABLE, exit_status
from tests.helpers.slurm import fake_slurm_job

GRACE = 20  # seconds; the jobs below end well within it


def signal_mid_run(launcher, out, environment, number=signal.SIGTERM, behaviour="preempt", **options):
    job = start(launcher, out, behaviour, 0, env=environment, **options)
    wait_for(out / "step5")
    sent = time.time()
    os.kill(job.pid, number)
    status, output, ended = finish(job)
    return exit_status(status), output, ended - sent


@pytest.mark.parametrize("launcher", ["ddp", "ddp_spawn", "fabric-run"])
def test_sigterm_stops_every_rank_after_the_same_step(launcher, tmp_path, job_environment):
    options = {"launcher_options": ("--grace-period", str(GRACE))} if launcher == "fabric-run" else {}
    status, output, took = signal_mid_run(launcher, tmp_path, job_environment(**{GRACE_PERIOD_VARIABLE: str(GRACE)}),
                                          **options)
    assert status == 128 + signal.SIGTERM, output
    assert took < GRACE / 2, output
    saved = [(tmp_path / f"saved{rank}").read_text() for rank in range(2)]
    assert saved[0] == saved[1] and int(saved[0]) >= 5, (saved, output)
    assert survivors(tmp_path) == [], output


def test_sigint_is_forwarded_and_ends_the_job(tmp_path, job_environment):
    status, output, took = signal_mid_run("ddp", tmp_path, job_environment(), signal.SIGINT)
    assert status == 128 + signal.SIGINT and took < 10, output
    assert "KeyboardInterrupt" in output
    assert survivors(tmp_path) == [], output


def test_a_rank_that_does_not_stop_is_killed_when_the_grace_period_ends(tmp_path, job_environment):
    status, output, took = signal_mid_run("ddp", tmp_path, job_environment(**{GRACE_PERIOD_VARIABLE: "2"}),
                                          behaviour="ignore_preemption")
    assert status == 128 + signal.SIGTERM, output
    assert 2 <= took < 8, output
    assert "did not end within the grace period after SIGTERM" in output
    assert survivors(tmp_path) == [], output


def test_sigterm_reaches_the_ranks_while_rank_zero_waits_in_a_collective(tmp_path, job_environment):
    """Rank 1 sleeps, rank 0 is blocked in all_reduce, where no Python signal handler runs: the signal is forwarded
    from a thread all the same, rank 1 ends at once, and with it the job."""
    job = start("ddp", tmp_path, "sleep", 1, env=job_environment())
    wait_for(tmp_path / "failed_at")
    time.sleep(0.5)
    sent = time.time()
    os.kill(job.pid, signal.SIGTERM)
    status, output, ended = finish(job)
    assert exit_status(status) == 128 + signal.SIGTERM and ended - sent < 10, output
    assert survivors(tmp_path) == [], output


def test_sigusr1_under_slurm_saves_and_requeues_once(tmp_path, job_environment):
    """Two tasks as `srun --ntasks 2` starts them; SLURM sends SIGUSR1 to every task before the time limit."""
    environment, calls = fake_slurm_job(tmp_path, job_environment())
    tasks = [start("task", tmp_path, "preempt", 0, "--requeue", env={**environment, "SLURM_PROCID": str(rank),
                                                                         "SLURM_LOCALID": str(rank)})
             for rank in range(2)]
    wait_for(tmp_path / "step5")
    for task in tasks:
        os.kill(task.pid, signal.SIGUSR1)
    for task in tasks:
        status, output, _ = finish(task)
        assert status == 0, output
    saved = [(tmp_path / f"saved{rank}").read_text() for rank in range(2)]
    assert saved[0] == saved[1], saved
    assert calls.read_text() == "requeue 4242\n"
