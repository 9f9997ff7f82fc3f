"""The profiler interface the Trainer calls (Lightning's): `start(action)` / `stop(action)` around each profiled
action, `summary()` the report, `describe()` writing it when a stage ends.

Where a report goes: with a `filename`, to `<dirpath>/<stage>-<filename>[-<local rank>].txt` (appended; the rank
only when there are several processes), `dirpath` defaulting to the Trainer's `log_dir`; without one it is printed
by local rank 0 (Lightning logs it at INFO level)."""
from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loops.core.module import LightningModule

_UNSAFE = re.compile(r"[\\/:*?\"<>|\n\r\t]+")


class Profiler(ABC):
    """Subclass it for a profiler of your own: define `start` and `stop`, and `summary` for a report.

    Args:
        dirpath: where the report (and any trace) is written; None: the Trainer's `log_dir`.
        filename: the report's file name, without extension (".txt" is added after the stage and rank); None:
            the report is printed instead.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self._stage: str | None = None
        self._local_rank: int | None = None
        self._output_file: IO[str] | None = None
        self._lightning_module: LightningModule | None = None  # set by the Trainer as a stage starts

    @abstractmethod
    def start(self, action_name: str) -> None:
        """Start recording `action_name`."""

    @abstractmethod
    def stop(self, action_name: str) -> None:
        """Stop recording `action_name`, which `start` began."""

    def summary(self) -> str:
        """The report of what was recorded ("" for none)."""
        return ""

    @contextmanager
    def profile(self, action_name: str) -> Iterator[str]:
        """Record the block as `action_name`: `with profiler.profile("load data"): ...`."""
        self.start(action_name)
        try:
            yield action_name
        finally:
            self.stop(action_name)

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        """Called by the Trainer as a stage starts: the stage ("fit", "validate", ...), this process's local rank
        (None on one process) and the log directory, which becomes `dirpath` unless one was given."""
        self._stage, self._local_rank = stage, local_rank
        self.dirpath = self.dirpath or log_dir

    def describe(self) -> None:
        """Write the report (see the module docstring), then `teardown`. Callable directly when the profiler is
        used without a Trainer."""
        summary = self.summary()
        if summary:
            self._write(summary)
        self.teardown(self._stage)

    def teardown(self, stage: str | None) -> None:
        """Close the report file."""
        if self._output_file is not None:
            self._output_file.close()
            self._output_file = None

    @property
    def local_rank(self) -> int:
        return 0 if self._local_rank is None else self._local_rank

    def _write(self, text: str) -> None:
        write: Callable[[str], Any]
        if self.filename and self.dirpath:
            if self._output_file is None:
                os.makedirs(self.dirpath, exist_ok=True)
                self._output_file = open(os.path.join(self.dirpath, self._prepare_filename()), "a")
            write = self._output_file.write
        elif self._local_rank in (None, 0):
            write = print
        else:
            return
        write(text)
        if self._output_file is not None:
            self._output_file.flush()

    def _prepare_filename(self, action_name: str | None = None, extension: str = ".txt") -> str:
        """`<stage>-<filename>-<local rank>-<action>` with the parts that are set, path-unsafe characters as "_"
        (Lightning's names)."""
        parts = [self._stage, self.filename, None if self._local_rank is None else str(self._local_rank),
                 action_name]
        base = _UNSAFE.sub("_", "-".join(p for p in parts if p)).strip()
        return (base or "profile") + extension

    def _stats_to_str(self, stats: dict[str, str]) -> str:
        """A report of one text block per action, headed by the stage and rank."""
        lines = [f"{self._stage.upper()} Profiler Report" if self._stage else "Profiler Report"]
        rank = "" if self._local_rank is None else f" rank: {self._local_rank}"
        for action, text in stats.items():
            lines += [f"Profile stats for: {action}{rank}", text]
        return os.linesep.join(lines)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (a spawned process receives the Trainer): the open report file stays behind."""
        return {**vars(self), "_output_file": None}


class PassThroughProfiler(Profiler):
    """Records nothing: what `trainer.profiler` is with `Trainer(profiler=None)`. The Trainer then calls no
    profiler at all on its per-batch path; only a few per-stage actions (the epoch, checkpoint saves) pass through
    this one."""

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass
