"""The collective watchdog's pieces in one process: the record of collectives, the timeout setting, and the reports
it writes from every rank's position (tests/strategies/launchers/test_collective_hangs.py runs it for real)."""
import inspect
import os
from datetime import timedelta

import pytest
import torch

from benchmarks.overhead import count_calls
from fabric_kit import Fabric
from fabric_kit.collective_log import LOG, Collective, CollectiveLog
from fabric_kit.strategies import DDPStrategy
from fabric_kit.watchdog import DEFAULT_COLLECTIVE_TIMEOUT, Position, collective_timeout_seconds, describe_hang

pytestmark = pytest.mark.usefixtures("clean_env")

THIS_FILE = os.path.relpath(__file__)

ALL_REDUCE = Collective(41, "all_reduce", "Fabric.all_reduce at train.py:72")
BEFORE = Collective(40, "all_reduce", "Fabric.all_reduce at train.py:72")
BROADCAST = Collective(41, "broadcast", "Fabric.broadcast at train.py:88")


def waiting(collective=ALL_REDUCE):
    return Position(collective, inside=True, ended=False)


def idle(collective=BEFORE):
    return Position(collective, inside=False, ended=False)


def test_the_record_names_the_kind_the_entry_point_and_the_users_line():
    """A one-process gloo group: `fabric.all_reduce` goes through fabric_kit's collectives as on many ranks."""
    fabric = Fabric(accelerator="cpu", devices=1, strategy="ddp")
    fabric.launch()
    try:
        before = LOG.entered[0] if LOG.entered else 0
        line = inspect.currentframe().f_lineno + 1
        fabric.all_reduce(torch.tensor(1.0))
        assert Collective.of(LOG.entered) == (before + 1, "all_reduce", f"Fabric.all_reduce at {THIS_FILE}:{line}")
        assert LOG.left == before + 1  # it returned
        fabric.barrier()
        assert Collective.of(LOG.entered)[:2] == (before + 2, "barrier")
    finally:
        fabric.strategy.teardown()


def test_recording_a_collective_costs_two_calls():
    log = CollectiveLog()
    assert count_calls(lambda: log.enter("all_reduce")) - count_calls(lambda: None) == 2  # `enter`, the frame lookup


@pytest.mark.parametrize(("value", "seconds"), [(None, DEFAULT_COLLECTIVE_TIMEOUT), (5, 5.0), (2.5, 2.5),
                                                (timedelta(minutes=2), 120.0), ("30", 30.0), (0, None), ("0", None)])
def test_timeout_settings(value, seconds):
    assert collective_timeout_seconds(value) == seconds


@pytest.mark.parametrize("value", [-1, "soon", float("inf"), float("nan"), True, [5]])
def test_a_bad_timeout_names_the_value_and_what_is_accepted(value):
    with pytest.raises(ValueError, match=r"collective_timeout=.* is not valid: pass seconds >= 0"):
        collective_timeout_seconds(value)


def test_fabric_hands_its_timeout_to_the_strategy(monkeypatch):
    fabric = Fabric(accelerator="cpu", devices=2, collective_timeout=5)
    assert fabric.strategy.collective_timeout == 5
    monkeypatch.setenv("FABRIC_KIT_COLLECTIVE_TIMEOUT", "7")
    assert Fabric(accelerator="cpu", devices=2).strategy.collective_timeout == 7.0
    with pytest.raises(ValueError, match=r"`fabric run --collective-timeout=7` disagrees with "
                                         r"`Fabric\(collective_timeout=5\)`"):
        Fabric(accelerator="cpu", devices=2, collective_timeout=5)
    assert Fabric(accelerator="cpu", devices=2, collective_timeout=timedelta(seconds=7)).strategy.collective_timeout


