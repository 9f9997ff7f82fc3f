"""The errors a checkpoint can raise. Each names the file and says what is wrong with it, so a user never has to
decode an unpickling or zip error to learn that a file is damaged or needs an explicit opt-in."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


class CheckpointError(RuntimeError):
    """Base of every checkpoint problem fabric_kit reports; `path` is the offending file or directory."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path!r}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Rebuilt from its two arguments, not from the message: torch.distributed.checkpoint pickles every rank's
        # failure to the others, and the default (the message alone) cannot rebuild it.
        return type(self), (self.path, self.reason)


class CheckpointCorruptedError(CheckpointError):
    """The file (or a file of a directory checkpoint) is truncated, changed or missing: restore from another one."""


class UnsafeCheckpointError(CheckpointError):
    """The safe loader (`weights_only=True`) met an object beyond tensors and plain containers."""


OPT_IN = ("If you trust the checkpoint's source, load it with weights_only=False, e.g. "
          "`fabric.load(path, state, weights_only=False)`")
"""How a refusal of the safe loaders says to opt in."""


def weights_only_refusal(error: BaseException) -> str:
    """The part of torch.load's weights-only refusal that names what was refused, e.g. "Unsupported global: GLOBAL
    os.system was not an allowed global by default" (the whole message is a page of advice); the whole message,
    on one line, when it has no such part."""
    message = " ".join(str(error).split())
    _, found, reason = message.partition("WeightsUnpickler error: ")
    return reason.split(". ")[0] if found else message


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint failed (a full disk, a quota, a read-only file system); the previous checkpoint at
    the path is intact, and nothing half-written is left under its name."""


@contextmanager
def reported_write_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an operating-system failure inside the block, however deep torch buried it (torch's zip writer reports
    a full disk as `unexpected pos 5120 vs 5014`; torch.distributed.checkpoint wraps every rank's failure in a
    `CheckpointException`), into a `CheckpointWriteError` naming `path` and the system's own words, e.g.
    `No space left on device`."""
    try:
        yield
    except CheckpointError:
        raise
    except BaseException as error:
        cause = os_error_behind(error)
        if cause is None or cause.errno is None:
            raise
        raise CheckpointWriteError(path, f"writing it failed: {os.strerror(cause.errno)} (errno {cause.errno}"
                                         f"{_filename(cause)}); the previous checkpoint there, if any, is "
                                         "unchanged") from error


def _filename(error: OSError) -> str:
    return f", at {error.filename!r}" if error.filename else ""


def os_error_behind(error: BaseException) -> OSError | None:
    """The first OSError with an errno in `error`'s chain of causes and contexts, and in the per-rank failures a
    torch.distributed.checkpoint `CheckpointException` carries."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        failures = getattr(current, "failures", None)  # CheckpointException: {rank: exception or traceback}
        if isinstance(failures, dict):
            pending.extend(f for f in failures.values() if isinstance(f, BaseException))
            pending.extend(f[0] for f in failures.values() if isinstance(f, tuple) and f
                           and isinstance(f[0], BaseException))
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None
