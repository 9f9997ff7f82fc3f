"""`fabric.preempted`: a preemption signal only sets a flag, read at a step boundary and agreed by the ranks every
`check_every` reads (tests/strategies/launchers/test_stop_signals.py sends the signals to real jobs)."""
import os
import signal
import subprocess
import sys

import pytest

from fabric_kit import Fabric, signals
from fabric_kit.preemption import Preemption

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    yield
    signals.reset()


class TwoRanks:
    """The part of a strategy that preemption uses, for 2 ranks; rank 1 has received the signal."""

    world_size = 2

    def __init__(self):
        self.agreements = 0

    def reduce_boolean_decision(self, decision, all=True):
        self.agreements += 1
        return True


def test_the_signals():
    assert Preemption().signals == (signal.SIGTERM,)
    assert Preemption(signals=["usr1", "SIGUSR2", signal.SIGINT]).signals == (signal.SIGUSR1, signal.SIGUSR2,
                                                                            signal.SIGINT)


def test_under_slurm_sigusr1_preempts_too(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert Preemption().signals == (signal.SIGTERM, signal.SIGUSR1)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"signals": ["SIGNOPE"]}, "signal 'SIGNOPE' cannot preempt a run"),
    ({"signals": [signal.SIGKILL]}, "cannot preempt a run; pass a signal a process can catch"),
    ({"check_every": 0}, r"check_every=0 is not valid: pass a positive integer"),
])
def test_bad_settings_name_the_value_and_what_is_accepted(arguments, message):
    with pytest.raises(ValueError, match=message):
        Preemption(**arguments)


def test_a_signal_sets_the_flag_and_the_process_carries_on():
    fabric = Fabric(accelerator="cpu", devices=1)
    assert not fabric.preempted  # the first read makes SIGTERM a flag
    os.kill(os.getpid(), signal.SIGTERM)
    assert fabric.preempted
    assert fabric.preempted  # and it stays set


def test_before_the_first_read_the_signal_ends_the_process_as_usual():
    code = "from fabric_kit import Fabric; import os, signal; Fabric(accelerator='cpu'); os.kill(os.getpid(), " \
           "signal.SIGTERM); print('still running')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGTERM and "still running" not in done.stdout


def test_the_ranks_agree_every_check_every_reads():
    preemption, strategy = Preemption(check_every=3), TwoRanks()
    assert [preemption.preempted(strategy) for _ in range(2)] == [False, False]
    assert strategy.agreements == 0
    assert preemption.preempted(strategy)  # the third read asks the ranks: one of them received the signal
    assert strategy.agreements == 1
    assert preemption.preempted(strategy) and strategy.agreements == 1  # agreed once, it stays True
