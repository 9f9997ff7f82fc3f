"""argparse with one-line errors: a bad flag should read as one sentence, not a usage dump or a traceback."""
from __future__ import annotations

import argparse
from typing import NoReturn


class UsageError(ValueError):
    """A flag combination argparse cannot check by itself (e.g. ``--node-rank`` beyond ``--num-nodes``)."""


class OneLineParser(argparse.ArgumentParser):
    """Prints ``<prog>: error: <message>`` on one line and exits with status 2, like every argparse error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def positive_int(text: str) -> int:
    return _bounded_int(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _bounded_int(text, 0, "an integer >= 0")


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number >= 0")
    return value


def port(text: str) -> int:
    value = _bounded_int(text, 1, "a port number 1..65535")
    if value > 65535:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a port number 1..65535")
    return value


def _bounded_int(text: str, lowest: int, accepted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = lowest - 1
    if value < lowest:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {accepted}")
    return value
