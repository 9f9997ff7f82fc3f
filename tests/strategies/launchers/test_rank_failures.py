"""A rank that fails ends the whole job within seconds, under every launcher: `python job.py` with ddp (the launching
process is rank 0), ddp_spawn and ddp_fork (it is neither rank), `fabric run` and torchrun. The job exits with the
failing rank's status (128 + signal for a killed one), its traceback shown, and no process of the job is left."""
import pytest
from launcher_jobs import LAUNCHERS, failed_at, finish, start, survivors

from fabric_kit.strategies.launchers.processes import exit_status

STATUS = {"raise": 1, "exit": 3, "kill": 137}  # RuntimeError, sys.exit(3), SIGKILL


def check_the_job_ended(out, launcher, behaviour, rank, status, output, ended):
    expected = 1 if launcher == "torchrun" else STATUS[behaviour]  # torchrun reports every failure as 1
    assert exit_status(status) == expected, output
    assert ended - failed_at(out) < 10, output
    if behaviour == "raise":
        assert "Traceback" in output and f"rank {rank} fails on purpose" in output, output
    assert survivors(out) == [], output


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize(("behaviour", "rank"), [("raise", 0), ("raise", 1), ("exit", 1), ("kill", 1)])
def test_a_failing_rank_ends_the_job(launcher, behaviour, rank, tmp_path, job_environment):
    status, output, ended = finish(start(launcher, tmp_path, behaviour, rank, env=job_environment()))
    check_the_job_ended(tmp_path, launcher, behaviour, rank, status, output, ended)


@pytest.mark.parametrize("behaviour", ["exit", "kill"])
def test_rank_zero_that_launched_the_others_ends_them_too(behaviour, tmp_path, job_environment):
    """Under `python job.py` rank 0 is the launching process: its sys.exit(3) is the job's status (rank 1, waiting
    for it in a collective, is ended by the watchdog), and once it is SIGKILLed rank 1 ends by itself."""
    status, output, ended = finish(start("ddp", tmp_path, behaviour, 0, env=job_environment()))
    check_the_job_ended(tmp_path, "ddp", behaviour, 0, status, output, ended)
    if behaviour == "exit":
        assert "rank 0 has ended; its last collective was all_reduce #3" in output, output
