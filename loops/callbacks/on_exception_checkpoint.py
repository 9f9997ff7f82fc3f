"""OnExceptionCheckpoint: when a stage fails with an exception (KeyboardInterrupt included), save the state at
that moment to `<dirpath>/<filename>.ckpt`, to resume from with `ckpt_path`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loops.callbacks.checkpoint import Checkpoint

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class OnExceptionCheckpoint(Checkpoint):
    """A fit that ends without an exception removes an older file of this name, which no longer holds the
    newest state. With several processes every one must reach the exception (a failure on one rank alone
    cannot save: saving is collective)."""

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | Path, filename: str = "on_exception") -> None:
        if not filename:
            raise ValueError("OnExceptionCheckpoint(filename='') is not valid; pass a file name without extension")
        self.dirpath, self.filename = str(dirpath), filename
        self._failed = False

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        self._failed = False

    def on_exception(self, trainer: Trainer, pl_module: Any, exception: BaseException) -> None:
        self._failed = True
        trainer.save_checkpoint(self.ckpt_path)

    def teardown(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if stage == "fit" and not self._failed and trainer.is_global_zero and os.path.isfile(self.ckpt_path):
            os.remove(self.ckpt_path)
