"""The collective watchdog: a hang in a collective becomes, on every rank and within `collective_timeout` (plus a
few seconds), an error naming the rank, the operation, its sequence number and the user's source line, e.g.

    rank 1 is in broadcast #41 (Fabric.broadcast at train.py:88) while rank 0 is in all_reduce #41
    (Fabric.all_reduce at train.py:72)

instead of the backend's own timeout (30 minutes for gloo) and a message naming neither.

One thread per rank talks to the job's c10d store (a connection of its own, keys under this restart round's
prefix). Every poll (a fifth of the timeout, at most a second) it reads `collective_log.LOG`, which the main thread
writes at each collective; a rank that has moved on since the last poll is part of no hang and sends nothing. Once
the position has stayed the same for a whole poll, the thread:
- publishes the rank's position (`rank/<r>`: the newest collective entered, whether the rank is still inside it,
  whether it has ended);
- when the rank has waited inside one collective for `collective_timeout`, or for a rank that has ended without
  entering it, reads every rank's position and writes the report (the first one written wins);
- once a report exists, prints it with its main thread's stack, as an uncaught `CollectiveTimeoutError` prints,
  waits briefly until every rank has printed it, and ends the process with status 124; the launcher ends the job.

It ends the process rather than raising in the main thread because that thread is blocked inside the backend's
collective (C++), where no Python exception reaches it, and gloo has no abort. The main thread pays only the two
calls per collective that record it; a loop without collectives pays nothing.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from fabric_kit.collective_log import LOG, Collective, CollectiveLog

DEFAULT_COLLECTIVE_TIMEOUT = 600.0
"""Seconds a rank may wait inside one collective before the watchdog ends the job: 10 minutes (NCCL's default),
not gloo's 30."""
TIMEOUT_STATUS = 124
"""The exit status of a rank the watchdog ends (as `timeout(1)`'s)."""
HOW_TO_RAISE = ("if the wait is expected, raise collective_timeout (Fabric(collective_timeout=...), fabric run "
                "--collective-timeout or FABRIC_KIT_COLLECTIVE_TIMEOUT; 0 turns the watchdog off)")
_REPORT = "report"
_ENDED = "ended"
_PRINTED = "printed"


class CollectiveTimeoutError(RuntimeError):
    """A collective waited longer than `collective_timeout`, or for a rank that has ended; the message names the
    ranks, the operations and where they were called."""


def collective_timeout_seconds(value: float | timedelta | str | None) -> float | None:
    """Seconds for a `collective_timeout` setting, None for "off": None means the default (10 minutes), 0 turns
    the watchdog off; a number of seconds, a numeric string (from the environment) or a timedelta."""
    if value is None:
        return DEFAULT_COLLECTIVE_TIMEOUT
    seconds: float | None = None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            pass
    if seconds is None or not 0 <= seconds < float("inf"):
        raise ValueError(f"collective_timeout={value!r} is not valid: pass seconds >= 0 (a number or a "
                         "datetime.timedelta); 0 turns the collective watchdog off")
    return seconds or None


@dataclass(frozen=True)
class Position:
    """Where one rank is, as its watchdog publishes it: the newest collective it entered, whether it is still
    inside it, and whether the rank has ended (its script finished, or it left the process group)."""

    entered: Collective | None
    inside: bool
    ended: bool

    @property
    def seq(self) -> int:
        return self.entered.seq if self.entered is not None else 0

    def dumps(self) -> str:
        return json.dumps([list(self.entered) if self.entered else None, self.inside, self.ended])

    @classmethod
    def loads(cls, text: str | bytes) -> Position:
        entered, inside, ended = json.loads(text)
        return cls(Collective(*entered) if entered else None, inside, ended)

    @classmethod
    def of(cls, log: CollectiveLog, ended: bool) -> Position:
        entered = log.entered
        return cls(Collective.of(entered) if entered else None, entered is not None and log.left < entered[0],
                   ended)


class Watchdog:
    """This rank's watchdog thread; `start` it once the process group exists, `stop` it when leaving the group."""

    def __init__(self, store: dist.Store, rank: int, world_size: int, timeout: float,
                 log: CollectiveLog = LOG) -> None:
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.timeout = timeout
        self.period = max(0.05, min(1.0, timeout / 5))
        self.log = log
        self._stopped = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._watch, name="fabric_kit collective watchdog", daemon=True)

    def start(self) -> None:
        self._publish(Position.of(self.log, ended=False))
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and tell the other ranks that this one takes part in no more collectives, so that a rank
        waiting for it stops at once."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        try:
            self._end()
        except (RuntimeError, OSError):
            pass  # the store's host has ended: so has the job

    # -- the thread ---------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        seen, since, published = Position.of(self.log, ended=False), time.monotonic(), True
        try:
            while not self._stopped.wait(self.period):
                if not threading.main_thread().is_alive():
                    self._end()
                    return
                position, now = Position.of(self.log, ended=False), time.monotonic()
                if position != seen:  # the rank moves on: it is part of no hang, and talks to no store
                    seen, since, published = position, now, False
                    continue
                if not published:
                    self._publish(position)
                    published = True
                report = self._report()
                if report is None and position.inside:
                    report = self._detect(position, now - since)
                if report is not None:
                    self._end_process(report)
        except (RuntimeError, OSError):
            return  # the store's host has ended: so has the job

    def _publish(self, position: Position) -> None:
        self.store.set(f"rank/{self.rank}", position.dumps())

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._publish(Position.of(self.log, ended=True))
            self.store.add(_ENDED, 1)

    def _report(self) -> str | None:
        return bytes(self.store.get(_REPORT)).decode() if self.store.check([_REPORT]) else None

    def _detect(self, position: Position, waited: float) -> str | None:
        """The report when this rank's wait (`waited` seconds inside the collective of `position`) is a hang,
        else None. The first report written wins, so that every rank prints the same one."""
        timed_out = waited >= self.timeout
        if not timed_out and self.store.add(_ENDED, 0) == 0:
            return None
        positions = self._positions()
        positions[self.rank] = position
        report = describe_hang(self.rank, waited, positions, timed_out)
        if report is None:
            return None
        self.store.compare_set(_REPORT, "", report)
        return bytes(self.store.get(_REPORT)).decode()

    def _positions(self) -> dict[int, Position | None]:
        keys = [f"rank/{rank}" for rank in range(self.world_size)]
        found = keys if self.store.check(keys) else [key for key in keys if self.store.check([key])]
        values = dict(zip(found, self.store.multi_get(found), strict=True)) if found else {}
        return {rank: Position.loads(values[key]) if key in values else None for rank, key in enumerate(keys)}

    def _end_process(self, report: str) -> None:
        main = sys._current_frames().get(threading.main_thread().ident or -1)
        stack = "".join(traceback.format_stack(main)) if main is not None else ""
        error = CollectiveTimeoutError(report)
        # One write, so that the ranks' reports on a shared stderr do not interleave.
        sys.stderr.write(f"fabric_kit: the collective watchdog stops rank {self.rank} (pid {os.getpid()}); its main "
                         f"thread was here:\nTraceback (most recent call last):\n{stack}"
                         f"{type(error).__module__}.{type(error).__name__}: {error}\n")
        sys.stderr.flush()
        # The main thread's own error, when its collective fails as the peers end, is a consequence of this one.
        sys.excepthook = lambda *exception: None
        # Every rank (that has not ended) prints the report before the launcher, seeing the first rank end, stops
        # the others.
        deadline = time.monotonic() + max(2.0, 3 * self.period)
        try:
            self.store.add(_PRINTED, 1)
            while (self.store.add(_PRINTED, 0) < self.world_size - self.store.add(_ENDED, 0)
                   and time.monotonic() < deadline):
                time.sleep(self.period / 2)
        except (RuntimeError, OSError):
            pass
        sys.stdout.flush()
        os._exit(TIMEOUT_STATUS)


