"""ModelCheckpoint (Lightning's arguments): save every N epochs, every N training steps or every T of training
time, keep the `save_top_k` best by a monitored metric, and keep `last.ckpt` holding the run's latest state.

Every file is written by `trainer.save_checkpoint` (fabric's atomic, checksummed writes); a file that falls out of
the top-k is removed only after its replacement and `last.ckpt` are in place, so a crash at any instant leaves a
complete set of checkpoints."""
from __future__ import annotations

import math
import os
import re
import shutil
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fabric_kit.filesystem import is_url
from fabric_kit.loggers.params import write_hparams_yaml
from loops.callbacks.checkpoint import Checkpoint

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class ModelCheckpoint(Checkpoint):
    """Files go to `dirpath` (default `<trainer.log_dir>/checkpoints`), named by `filename`, a template over the
    logged metrics plus `epoch` and `step`: "{epoch:02d}-{val_loss:.2f}" gives "epoch=01-val_loss=0.12.ckpt"
    ("01-0.12.ckpt" with `auto_insert_metric_name=False`; default "{epoch}-{step}").

    `save_top_k`: how many to keep (-1 all, 0 none); without `monitor` only 1 (the latest) or -1.
    `save_on_exception`: also save when fit fails with an exception.
    `save_last`: True writes `last.ckpt` at every save and at the end of training; "link" makes it a symbolic link
    to the newest top-k file when there is one (a real file where links fail or no top-k file holds the state).
    Triggers, at most one of: `every_n_epochs` (default 1), `every_n_train_steps`, `train_time_interval`.
    `enable_version_counter`: a name taken by an earlier run gets "-v1", "-v2", ... instead of overwriting it."""

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None, monitor: str | None = None,
                 verbose: bool = False, save_last: bool | str | None = None, save_top_k: int = 1,
                 save_on_exception: bool = False, save_weights_only: bool = False, mode: str = "min",
                 auto_insert_metric_name: bool = True,
                 every_n_train_steps: int | None = None, train_time_interval: timedelta | None = None,
                 every_n_epochs: int | None = None, save_on_train_epoch_end: bool | None = None,
                 enable_version_counter: bool = True) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"ModelCheckpoint(mode={mode!r}) is not valid; accepted: 'min', 'max'")
        if save_last not in (None, True, False, "link"):
            raise ValueError(f"ModelCheckpoint(save_last={save_last!r}) is not valid; accepted: None, False, True, "
                             "'link'")
        if isinstance(save_top_k, bool) or not isinstance(save_top_k, int) or save_top_k < -1:
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k!r}) is not valid; pass -1 (all), 0 or more")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k}) ranks checkpoints by a metric: pass "
                             "monitor=, or save_top_k=-1 to keep every checkpoint")
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"ModelCheckpoint({name}={value!r}) is not valid; pass an int >= 0 or None")
        if train_time_interval is not None and not isinstance(train_time_interval, timedelta):
            raise ValueError(f"ModelCheckpoint(train_time_interval={train_time_interval!r}) is not valid; pass a "
                             "datetime.timedelta or None")
        triggers = {"every_n_train_steps": bool(every_n_train_steps), "every_n_epochs": bool(every_n_epochs),
                    "train_time_interval": train_time_interval is not None}
        if sum(triggers.values()) > 1:
            raise ValueError(f"ModelCheckpoint got {[k for k, on in triggers.items() if on]}; pass at most one of "
                             "every_n_train_steps, every_n_epochs, train_time_interval")
        if dirpath is not None and is_url(dirpath):  # else it would be a local folder named after the URL's scheme
            raise ValueError(f"ModelCheckpoint(dirpath={str(dirpath)!r}): fsspec URLs are not supported (checkpoints "
                             "are written atomically to a local filesystem); pass a local or mounted directory and "
                             "copy the files to remote storage from there")
        self.dirpath = os.path.realpath(os.path.expanduser(dirpath)) if dirpath is not None else None
        self.filename, self.monitor, self.verbose = filename, monitor, verbose
        self.save_last, self.save_top_k, self.save_weights_only = save_last, save_top_k, save_weights_only
        self.save_on_exception = save_on_exception
        self.mode, self.auto_insert_metric_name = mode, auto_insert_metric_name
        self._every_n_train_steps = every_n_train_steps or 0
        self._train_time_interval = train_time_interval
        self._every_n_epochs = every_n_epochs if every_n_epochs is not None else int(not any(triggers.values()))
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        self.best_k_models: dict[str, Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.best_model_path = ""
        self.best_model_score: Tensor | None = None
        self.last_model_path = ""
        self.current_score: Tensor | None = None
        self._last_global_step_saved = -1  # the step of the latest save (or top-k check)
        self._last_step_in_last = -1  # the step whose state last.ckpt holds
        self._last_time_checked: float | None = None
        self._validated = True  # False from fit's start until its first validation ends
        self._save_at_validation = False  # a step/time save waiting for the monitored metric

    @property
    def every_n_epochs(self) -> int:
        return self._every_n_epochs

    @property
    def every_n_train_steps(self) -> int:
        return self._every_n_train_steps

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode,
                                        every_n_train_steps=self._every_n_train_steps,
                                        every_n_epochs=self._every_n_epochs,
                                        train_time_interval=self._train_time_interval)

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        dirpath = self.dirpath or os.path.join(trainer.log_dir, "checkpoints")
        self.dirpath = trainer.strategy.broadcast(dirpath) if trainer.world_size > 1 else dirpath
        if stage == "fit" and trainer.is_global_zero and self.save_top_k != 0 and os.path.isdir(self.dirpath) \
                and os.listdir(self.dirpath) and not self.best_k_models and not self.best_model_path:
            warnings.warn(f"Checkpoint directory {self.dirpath} exists and is not empty; files of this run get "
                          "'-vN' suffixes where names collide" if self._enable_version_counter else
                          f"Checkpoint directory {self.dirpath} exists and is not empty", stacklevel=2)

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._last_time_checked = time.monotonic()
        self._validated = False  # a monitored metric missing until then is awaited, not an error

    # -- when ---------------------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._skip(trainer):
            return
        due = bool(self._every_n_train_steps) and trainer.global_step % self._every_n_train_steps == 0
        if self._train_time_interval is not None:
            now = time.monotonic()
            time_due = now - (self._last_time_checked or now) >= self._train_time_interval.total_seconds()
            if trainer.world_size > 1:  # clocks differ across processes: rank 0 decides for all
                time_due = trainer.strategy.broadcast(time_due)
            if time_due:
                self._last_time_checked, due = now, True
        if not due:
            return
        if self.monitor is not None and (self.monitor not in self._candidates(trainer) or (
                not self._saves_on_train_epoch_end(trainer) and trainer.fit_loop.validation_follows(batch_idx))):
            # A validation metric not logged yet, or about to change: the save waits for the validation's end
            # (saving after validations, as Lightning does; Lightning checks only an epoch's last batch).
            self._save_at_validation = True
            return
        self._save(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        if self._saves_on_train_epoch_end(trainer) and not self._skip(trainer) and self._epoch_due(trainer):
            self._save(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: Any) -> None:
        self._validated = self._validated or not trainer.sanity_checking
        if self._saves_on_train_epoch_end(trainer) or self._skip(trainer):
            return
        if self._save_at_validation or self._epoch_due(trainer):
            self._save_at_validation = False
            self._save(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        """Training stopped between saves (max_steps, a step trigger, early stopping): last.ckpt gets the end."""
        if self.save_last and self._last_step_in_last != trainer.global_step and not trainer.fast_dev_run:
            self._save_last(trainer, self._candidates(trainer))

    def on_exception(self, trainer: Trainer, pl_module: Any, exception: BaseException) -> None:
        """With `save_on_exception=True`: the state at the failure, under the usual name (and last.ckpt)."""
        if not self.save_on_exception or self.dirpath is None or self._skip(trainer):
            return
        metrics = self._candidates(trainer)
        path = self._path(trainer, metrics)
        self._write(trainer, path)
        if self.save_last:
            self._save_last(trainer, metrics)
        if trainer.is_global_zero:
            print(f"{type(exception).__name__} raised ({exception}); saved checkpoint {path}")

    def on_preempt(self, trainer: Trainer, pl_module: Any) -> None:
        """Preempted: `last.ckpt` gets the state at this step boundary, whatever `save_last` says, so that
        `fit(ckpt_path="last")` continues the run from it."""
        self._save_last(trainer, self._candidates(trainer))

    def _saves_on_train_epoch_end(self, trainer: Trainer) -> bool:
        """At the training epoch's end (which sees that epoch's validation too) unless validation runs several
        times an epoch or not every epoch: then after each validation."""
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        if trainer.check_val_every_n_epoch != 1:
            return False
        return not any(n > 0 for n in trainer.num_val_batches) or trainer.val_check_interval == 1.0

    def _epoch_due(self, trainer: Trainer) -> bool:
        every = self._every_n_epochs
        return bool(every) and (trainer.current_epoch + 1) % every == 0

    def _skip(self, trainer: Trainer) -> bool:
        return trainer.state.fn != "fit" or trainer.sanity_checking or bool(trainer.fast_dev_run) \
            or self._last_global_step_saved == trainer.global_step

    # -- what ---------------------------------------------------------------------------------------------------
    def _candidates(self, trainer: Trainer) -> dict[str, Any]:
        metrics = dict(trainer.callback_metrics)
        metrics.update(epoch=torch.tensor(trainer.current_epoch), step=torch.tensor(trainer.global_step))
        return metrics

    def _save(self, trainer: Trainer) -> None:
        """Top-k (or the latest) first, then last.ckpt, then remove what fell out: never fewer files than before.
        A monitored metric not logged yet is an error once validation has run; before, a warning, and no save."""
        metrics = self._candidates(trainer)
        if self.monitor is not None and self.monitor not in metrics:
            logged = sorted(k for k in metrics if k not in ("epoch", "step"))
            message = (f"ModelCheckpoint(monitor={self.monitor!r}) found no such metric; logged metrics: {logged}. "
                       f"Log it with self.log({self.monitor!r}, value)")
            if self._validated:
                raise KeyError(message)
            warnings.warn(f"{message}; no checkpoint is saved until it is logged", stacklevel=2)
            return
        self._last_global_step_saved = trainer.global_step
        fallen: list[str] = []
        saved = ""
        if self.monitor is not None:
            saved, fallen = self._save_top_k(trainer, metrics, self.monitor)
        elif self.save_top_k != 0:
            saved = self._path(trainer, metrics, replacing=self.best_model_path if self.save_top_k == 1 else "")
            if self.save_top_k == 1 and self.best_model_path and self.best_model_path != saved:
                fallen.append(self.best_model_path)
            self.best_model_path = saved
            self._write(trainer, saved)
        if self.save_last:
            self._save_last(trainer, metrics, saved)
        for path in fallen:
            self._remove(trainer, path)

    def _save_top_k(self, trainer: Trainer, metrics: dict[str, Any], monitor: str) -> tuple[str, list[str]]:
        """(the new file or "", files that fell out of the top-k by `monitor`)."""
        current = metrics[monitor].detach().float().cpu().squeeze()
        if torch.isnan(current):  # ranks below every number
            current = torch.tensor(math.inf if self.mode == "min" else -math.inf)
        self.current_score = current
        if self.save_top_k == 0:
            return "", []
        full = self.save_top_k != -1 and len(self.best_k_models) >= self.save_top_k
        if full and not self._better(current, self.best_k_models[self.kth_best_model_path]):
            if self.verbose:
                trainer.print(f"Epoch {trainer.current_epoch}, global step {trainer.global_step}: {self.monitor!r} "
                              f"was not in top {self.save_top_k}")
            return "", []
        replaced = self.kth_best_model_path if full else ""
        if full:
            del self.best_k_models[replaced]
        path = self._path(trainer, metrics, replacing=replaced)
        self.best_k_models[path] = current
        # Ranked before writing, so the file records itself among the best. Among equal scores the earlier file
        # ranks higher (the newest is the first to go).
        score = {p: s.item() for p, s in self.best_k_models.items()}
        worst = (max if self.mode == "min" else min)(reversed(list(score)), key=score.__getitem__)
        best = (min if self.mode == "min" else max)(score, key=score.__getitem__)
        self.kth_best_model_path, self.kth_value = worst, self.best_k_models[worst]
        self.best_model_path, self.best_model_score = best, self.best_k_models[best]
        self._write(trainer, path)
        if self.verbose:
            trainer.print(f"Epoch {trainer.current_epoch}, global step {trainer.global_step}: {self.monitor!r} "
                          f"reached {current.item():.5f} (best {self.best_model_score.item():.5f}), saving model "
                          f"to {path!r} as top {self.save_top_k}")
        return path, [replaced] if replaced and replaced != path else []

    def to_yaml(self, filepath: str | Path | None = None) -> None:
        """Write `best_k_models` (each kept file's path and its score, as a number) to a YAML file, by default
        `<dirpath>/best_k_models.yaml`."""
        if filepath is None:
            if self.dirpath is None:
                raise ValueError("ModelCheckpoint.to_yaml() needs a filepath: dirpath is not known before fit starts")
            filepath = os.path.join(self.dirpath, "best_k_models.yaml")
        write_hparams_yaml(filepath, {path: score.item() for path, score in self.best_k_models.items()})

    def _write(self, trainer: Trainer, path: str) -> None:
        """Every file goes through the trainer's crash-safe save; loggers that upload checkpoints hear of it."""
        trainer.save_checkpoint(path, self.save_weights_only)
        for logger in trainer.loggers:
            logger.after_save_checkpoint(self)

    def _better(self, current: Tensor, reference: Tensor) -> bool:
        return bool(current < reference) if self.mode == "min" else bool(current > reference)

    def _save_last(self, trainer: Trainer, metrics: dict[str, Any], newest: str = "") -> None:
        path = self._path(trainer, metrics, replacing=self.last_model_path, name=self.CHECKPOINT_NAME_LAST)
        previous, self.last_model_path = self.last_model_path, path
        self._last_step_in_last = trainer.global_step
        if self.save_last == "link" and newest:
            self._link(trainer, newest, path)
        else:
            self._write(trainer, path)
        if previous and previous != path:
            self._remove(trainer, previous)

    def _link(self, trainer: Trainer, target: str, link: str) -> None:
        """Point `link` at `target` by one atomic rename of a fresh link; a copy-free full save where the file
        system refuses links."""
        linked = True
        if trainer.is_global_zero:
            staged = os.path.join(os.path.dirname(link), f".{os.path.basename(link)}.link")
            try:
                if os.path.lexists(staged):
                    os.remove(staged)
                os.symlink(os.path.relpath(target, os.path.dirname(link)), staged)
                os.replace(staged, link)
            except OSError:
                linked = False
        if trainer.world_size > 1:
            linked = trainer.strategy.broadcast(linked)
        if not linked:
            self._write(trainer, link)

    def _path(self, trainer: Trainer, metrics: dict[str, Any], replacing: str = "", name: str | None = None) -> str:
        """A file not yet there (one from another run gets "-v1", "-v2", ...), unless it is the file this save
        replaces; rank 0 decides, so every process writes to the same path."""
        path = self.format_checkpoint_name(metrics, name)
        version = self.STARTING_VERSION
        while self._enable_version_counter and os.path.lexists(path) and path != replacing:
            path = self.format_checkpoint_name(metrics, name, ver=version)
            version += 1
        return trainer.strategy.broadcast(path) if trainer.world_size > 1 else path

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None,
                               ver: int | None = None) -> str:
        """The path for `metrics` (with "epoch" and "step"): `filename` (default: this callback's template) filled
        in, "-v{ver}" appended when given, under `dirpath`."""
        name = self._fill(filename or self.filename or "{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}", metrics)
        if ver is not None:
            name += f"{self.CHECKPOINT_JOIN_CHAR}v{ver}"
        name += self.FILE_EXTENSION
        return os.path.join(self.dirpath, name) if self.dirpath else name

    def _fill(self, template: str, metrics: dict[str, Any]) -> str:
        def fill(match: re.Match) -> str:
            key, spec = match.group(1), match.group(2) or ""
            value = metrics.get(key, 0)
            if isinstance(value, Tensor):
                value = value.item()
            text = format(value, spec[1:]) if spec else str(value)
            return f"{key}{self.CHECKPOINT_EQUALS_CHAR}{text}" if self.auto_insert_metric_name else text

        return re.sub(r"\{([^{}:]+)(:[^{}]*)?\}", fill, template)

    def _remove(self, trainer: Trainer, path: str) -> None:
        """Only files of this callback's folder that it no longer tracks: a path carried over from a run saving
        elsewhere (resumed with another dirpath), or the file being resumed from, stays."""
        if not trainer.is_global_zero or self.dirpath is None or path in self.best_k_models \
                or path == self.last_model_path \
                or not os.path.lexists(path) or Path(self.dirpath).absolute() not in Path(path).absolute().parents:
            return
        resumed_from = getattr(trainer, "ckpt_path", None)
        if resumed_from and os.path.exists(resumed_from) and os.path.samefile(resumed_from, path):
            return
        if os.path.isdir(path) and not os.path.islink(path):  # a sharded checkpoint
            shutil.rmtree(path)
        else:
            os.remove(path)

    # -- state --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best_model_score": self.best_model_score,
                "best_model_path": self.best_model_path, "current_score": self.current_score,
                "dirpath": self.dirpath, "best_k_models": dict(self.best_k_models),
                "kth_best_model_path": self.kth_best_model_path, "kth_value": self.kth_value,
                "last_model_path": self.last_model_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resuming into the same `dirpath` keeps ranking against the saved top-k; another dirpath starts a fresh
        ranking (only `best_model_path` carries over)."""
        if self.dirpath is None or state_dict.get("dirpath") == self.dirpath:
            self.best_model_score = state_dict["best_model_score"]
            self.best_k_models = {path: torch.as_tensor(score) for path, score in state_dict["best_k_models"].items()}
            self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            self.last_model_path = state_dict["last_model_path"]
            self.current_score = state_dict["current_score"]
        else:
            warnings.warn(f"ModelCheckpoint dirpath changed from {state_dict.get('dirpath')!r} to "
                          f"{self.dirpath!r}: the saved top-k ranking is not restored", stacklevel=2)
        self.best_model_path = state_dict["best_model_path"]
