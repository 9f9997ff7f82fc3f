"""A failing rank stops the job: non-zero exit, its error shown, nothing left running; restarts recover."""
import os
import time

from cli_processes import FABRIC, SCRIPT, assert_one_world_of_two, results, run


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_failing_rank_stops_the_job(tmp_path):
    started = time.monotonic()
    status, output = run([*FABRIC, "run", "--devices", "2", SCRIPT, tmp_path, "--fail-rank", "1"], timeout=60)
    assert status != 0
    assert time.monotonic() - started < 30
    assert "Traceback" in output and "rank 1 fails on purpose" in output
    pids = [int(line) for line in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5  # the launcher waits for its children, so this should hold at once
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, pids)), pids


def test_max_restarts_recovers_from_one_failure(tmp_path):
    marker = tmp_path / "failed-once"
    status, output = run([*FABRIC, "run", "--devices", "2", "--max-restarts", "2", SCRIPT, tmp_path,
                          "--fail-once", marker])
    assert status == 0, output
    assert marker.exists() and "rank 1 fails on the first run only" in output
    assert_one_world_of_two(tmp_path)
    assert [r["restart"] for r in results(tmp_path)] == ["1", "1"]

