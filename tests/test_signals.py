"""fabric_kit.signals: forwarding happens on a thread as the signal arrives; in the main thread the signal becomes a
flag, or does what it did before (the default action becomes SystemExit(128 + signal), so exit hooks run)."""
import os
import signal
import threading
import time

import pytest

from fabric_kit import signals


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    yield
    signals.reset()


def receive(number):
    """Send `number` to this process and give Python's main thread the bytecodes to run its handler in."""
    os.kill(os.getpid(), number)
    for _ in range(100):
        time.sleep(0.001)


def test_forwarding_runs_on_a_thread_then_the_previous_handler_runs():
    seen, forwarded = [], threading.Event()
    signal.signal(signal.SIGUSR1, lambda number, frame: seen.append(("previous", number)))

    def forward(number):
        seen.append(("forward", threading.current_thread() is threading.main_thread()))
        forwarded.set()

    assert signals.forward_to(forward, [signal.SIGUSR1])
    receive(signal.SIGUSR1)
    assert forwarded.wait(5)
    assert ("forward", False) in seen and ("previous", signal.SIGUSR1) in seen
    signals.stop_forwarding(forward)
    assert signal.getsignal(signal.SIGUSR1) is not signals._handle  # given back
    assert signal.set_wakeup_fd(-1) == -1  # and no wakeup fd left behind


def test_the_default_action_becomes_system_exit():
    assert signals.forward_to(lambda number: None, [signal.SIGUSR2])
    with pytest.raises(SystemExit) as stopped:
        receive(signal.SIGUSR2)
    assert stopped.value.code == 128 + signal.SIGUSR2
    assert signals.stopping_signal() == signal.SIGUSR2


def test_a_flag_replaces_the_previous_behaviour():
    flags = []
    assert signals.as_flag([signal.SIGUSR2], flags.append)
    receive(signal.SIGUSR2)
    assert flags == [signal.SIGUSR2] and signals.stopping_signal() is None


def test_outside_the_main_thread_nothing_is_installed():
    results = []
    thread = threading.Thread(target=lambda: results.append(signals.as_flag([signal.SIGUSR2], print)))
    thread.start()
    thread.join()
    assert results == [False] and signal.getsignal(signal.SIGUSR2) is not signals._handle
