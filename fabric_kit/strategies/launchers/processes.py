"""What fabric_kit's launchers share about the ranks' processes, modelled on torch.distributed.run: exit statuses,
how long ranks get to end after a signal, and the rule that no rank outlives the process that launched it."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

from fabric_kit.environments import _variables

GRACE_PERIOD_VARIABLE = "FABRIC_KIT_GRACE_PERIOD"
DEFAULT_GRACE_PERIOD = 30.0
"""Seconds the ranks get after a forwarded SIGTERM / SIGINT before SIGKILL (torchrun's default too)."""
FAILURE_GRACE_PERIOD = 2.0
"""Seconds the surviving ranks get after SIGTERM, once one rank has failed, before SIGKILL."""
LAUNCHER_PID_VARIABLE = "FABRIC_KIT_LAUNCHER_PID"
"""Set for the ranks the re-run-script launcher starts: the process they must not outlive."""


class RankFailed(SystemExit):
    """A rank that fabric_kit's launcher started failed: the launching process ends with that rank's exit status
    (`code`: its own, or 128 + the signal that killed it)."""

    def __init__(self, rank: int, pid: int, returncode: int) -> None:
        super().__init__(exit_status(returncode))
        self.rank, self.pid, self.returncode = rank, pid, returncode

    def __str__(self) -> str:
        return f"rank {self.rank} (pid {self.pid}) {describe(self.returncode)}"


def exit_status(returncode: int) -> int:
    """The status a shell reports for a process that ended with `returncode` (negative: killed by that signal)."""
    return 128 - returncode if returncode < 0 else returncode


def root_cause(failures: dict[int, int]) -> int:
    """Of the ranks seen failing together (their return codes by rank), the one whose failure most likely caused the
    others': a rank that a launcher stopped ends by SIGTERM, a rank whose peer vanished fails with status 1 (its
    collective raises), so any other status comes first, then 1, then SIGTERM; ties go to the lowest rank."""
    def likelihood(rank: int) -> tuple[int, int]:
        code = failures[rank]
        return (2 if code == -signal.SIGTERM else 1 if code == 1 else 0), rank

    return min(failures, key=likelihood)


def describe(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name} (exit status {exit_status(returncode)})"
    return f"exited with status {returncode}"


def grace_period() -> float:
    """Seconds the ranks get between a forwarded signal and SIGKILL: FABRIC_KIT_GRACE_PERIOD, else 30."""
    text = os.environ.get(GRACE_PERIOD_VARIABLE)
    if text is None:
        return DEFAULT_GRACE_PERIOD
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{GRACE_PERIOD_VARIABLE}={text!r} is not valid: expected seconds >= 0")
    return seconds


def end_with_launcher(rank: int) -> None:
    """In a rank the re-run-script launcher started: end this process as soon as the launching one is gone (e.g.
    SIGKILLed, so that it could not stop its ranks), instead of waiting in a collective with no one to join."""
    launcher = _variables.read_int(LAUNCHER_PID_VARIABLE, 0)
    if launcher:
        watch_parent(launcher, rank)


def watch_parent(parent: int, rank: int) -> None:
    """End this process as soon as `parent` (the launching process) is no longer its parent."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        print(f"fabric_kit: rank {rank}: the launching process (pid {parent}) has ended; ending this rank too",
              file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="fabric_kit launcher watch", daemon=True).start()
