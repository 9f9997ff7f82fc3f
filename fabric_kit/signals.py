"""The stop signals of a process that fabric_kit manages: SIGTERM and SIGINT, and those preemption listens to.

A launcher forwards them to the ranks it started (`forward_to`). That happens on a thread of its own, woken through
`signal.set_wakeup_fd` the moment the signal arrives, because Python runs signal handlers only in the main thread
between two bytecodes: a main thread blocked inside a collective would hold the signal back from the ranks it
waits for.

In the main thread, the handler then
- sets preemption's flag when preemption listens to the signal (`as_flag`), and returns: the process carries on to
  its next step boundary;
- otherwise does what the signal did before fabric_kit: the previous Python handler (SIGINT's raises
  KeyboardInterrupt), or for the default action (ending the process) `SystemExit(128 + signal)`, so that exit hooks
  run and a launcher waits for its ranks before the process ends.
"""
from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""What a launcher forwards to its ranks (besides the signals preemption listens to)."""

Action = Callable[[int], None]

_previous: dict[int, Any] = {}  # the handler each signal had before this module took it over
_forwarders: list[Action] = []
_flags: dict[int, Action] = {}
_wakeup: list[Any] = []  # while forwarding: [the socket the signal numbers arrive on, its writing end, the old fd]
_forwarded: dict[int, threading.Event] = {}
_stopping: list[int] = []  # the signals whose handler ended (is ending) the main thread


def forward_to(forward: Action, signals: Iterable[int] = STOP_SIGNALS) -> bool:
    """Call `forward(signal)`, from a thread of this module, as soon as this process receives one of `signals` or
    of the signals taken as flags. False (nothing installed) outside the main thread, where Python sets no
    handlers."""
    if not _install(signals):
        return False
    if not _wakeup:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        _wakeup.extend([reader, writer, signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)])
        threading.Thread(target=_forward_arrivals, args=(reader,), name="fabric_kit signal forwarding",
                         daemon=True).start()
    _forwarders.append(forward)
    return True


def stop_forwarding(forward: Action) -> None:
    """Undo `forward_to`; a signal that nothing needs any more gets its previous handler back."""
    if forward in _forwarders:
        _forwarders.remove(forward)
    if _forwarders or threading.current_thread() is not threading.main_thread():
        return
    for number in [number for number in _previous if number not in _flags]:
        signal.signal(number, _previous.pop(number))
    _close_wakeup()


def as_flag(signals: Iterable[int], set_flag: Action) -> bool:
    """Make `signals` call `set_flag(signal)` in the main thread instead of stopping the process. False outside
    the main thread."""
    signals = list(signals)
    if not _install(signals):
        return False
    for number in signals:
        _flags[number] = set_flag
    return True


def reset() -> None:
    """Give every signal back the handler it had before, and forget forwarders and flags: a forked rank must not
    forward to its launcher's other children, nor keep its launcher's flags."""
    for number, previous in _previous.items():
        signal.signal(number, previous)
    _previous.clear()
    _forwarders.clear()
    _flags.clear()
    _forwarded.clear()
    _stopping.clear()
    _close_wakeup()


def _close_wakeup() -> None:
    """Give the main thread its previous wake-up fd back and close the pipe the forwarding thread read."""
    if _wakeup:
        reader, writer, previous_fd = _wakeup
        _wakeup.clear()
        signal.set_wakeup_fd(previous_fd)
        writer.close()
        reader.close()


def _install(signals: Iterable[int]) -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False
    for number in signals:
        if number not in _previous:
            previous = signal.getsignal(number)
            _previous[number] = signal.SIG_DFL if previous is None else previous
            signal.signal(number, _handle)
    return True


def _forward_arrivals(reader: socket.socket) -> None:
    """Each byte is the number of a signal that has just arrived (written by Python's C-level handler)."""
    while True:
        try:
            arrived = reader.recv(64)
        except OSError:
            return
        if not arrived:
            return
        for number in arrived:
            if number in _previous:
                for forward in list(_forwarders):
                    forward(number)
                _forwarded.setdefault(number, threading.Event()).set()


def stopping_signal(timeout: float = 1.0) -> int | None:
    """The signal whose handler is ending the main thread (SystemExit, or SIGINT's KeyboardInterrupt), None if
    none, once it has been forwarded (waiting up to `timeout` seconds for the forwarding thread)."""
    if not _stopping:
        return None
    if _wakeup:
        _forwarded.setdefault(_stopping[0], threading.Event()).wait(timeout)
    return _stopping[0]


def _handle(number: int, frame: FrameType | None) -> None:
    set_flag = _flags.get(number)
    if set_flag is not None:
        set_flag(number)
        return
    _stopping.append(number)
    previous = _previous.get(number, signal.SIG_DFL)
    if callable(previous):
        previous(number, frame)
    elif previous != signal.SIG_IGN:
        raise SystemExit(128 + number)
