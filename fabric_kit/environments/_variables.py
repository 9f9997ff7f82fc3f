"""Typed reads of scheduler variables, so a malformed value fails with its name and value instead of a bare
``int()`` traceback deep inside process-group setup."""
from __future__ import annotations

import os


def require(name: str) -> str:
    """The value of ``name``; when unset, the error says which variable the launcher failed to provide."""
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"Environment variable {name} is not set; expected the launcher to set it.")
    return value


def read_int(name: str, default: int | None = None) -> int:
    """``int(os.environ[name])``, or ``default`` when unset (required when ``default`` is None)."""
    value = os.environ.get(name)
    if value is None:
        if default is None:
            return to_int(name, require(name))
        return default
    return to_int(name, value)


def to_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Environment variable {name}={value!r} is not an integer; expected a whole number.") from None

