"""Processes that join a process group again after tearing one down (a second Fabric in the same processes) meet on
a fresh store: a rank faster to the second rendezvous than rank 0 is to its teardown used to reach rank 0's previous
store, read the first group's addresses and fail or hang in `init_process_group`."""
from pathlib import Path

WORKER = Path(__file__).with_name("rejoin_worker.py")


def test_a_second_group_after_a_teardown(run_ranks, tmp_path):
    _, ranks = run_ranks([WORKER, tmp_path], tmp_path, timeout=180)
    assert [rank["sums"] for rank in ranks] == [[3.0, 3.0], [3.0, 3.0]]
