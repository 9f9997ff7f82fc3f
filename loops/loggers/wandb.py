"""Weights & Biases through the optional `wandb` package (imported when the logger is built): metrics against
`trainer/global_step`, hyperparameters as the run's config, media helpers, and checkpoints as model artifacts."""
from __future__ import annotations

import importlib.util
import os
from argparse import Namespace
from collections.abc import Mapping
from typing import Any, Literal

from torch import nn

from fabric_kit.loggers import Logger, rank_zero_experiment
from fabric_kit.loggers.params import as_dict, plain
from fabric_kit.rank_zero import rank_zero_only
from loops.loggers.uploads import checkpoint_metadata, checkpoints_to_upload


def _require_wandb() -> None:
    """An ImportError naming the extra when wandb is missing, without paying for its import (about a second)."""
    if importlib.util.find_spec("wandb") is None:
        raise ImportError("WandbLogger needs the wandb package: pip install 'fabric_kit[wandb]'")


class WandbLogger(Logger):
    """Log to a Weights & Biases run; only global rank 0 talks to wandb.

    Args:
        name: the run's display name.
        save_dir: where wandb keeps its local files (`dir=` is the same).
        version / id: a run id to resume (or reuse).
        offline: keep everything local (upload later with `wandb sync`).
        anonymous: allow logging without an account.
        project: the wandb project (default: $WANDB_PROJECT, else "lightning_logs").
        log_model: upload checkpoints as artifacts: True at the end of training (every one as it is written when
            the callback keeps all, save_top_k=-1), "all" as they are written, False never. Not with offline=True.
        experiment: an existing wandb run to log to.
        prefix: put in front of every metric name, joined with "-".
        checkpoint_name: the artifact's name (default "model-<run id>").
        **kwargs: passed to `wandb.init` (tags, group, notes, config, ...).
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(self, name: str | None = None, save_dir: str | os.PathLike | None = ".", version: str | None = None,
                 offline: bool = False, dir: str | os.PathLike | None = None, id: str | None = None,
                 anonymous: bool | None = None, project: str | None = None,
                 log_model: bool | Literal["all"] = False, experiment: Any = None, prefix: str = "",
                 checkpoint_name: str | None = None, **kwargs: Any) -> None:
        _require_wandb()
        if log_model not in (True, False, "all"):
            raise ValueError(f"log_model={log_model!r} is not valid; pass True, False or 'all'")
        if offline and log_model:
            raise ValueError(f"log_model={log_model!r} uploads checkpoints, which offline=True cannot do; set "
                             "offline=False or log_model=False")
        folder = save_dir if save_dir is not None else dir
        self._offline = offline
        self._log_model = log_model
        self._prefix = prefix
        self._experiment = experiment
        self._checkpoint_name = checkpoint_name
        self._uploaded: dict[str, float] = {}
        self._pending_callbacks: dict[int, Any] = {}
        self._init_kwargs: dict[str, Any] = {
            "name": name, "project": project or os.environ.get("WANDB_PROJECT", "lightning_logs"),
            "dir": None if folder is None else os.fspath(folder), "id": version or id, "resume": "allow", **kwargs}
        if anonymous:
            self._init_kwargs["anonymous"] = "allow"

    @property
    def name(self) -> str | None:
        """The project's name (the run's own name is `logger.experiment.name`)."""
        return self._init_kwargs["project"]

    @property
    def version(self) -> str | None:
        """The run's id."""
        return self._experiment.id if self._experiment is not None else self._init_kwargs["id"]

    @property
    def save_dir(self) -> str | None:
        return self._init_kwargs["dir"]

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The wandb run (a no-op stand-in on ranks other than 0), started on first use; a run already started in
        this process is reused."""
        if self._experiment is None:
            import wandb

            if self._offline:
                os.environ["WANDB_MODE"] = "offline"
            if wandb.run is not None:
                self._experiment = wandb.run
            else:
                self._experiment = wandb.init(**self._init_kwargs)
                self._experiment.define_metric("trainer/global_step")
                self._experiment.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        return self._experiment

    def watch(self, model: nn.Module, log: str | None = "gradients", log_freq: int = 100,
              log_graph: bool = True) -> None:
        """Let wandb record the model's gradients and/or parameters every `log_freq` steps."""
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        config = {key: _config_value(value) for key, value in as_dict(params).items()}
        self.experiment.config.update(config, allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        metrics = {f"{self._prefix}{self.LOGGER_JOIN_CHAR}{k}" if self._prefix else k: v for k, v in metrics.items()}
        if step is not None:
            metrics["trainer/global_step"] = step
        self.experiment.log(metrics)

    @rank_zero_only
    def log_table(self, key: str, columns: list[str] | None = None, data: list[list[Any]] | None = None,
                  dataframe: Any = None, step: int | None = None) -> None:
        """A wandb.Table from `columns` + `data` or from a pandas `dataframe`."""
        import wandb

        table = wandb.Table(columns=list(columns) if columns is not None else None, data=data, dataframe=dataframe)
        self.log_metrics({key: table}, step)

    def log_text(self, key: str, columns: list[str] | None = None, data: list[list[str]] | None = None,
                 dataframe: Any = None, step: int | None = None) -> None:
        self.log_table(key, columns, data, dataframe, step)

    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: list[Any]) -> None:
        """Tensors, arrays, PIL images or paths; each keyword is a list with one entry per image (caption=...)."""
        self._log_media(key, "Image", images, step, kwargs)

    def log_audio(self, key: str, audios: list[Any], step: int | None = None, **kwargs: list[Any]) -> None:
        self._log_media(key, "Audio", audios, step, kwargs)

    def log_video(self, key: str, videos: list[Any], step: int | None = None, **kwargs: list[Any]) -> None:
        self._log_media(key, "Video", videos, step, kwargs)

    @rank_zero_only
    def _log_media(self, key: str, kind: str, items: list[Any], step: int | None,
                   kwargs: dict[str, list[Any]]) -> None:
        if not isinstance(items, list):
            raise TypeError(f"log_{kind.lower()}({key!r}) takes a list; got {type(items).__name__}")
        wrong = {name: len(values) for name, values in kwargs.items() if len(values) != len(items)}
        if wrong:
            raise ValueError(f"log_{kind.lower()}({key!r}) got {len(items)} items but keyword lists of lengths "
                             f"{wrong}; give one entry per item")
        import wandb

        media = getattr(wandb, kind)
        self.log_metrics({key: [media(item, **{name: values[i] for name, values in kwargs.items()})
                                for i, item in enumerate(items)]}, step)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._log_model == "all" or (self._log_model is True and getattr(checkpoint_callback, "save_top_k", 1)
                                        == -1):
            self._upload(checkpoint_callback)
        elif self._log_model is True:
            self._pending_callbacks[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Upload the checkpoints `log_model=True` waited for; the run itself stays open (wandb closes it at
        exit, or call `logger.experiment.finish()`), so a later validate/test logs to the same run."""
        if status == "success" and self._experiment is not None:
            for callback in self._pending_callbacks.values():
                self._upload(callback)

    @rank_zero_only
    def _upload(self, callback: Any) -> None:
        import wandb

        for mtime, path, score, _tag in checkpoints_to_upload(callback, self._uploaded):
            name = self._checkpoint_name or f"model-{self.experiment.id}"
            artifact = wandb.Artifact(name=name, type="model", metadata=checkpoint_metadata(callback, path, score))
            artifact.add_file(path, name="model.ckpt")
            aliases = ["latest", "best"] if path == getattr(callback, "best_model_path", None) else ["latest"]
            self.experiment.log_artifact(artifact, aliases=aliases)
            self._uploaded[path] = mtime

    def __getstate__(self) -> dict[str, Any]:
        # A spawned process reattaches by id instead of receiving the live run.
        state = dict(self.__dict__)
        if self._experiment is not None:
            state["_init_kwargs"] = {**self._init_kwargs, "id": self._experiment.id}
        state["_experiment"] = None
        return state


def _config_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _config_value(v) for k, v in value.items()}
    return plain(value)
