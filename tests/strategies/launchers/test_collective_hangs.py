"""A rank that stops taking part in collectives, or calls another one than its peers, turns within
`collective_timeout` (5 s here) into the same error on every rank, naming the rank, the operation, its sequence number
and the line of the script; the job exits with status 124 and leaves no process behind."""
import json
import re

import pytest
from launcher_jobs import failed_at, finish, line_of, start, survivors

from fabric_kit.watchdog import TIMEOUT_STATUS

ALL_REDUCE = f"Fabric.all_reduce at tests/strategies/launchers/scripts/job.py:{line_of('fabric.all_reduce(')}"
BROADCAST = f"Fabric.broadcast at tests/strategies/launchers/scripts/job.py:{line_of('fabric.broadcast(')}"
BACKWARD = f"Fabric.backward at tests/strategies/launchers/scripts/job.py:{line_of('fabric.backward(')}"
EXPECTED = {
    "sleep": rf"rank 1 has not reached collective #4 for [56] s; its last collective was all_reduce #3 "
             rf"\({ALL_REDUCE}\); rank 0 waits in all_reduce #4 \({ALL_REDUCE}\); if the wait is expected, raise "
             r"collective_timeout",
    "mismatch": rf"rank 1 is in broadcast #4 \({BROADCAST}\) while rank 0 is in all_reduce #4 \({ALL_REDUCE}\): "
                "the ranks call different collectives",
    # DDP's own gradient all-reduce cannot be named: the report is about the step's backward.
    "sleep_before_backward": rf"rank 1 has not reached collective #4 for [56] s; its last collective was backward "
                             rf"#3 \({BACKWARD}\); rank 0 waits in backward #4 \({BACKWARD}\)",
}


@pytest.mark.parametrize(("launcher", "behaviour"), [("ddp", "sleep"), ("ddp", "mismatch"), ("ddp_spawn", "mismatch"),
                                                     ("ddp", "sleep_before_backward")])
def test_a_hang_becomes_the_same_error_on_every_rank(launcher, behaviour, tmp_path, job_environment):
    job = start(launcher, tmp_path, behaviour, 1, "--collective-timeout", "5", env=job_environment())
    status, output, ended = finish(job)
    assert status == TIMEOUT_STATUS, output
    assert ended - failed_at(tmp_path) < 15, output
    errors = [line for line in output.splitlines() if line.startswith("fabric_kit.watchdog.CollectiveTimeoutError: ")]
    assert len(errors) == 2 and errors[0] == errors[1], output  # each rank raised it, with the same report
    assert re.search(EXPECTED[behaviour], errors[0]), errors[0]
    assert survivors(tmp_path) == [], output


def test_fabric_run_sets_the_timeout(tmp_path, job_environment):
    """`fabric run --collective-timeout 5`: the script sets none itself."""
    job = start("fabric-run", tmp_path, "sleep", 1, env=job_environment(),
                launcher_options=("--collective-timeout", "5"))
    status, output, ended = finish(job)
    assert status == TIMEOUT_STATUS and ended - failed_at(tmp_path) < 15, output
    assert re.search(EXPECTED["sleep"], output), output


def test_the_watchdog_adds_no_call_to_a_step(tmp_path, job_environment):
    """Python calls per step on each of 2 ranks, counted with `sys.setprofile` as benchmarks/overhead.py does,
    while the watchdog runs and after it stopped: the same, for a loop without collectives and one with an
    all_reduce per step (whose recording, two calls, happens either way; see test_watchdog.py)."""
    status, output, _ = finish(start("ddp", tmp_path, "count", 0, "--collective-timeout", "5", env=job_environment()))
    assert status == 0, output
    for rank in range(2):
        counts = json.loads((tmp_path / f"calls{rank}.json").read_text())
        assert counts["on"] == counts["off"], counts
