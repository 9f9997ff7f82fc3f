"""A failing rank stops the job: non-zero exit, its error shown, nothing left running; restarts recover."""
import os
import socket
import time

from tests.helpers.cli_processes import FABRIC, SCRIPT, assert_one_world_of_two, results, run


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



def test_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("", 0))
        squatter.listen()
        port = str(squatter.getsockname()[1])
        status, output = run([*FABRIC, "run", "--devices", "2", "--main-port", port, SCRIPT, tmp_path], timeout=60)
    assert status == 1
    assert output.count("\n") == 1 and "Traceback" not in output
    assert f"127.0.0.1:{port}" in output and "address already in use" in output
    assert not (tmp_path / "pids").exists()  # nothing started
