"""ModelCheckpoint (minimal, Lightning's arguments): save after validation (or each training epoch when there is
no validation), keep the `save_top_k` best by a monitored metric, optionally `last.ckpt`."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from loops.callbacks.checkpoint import Checkpoint


class ModelCheckpoint(Checkpoint):
    """Files go to `dirpath` (default `<trainer.log_dir>/checkpoints`), named by `filename` (default
    "{epoch}-{step}", e.g. "epoch=2-step=300.ckpt")."""

    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None, monitor: str | None = None,
                 verbose: bool = False, save_last: bool | None = None, save_top_k: int = 1,
                 save_weights_only: bool = False, mode: str = "min", auto_insert_metric_name: bool = True,
                 every_n_train_steps: int | None = None, every_n_epochs: int | None = None,
                 save_on_train_epoch_end: bool | None = None, enable_version_counter: bool = True) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"ModelCheckpoint(mode={mode!r}) is not valid; accepted: 'min', 'max'")
        if save_top_k < -1:
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k}) is not valid; pass -1 (all), 0 or more")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k}) ranks checkpoints by a metric: pass monitor=")
        self.dirpath = str(dirpath) if dirpath is not None else None
        self.filename, self.monitor, self.verbose = filename, monitor, verbose
        self.save_last, self.save_top_k, self.save_weights_only = save_last, save_top_k, save_weights_only
        self.mode, self.auto_insert_metric_name = mode, auto_insert_metric_name
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_n_epochs = every_n_epochs if every_n_epochs is not None else (0 if every_n_train_steps else 1)
        self.save_on_train_epoch_end = save_on_train_epoch_end
        self.enable_version_counter = enable_version_counter
        self.best_k_models: dict[str, float] = {}
        self.best_model_path = ""
        self.best_model_score: torch.Tensor | None = None
        self.last_model_path = ""
        self.current_score: torch.Tensor | None = None
        self._last_step_saved = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode,
                                        every_n_train_steps=self.every_n_train_steps,
                                        every_n_epochs=self.every_n_epochs)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.log_dir, "checkpoints")

    # -- when ---------------------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0 and self._active(trainer):
            self._save(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._save(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._save(trainer)

    def _on_train_epoch_end(self, trainer: Any) -> bool:
        if self.save_on_train_epoch_end is not None:
            return self.save_on_train_epoch_end
        return not any(n > 0 for n in trainer.num_val_batches)

    def _epoch_due(self, trainer: Any) -> bool:
        return bool(self.every_n_epochs) and (trainer.current_epoch + 1) % self.every_n_epochs == 0 \
            and self._active(trainer)

    def _active(self, trainer: Any) -> bool:
        return trainer.state.fn == "fit" and not trainer.sanity_checking and not trainer.fast_dev_run \
            and trainer.global_step != self._last_step_saved

    # -- what ---------------------------------------------------------------------------------------------------
    def _save(self, trainer: Any) -> None:
        self._last_step_saved = trainer.global_step
        metrics = dict(trainer.callback_metrics)
        metrics.update(epoch=torch.tensor(trainer.current_epoch), step=torch.tensor(trainer.global_step))
        if self.monitor is not None:
            if self.monitor not in metrics:
                raise KeyError(f"ModelCheckpoint(monitor={self.monitor!r}) found no such metric; logged metrics: "
                               f"{sorted(k for k in metrics if k not in ('epoch', 'step'))}. Log it with "
                               f"self.log({self.monitor!r}, value)")
            self.current_score = metrics[self.monitor].detach().float().cpu()
            self._save_top_k(trainer, metrics)
        elif self.save_top_k != 0:
            previous = self.best_model_path
            path = self._path(trainer, metrics, replacing=previous if self.save_top_k == 1 else None)
            self.best_model_path = path
            trainer.save_checkpoint(path, self.save_weights_only)
            if self.save_top_k == 1 and previous and previous != path:
                self._remove(trainer, previous)
        if self.save_last:
            self.last_model_path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
            trainer.save_checkpoint(self.last_model_path, self.save_weights_only)

    def _save_top_k(self, trainer: Any, metrics: dict[str, Any]) -> None:
        score = float(self.current_score)
        if self.save_top_k == 0:
            return
        replaced = None
        if self.save_top_k != -1 and len(self.best_k_models) >= self.save_top_k:
            replaced = self._worst()
            worst = self.best_k_models[replaced]
            if not (score < worst if self.mode == "min" else score > worst):
                return
            del self.best_k_models[replaced]
        path = self._path(trainer, metrics, replacing=replaced)
        self.best_k_models[path] = score  # before saving, so the file records itself among the best
        best = (min if self.mode == "min" else max)(self.best_k_models, key=self.best_k_models.get)
        self.best_model_path, self.best_model_score = best, torch.tensor(self.best_k_models[best])
        trainer.save_checkpoint(path, self.save_weights_only)
        if replaced is not None and replaced != path:
            self._remove(trainer, replaced)
        if self.verbose:
            trainer.print(f"Epoch {trainer.current_epoch}, step {trainer.global_step}: {self.monitor!r} reached "
                          f"{score:.5f}; saved {path}")

    def _worst(self) -> str:
        return (max if self.mode == "min" else min)(self.best_k_models, key=self.best_k_models.get)

    def _path(self, trainer: Any, metrics: dict[str, Any], replacing: str | None = None) -> str:
        """A file not yet there (an existing one from another run gets "-v1", "-v2", ...), unless it is the file
        this save replaces; rank 0 decides, so every process writes to the same path."""
        name = self.format_checkpoint_name(metrics)
        path = os.path.join(self.dirpath, name + self.FILE_EXTENSION)
        version = 1
        while self.enable_version_counter and os.path.exists(path) and path != replacing:
            path = os.path.join(self.dirpath, f"{name}-v{version}{self.FILE_EXTENSION}")
            version += 1
        return trainer.strategy.broadcast(path) if trainer.world_size > 1 else path

    def format_checkpoint_name(self, metrics: dict[str, Any]) -> str:
        """"{epoch}-{val_loss:.2f}" becomes "epoch=3-val_loss=0.12" (just "3-0.12" without auto names)."""
        template = self.filename or "{epoch}-{step}"

        def fill(match: re.Match) -> str:
            key, fmt = match.group(1), match.group(2) or ""
            value = metrics.get(key, 0)
            value = value.item() if isinstance(value, torch.Tensor) else value
            text = format(value, fmt.lstrip(":")) if fmt else str(value)
            return f"{key}={text}" if self.auto_insert_metric_name else text

        return re.sub(r"\{([^{}:]+)(:[^{}]*)?\}", fill, template)

    @staticmethod
    def _remove(trainer: Any, path: str) -> None:
        if trainer.is_global_zero and os.path.exists(path):
            os.remove(path)

    # -- state --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best_model_score": self.best_model_score,
                "best_model_path": self.best_model_path, "current_score": self.current_score,
                "dirpath": self.dirpath, "best_k_models": dict(self.best_k_models),
                "last_model_path": self.last_model_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath") == self.dirpath or self.dirpath is None:
            self.best_model_score = state_dict["best_model_score"]
            self.best_model_path = state_dict["best_model_path"]
            self.best_k_models = dict(state_dict["best_k_models"])
            self.last_model_path = state_dict["last_model_path"]
            self.current_score = state_dict["current_score"]
