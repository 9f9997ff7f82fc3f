"""This process's record of the collectives that go through fabric_kit, read by the collective watchdog.

Each collective gets a sequence number (1, 2, ... in call order, so the n-th collective of every rank is the same
call when the ranks agree), its kind ("all_reduce", "broadcast", ...), and where the user called it: the first frame
outside fabric_kit, with the fabric_kit entry point it called (`Fabric.all_reduce at train.py:72`). Recording costs
two Python calls per collective (`enter` and the frame lookup in it) and nothing between collectives; the main
thread writes plain attributes that the watchdog's thread reads without a lock.
"""
from __future__ import annotations

import os
import sys
from types import CodeType
from typing import NamedTuple

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_PACKAGE_LENGTH = len(_PACKAGE)

# (sequence number, kind, entry point's code, the user's file, the user's line): a plain tuple, which costs no call.
Record = tuple[int, str, CodeType, str, int]


class Collective(NamedTuple):
    """One recorded collective, in the form the watchdog reports."""

    seq: int
    op: str
    where: str

    @classmethod
    def of(cls, record: Record) -> Collective:
        seq, op, entry, filename, line = record
        entry_name = getattr(entry, "co_qualname", entry.co_name)
        return cls(seq, op, f"{entry_name} at {_short_path(filename)}:{line}")

    def __str__(self) -> str:
        return f"{self.op} #{self.seq} ({self.where})"


class CollectiveLog:
    """`entered`: the newest collective entered; `left`: the sequence number of the newest one that returned (or
    raised). The process is inside `entered` while `left` is smaller than its number."""

    __slots__ = ("entered", "left")

    def __init__(self) -> None:
        self.entered: Record | None = None
        self.left = 0

    def enter(self, op: str) -> int:
        """Record the start of collective `op`, called from the fabric_kit function that runs it; return its sequence
        number, which the caller stores in `left` when the collective returns."""
        frame = sys._getframe(1)
        entry = frame.f_code
        # Slicing rather than str.startswith: no call per frame.
        while frame.f_code.co_filename[:_PACKAGE_LENGTH] == _PACKAGE and frame.f_back is not None:
            entry = frame.f_code
            frame = frame.f_back
        seq = self.entered[0] + 1 if self.entered is not None else 1
        self.entered = (seq, op, entry, frame.f_code.co_filename, frame.f_lineno)
        return seq


def _short_path(filename: str) -> str:
    """The path relative to the working directory when the file lies below it, else as Python recorded it."""
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive, on Windows
        return filename
    return filename if relative.startswith(os.pardir) else relative


LOG = CollectiveLog()
"""The record of this process (one per process, like its default process group)."""
