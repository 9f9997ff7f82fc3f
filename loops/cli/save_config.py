"""SaveConfigCallback: the resolved config of a LightningCLI run, written next to its logs so the run can be
repeated with `--config <log_dir>/config.yaml`."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from loops.callbacks.callback import Callback

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class SaveConfigCallback(Callback):
    """Writes `config_filename` into `trainer.log_dir` at setup, on rank 0 only. An existing file is an error
    (it belongs to an earlier run) unless `overwrite=True`. Override `save_config` to send the config elsewhere
    too (it runs on rank 0 only, so it must not call collectives)."""

    def __init__(self, parser: Any, config: Any, config_filename: str = "config.yaml", overwrite: bool = False,
                 multifile: bool = False, save_to_log_dir: bool = True) -> None:
        if not save_to_log_dir and type(self).save_config is SaveConfigCallback.save_config:
            raise ValueError("SaveConfigCallback(save_to_log_dir=False) saves nothing; subclass it and override "
                             "save_config to save the config elsewhere")
        self.parser, self.config = parser, config
        self.config_filename, self.overwrite, self.multifile = config_filename, overwrite, multifile
        self.save_to_log_dir = save_to_log_dir
        self.already_saved = False

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if self.save_to_log_dir:
            log_dir = trainer.log_dir
            path = os.path.join(log_dir, self.config_filename)
            exists = trainer.is_global_zero and not self.overwrite and os.path.isfile(path)
            if trainer.strategy.broadcast(exists):  # every rank stops, not only the one that looked
                raise RuntimeError(f"{path} already exists: it holds the config of an earlier run. Delete it, choose "
                                   "another log directory, pass LightningCLI(save_config_kwargs={'overwrite': True}) "
                                   "or turn saving off with LightningCLI(save_config_callback=None)")
            if trainer.is_global_zero:
                os.makedirs(log_dir, exist_ok=True)
                self.parser.save(self.config, path, skip_unset=False, overwrite=self.overwrite,
                                 multifile=self.multifile)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        """Rank 0 only: save the config somewhere besides the log directory (e.g. a logger's hyperparameters,
        `self.parser.dump(self.config)`)."""
