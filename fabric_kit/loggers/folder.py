"""What the TensorBoard and CSV loggers share: a local folder `<save_dir>/<name>/version_<N>[/<sub_dir>]` whose N
is the next free number, and the agreement on N between processes (only rank 0 looks at the disk)."""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fabric_kit.loggers.logger import Logger
from fabric_kit.rank_zero import global_rank


class FolderLogger(Logger):
    """A logger writing under `save_dir/name/version_N` (or `save_dir/name/<version>` for a string version).

    `root_dir=` is accepted instead of `save_dir` (the keyword of Lightning Fabric's loggers); both mean the folder
    holding every experiment. `name=""` or None puts the versions directly under it.
    """

    def __init__(self, save_dir: str | os.PathLike[str] | None = None, name: str | None = "lightning_logs",
                 version: int | str | None = None, prefix: str = "", sub_dir: str | os.PathLike[str] | None = None,
                 *, root_dir: str | os.PathLike[str] | None = None) -> None:
        folder = save_dir if root_dir is None else root_dir
        if folder is None or (save_dir is not None and root_dir is not None):
            raise ValueError(f"{type(self).__name__} needs the folder to write under: pass save_dir (or root_dir), "
                             f"not both; got save_dir={save_dir!r}, root_dir={root_dir!r}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, (int, str))):
            raise ValueError(f"version={version!r} is not valid; pass None (next free number), an int or a string")
        self._save_dir = os.fspath(folder)
        self._name = name or ""
        self._version = version
        self._prefix = prefix
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._experiment: Any = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int | str:
        """The given version, else one more than the highest `version_N` already under `save_dir/name` (0 if
        none)."""
        if self._version is None:
            self._version = next_version(self._versions_dir)
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        """The folder given (Lightning Fabric's loggers' `root_dir`), the same as `save_dir`."""
        return self._save_dir

    @property
    def _versions_dir(self) -> str:
        """`save_dir/name`, holding the versions' folders; `name` and `save_dir` as a subclass may define them."""
        return os.path.join(self.save_dir, self.name or "")

    @property
    def sub_dir(self) -> str | None:
        return self._sub_dir

    @property
    def log_dir(self) -> str:
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        path = os.path.join(self._versions_dir, version, self.sub_dir or "")
        return os.path.expanduser(os.path.expandvars(path.rstrip(os.sep)))

    def _with_prefix(self, metrics: dict[str, Any], join: str = "-") -> dict[str, Any]:
        if not self._prefix:
            return dict(metrics)
        return {f"{self._prefix}{join}{key}": value for key, value in metrics.items()}

    def __getstate__(self) -> dict[str, Any]:
        # Spawned processes get the settings, not open files: each opens its own writer when it first writes.
        return {**self.__dict__, "_experiment": None}


_VERSION = re.compile(r"version_(\d+)")


def next_version(root_dir: str | os.PathLike[str]) -> int:
    """One more than the highest `version_N` folder in `root_dir`; 0 when there is none (or no `root_dir`)."""
    root = Path(root_dir)
    if not root.is_dir():
        return 0
    found = [int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _VERSION.fullmatch(p.name))]
    return max(found) + 1 if found else 0


def agree_on_versions(loggers: Iterable[Any], broadcast: Callable[[Any], Any]) -> None:
    """Give every process rank 0's version of each FolderLogger: one left to pick its own would, on another
    process, see rank 0's fresh folder and pick the next number. Call it on every process with a `broadcast` that
    returns rank 0's object everywhere, such as `fabric.broadcast`."""
    folders = [logger for logger in loggers if isinstance(logger, FolderLogger)]
    if not folders:
        return
    versions = [logger.version for logger in folders] if global_rank() == 0 else None
    for logger, version in zip(folders, broadcast(versions), strict=True):
        logger._version = version
