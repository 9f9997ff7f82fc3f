"""Preemption: a stop signal only sets a flag, and the ranks agree on it at a step boundary, so that every rank stops
after the same step and can save a checkpoint there, never inside the signal handler.

    for batch in loader:
        ...                          # the training step
        if fabric.preempted:         # on every rank, at the same point of every step
            fabric.save("last.ckpt", state)
            break

The signals are SIGTERM, plus SIGUSR1 under SLURM (which sends it before the time limit with
`--signal=USR1@<seconds>`), or those given to `Preemption(signals=...)`. They become a flag only once the script
reads `fabric.preempted`: until then they keep their usual effect, so a script that never reads it stops as it
always did. The ranks agree with one small all-reduce every `check_every` reads (between two, `preempted` keeps
its last agreed value), so the flag costs one collective every `check_every` steps and must be read on every rank
equally often.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fabric_kit import signals

if TYPE_CHECKING:
    from fabric_kit.strategies.strategy import Strategy


class Preemption:
    """Which signals preempt a run and how often the ranks agree on it (`check_every` reads of
    `fabric.preempted`, at least 1). `signals`: names ("SIGTERM", "SIGUSR1") or numbers; None means SIGTERM,
    and SIGUSR1 too under SLURM."""

    def __init__(self, signals: Iterable[int | str] | None = None, check_every: int = 10) -> None:
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every={check_every!r} is not valid: pass a positive integer (reads of "
                             "fabric.preempted between two agreements of the ranks)")
        if signals is None:
            signals = ("SIGTERM", "SIGUSR1") if "SLURM_JOB_ID" in os.environ else ("SIGTERM",)
        self.signals = tuple(_signal(value) for value in signals)
        self.check_every = check_every
        self.received: signal.Signals | None = None
        """The first of `signals` this process received (None: none yet)."""
        self._agreed = False
        self._listening = False
        self._reads = 0

    def preempted(self, strategy: Strategy) -> bool:
        """Whether some rank received one of the signals, as all ranks agreed at the latest agreement; once True,
        it stays True."""
        if self._agreed:
            return True
        if not self._listening:
            self._listening = True
            signals.as_flag(self.signals, self._receive)
        self._reads += 1
        if strategy.world_size == 1:
            self._agreed = self.received is not None
        elif self._reads % self.check_every == 0:
            self._agreed = strategy.reduce_boolean_decision(self.received is not None, all=False)
        return self._agreed

    def _receive(self, number: int) -> None:
        if self.received is None:
            self.received = signal.Signals(number)


def _signal(value: int | str) -> signal.Signals:
    try:
        if isinstance(value, str):
            name = value.upper()
            number = signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
        else:
            number = signal.Signals(value)
    except (KeyError, ValueError):
        number = None
    if number is None or number in (signal.SIGKILL, signal.SIGSTOP):
        raise ValueError(f"signal {value!r} cannot preempt a run; pass a signal a process can catch, by name "
                         "('SIGTERM', 'SIGUSR1') or number")
    return number