def describe_hang(rank: int, waited: float, positions: dict[int, Position | None], timed_out: bool) -> str | None:
    """What keeps `rank` inside its collective, from every rank's position (None: not published yet); None while
    the collective may still complete (no timeout yet, and no rank that it waits for has ended)."""
    mine = positions[rank]
    assert mine is not None and mine.entered is not None
    current = mine.entered

    def never_joins(position: Position) -> bool:
        return position.seq < current.seq or position.seq == current.seq and position.entered is not None \
            and position.entered.op != current.op

    ended = {r: p for r, p in positions.items() if p is not None and p.ended and never_joins(p)}
    if ended:
        return (f"{_ranks(ended)} {_verb(ended, 'has', 'have')} ended; {_lasts(ended)}; {_waiting(positions)}, which "
                "cannot complete")
    if not timed_out:
        return None
    behind = {r: p for r, p in positions.items() if p is None or p.seq < current.seq}
    if behind:
        return (f"{_ranks(behind)} {_verb(behind, 'has', 'have')} not reached collective #{current.seq} for "
                f"{waited:.0f} s; {_lasts(behind)}; {_waiting(positions)}; {HOW_TO_RAISE}")
    level = {r: p.entered for r, p in positions.items() if p is not None and p.seq == current.seq and p.entered}
    if len({c.op for c in level.values()}) > 1:
        groups: dict[str, list[int]] = {}
        for r, collective in level.items():
            groups.setdefault(collective.op, []).append(r)
        by_size = sorted(groups.values(), key=lambda ranks: (-len(ranks), min(ranks)))
        odd = " and ".join(f"{_ranks(ranks)} {_verb(ranks, 'is', 'are')} in {level[ranks[0]]}"
                           for ranks in by_size[1:])
        return (f"{odd} while {_ranks(by_size[0])} {_verb(by_size[0], 'is', 'are')} in {level[by_size[0][0]]}: "
                "the ranks call different collectives")
    ahead = {r: p for r, p in positions.items() if p is not None and p.seq > current.seq}
    if ahead:
        return (f"{'; '.join(f'rank {r} is at {p.entered}' for r, p in ahead.items())}; {_waiting(positions)} for "
                f"{waited:.0f} s: the ranks do not make the same collective calls")
    return (f"every rank is in {current} for {waited:.0f} s and it does not complete (tensors whose shapes or dtypes "
            f"differ between ranks, or the network); {HOW_TO_RAISE}")