def test_a_strategys_own_timeout_stands_unless_contradicted():
    assert Fabric(accelerator="cpu", devices=2, strategy=DDPStrategy(collective_timeout=9)).strategy \
        .collective_timeout == 9
    with pytest.raises(ValueError, match=r"collective_timeout=5 disagrees with DDPStrategy\(collective_timeout=9\)"):
        Fabric(accelerator="cpu", devices=2, strategy=DDPStrategy(collective_timeout=9), collective_timeout=5)
    with pytest.raises(ValueError, match=r"collective_timeout=-3 is not valid"):
        DDPStrategy(collective_timeout=-3)


def test_a_position_survives_the_store():
    for position in (waiting(), idle(), Position(None, inside=False, ended=True)):
        assert Position.loads(position.dumps()) == position


def test_a_rank_that_has_not_reached_the_collective():
    report = describe_hang(0, 300, {0: waiting(), 1: waiting(), 2: waiting(), 3: idle()}, timed_out=True)
    assert report.startswith("rank 3 has not reached collective #41 for 300 s; its last collective was all_reduce #40 "
                             "(Fabric.all_reduce at train.py:72); ranks 0, 1, 2 wait in all_reduce #41 "
                             "(Fabric.all_reduce at train.py:72); if the wait is expected, raise collective_timeout")


def test_several_ranks_behind_are_each_described():
    still_inside = Position(BEFORE, inside=True, ended=False)
    report = describe_hang(0, 12.4, {0: waiting(), 1: None, 2: still_inside, 3: Position(None, False, False)},
                           timed_out=True)
    assert report.startswith("ranks 1, 2, 3 have not reached collective #41 for 12 s; rank 1 has not reported to the "
                             "watchdog yet; rank 2 is still in all_reduce #40 (Fabric.all_reduce at train.py:72); "
                             "rank 3 made no collective call; rank 0 waits in all_reduce #41")


def test_ranks_in_different_collectives():
    report = describe_hang(0, 300, {0: waiting(), 1: waiting(BROADCAST), 2: waiting(), 3: waiting()}, timed_out=True)
    assert report == ("rank 1 is in broadcast #41 (Fabric.broadcast at train.py:88) while ranks 0, 2, 3 are in "
                      "all_reduce #41 (Fabric.all_reduce at train.py:72): the ranks call different collectives")
    # Two against two: rank 0's side is the reference.
    report = describe_hang(1, 300, {0: waiting(), 1: waiting(BROADCAST)}, timed_out=True)
    assert report.startswith("rank 1 is in broadcast #41 (Fabric.broadcast at train.py:88) while rank 0 is in")


def test_a_rank_that_ended_is_reported_at_once():
    ended = Position(BEFORE, inside=False, ended=True)
    assert describe_hang(1, 1, {0: ended, 1: waiting()}, timed_out=False) == (
        "rank 0 has ended; its last collective was all_reduce #40 (Fabric.all_reduce at train.py:72); rank 1 waits in "
        "all_reduce #41 (Fabric.all_reduce at train.py:72), which cannot complete")
    # A rank that ended after taking part in the same collective is no reason to stop.
    done = Position(ALL_REDUCE, inside=False, ended=True)
    assert describe_hang(1, 1, {0: done, 1: waiting()}, timed_out=False) is None


def test_before_the_timeout_a_wait_is_no_hang():
    assert describe_hang(0, 4, {0: waiting(), 1: idle()}, timed_out=False) is None


def test_ranks_ahead_and_a_collective_that_never_completes():
    ahead = Position(Collective(43, "barrier", "Fabric.barrier at train.py:90"), inside=True, ended=False)
    assert describe_hang(0, 300, {0: waiting(), 1: ahead}, timed_out=True).startswith(
        "rank 1 is at barrier #43 (Fabric.barrier at train.py:90); rank 0 waits in all_reduce #41")
    assert describe_hang(0, 300, {0: waiting(), 1: waiting()}, timed_out=True).startswith(
        "every rank is in all_reduce #41 (Fabric.all_reduce at train.py:72) for 300 s and it does not complete")