def _lasts(positions: Mapping[int, Position | None]) -> str:
    """The latest collective of each rank that the waiting ranks do not meet."""
    one = len(positions) == 1
    parts = []
    for r, position in positions.items():
        subject, possessive = ("it", "its") if one else (f"rank {r}", f"rank {r}'s")
        if position is None:
            parts.append(f"{subject} has not reported to the watchdog yet")
        elif position.entered is None:
            parts.append(f"{subject} made no collective call")
        elif position.inside:
            parts.append(f"{subject} is still in {position.entered}")
        else:
            parts.append(f"{possessive} last collective was {position.entered}")
    return "; ".join(parts)


def _waiting(positions: Mapping[int, Position | None]) -> str:
    inside: dict[Collective, list[int]] = {}
    for r, p in positions.items():
        if p is not None and p.inside and p.entered is not None:
            inside.setdefault(p.entered, []).append(r)
    return " and ".join(f"{_ranks(ranks)} {_verb(ranks, 'waits', 'wait')} in {collective}"
                        for collective, ranks in inside.items())


def _ranks(ranks: Collection[int]) -> str:
    numbers = sorted(ranks)
    return f"rank {numbers[0]}" if len(numbers) == 1 else f"ranks {', '.join(map(str, numbers))}"


def _verb(ranks: Collection[int], one: str, several: str) -> str:
    return one if len(ranks) == 1 else several


_RUNNING: Watchdog | None = None


def start(store: dist.Store, rank: int, world_size: int, timeout: float) -> None:
    """Start this process's watchdog (one per process, as its default process group)."""
    global _RUNNING
    stop()
    _RUNNING = Watchdog(store, rank, world_size, timeout)
    _RUNNING.start()


def stop() -> None:
    """Stop this process's watchdog, if one runs, saying that this rank has ended."""
    global _RUNNING
    if _RUNNING is not None:
        _RUNNING.stop()
        _RUNNING = None
