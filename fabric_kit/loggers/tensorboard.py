"""TensorBoard event files through tensorboardX (imported on first write, so `import fabric_kit` stays light):
scalars, hyperparameters (the HPARAMS tab), the model graph, and anything else through `logger.experiment`, the
SummaryWriter itself (`add_image`, `add_histogram`, ...)."""
from __future__ import annotations

import importlib.util
import os
import warnings
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.nn import Module

from fabric_kit.collections import move_to_device
from fabric_kit.loggers.folder import FolderLogger
from fabric_kit.loggers.logger import rank_zero_experiment
from fabric_kit.loggers.params import as_dict, flatten, plain, write_hparams_yaml
from fabric_kit.rank_zero import rank_zero_only


def require_tensorboardx() -> None:
    """An ImportError naming the extra to install when tensorboardX is missing (without importing it)."""
    if importlib.util.find_spec("tensorboardX") is None:
        raise ImportError("TensorBoardLogger writes with tensorboardX, which is not installed: "
                          "pip install 'fabric_kit[tensorboard]'")


class TensorBoardLogger(FolderLogger):
    """Write TensorBoard event files to `save_dir/name/version_N[/sub_dir]`; only global rank 0 writes.

    Args:
        save_dir: the folder holding every experiment (`root_dir=` is accepted as well).
        name: the experiment's folder ("lightning_logs"); "" or None writes versions directly in `save_dir`.
        version: None picks the next free `version_N`; an int N gives `version_N`; a string is the folder name.
        log_graph: write the model's graph when the Trainer starts (needs `model.example_input_array` and the
            tensorboard package, which traces the model); `log_graph(model, input_array)` writes it without.
        default_hp_metric: log a placeholder `hp_metric` = -1 with the hyperparameters, so TensorBoard's HPARAMS
            tab lists the run before a real metric exists.
        prefix: put in front of every metric name, joined with "-".
        sub_dir: a folder inside the version's folder for the event files.
        **kwargs: passed to tensorboardX's SummaryWriter (`flush_secs`, `max_queue`, ...).
    """

    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, save_dir: str | os.PathLike[str] | None = None, name: str | None = "lightning_logs",
                 version: int | str | None = None, log_graph: bool = False, default_hp_metric: bool = True,
                 prefix: str = "", sub_dir: str | os.PathLike[str] | None = None, *,
                 root_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        require_tensorboardx()  # reported where the logger is built, imported at the first write
        super().__init__(save_dir, name, version, prefix, sub_dir, root_dir=root_dir)
        if log_graph and importlib.util.find_spec("tensorboard") is None:
            warnings.warn("TensorBoardLogger(log_graph=True) writes no graph: tracing the model for TensorBoard "
                          "needs the tensorboard package (pip install tensorboard)", stacklevel=2)
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._writer_kwargs = kwargs
        self.hparams: dict[str, Any] = {}

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The tensorboardX SummaryWriter (a no-op stand-in on ranks other than 0), created on first use."""
        if self._experiment is None:
            from tensorboardX import SummaryWriter

            self._experiment = SummaryWriter(logdir=self.log_dir, **self._writer_kwargs)
            self._experiment.log_dir = self._experiment.logdir  # the name torch's SummaryWriter (Lightning's) has
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """One scalar per key; a dict value becomes a group of scalars (`add_scalars`)."""
        for key, value in self._with_prefix(dict(metrics)).items():
            if isinstance(value, Tensor):
                value = value.item()
            if isinstance(value, Mapping):
                self.experiment.add_scalars(key, dict(value), step)
            elif isinstance(value, (int, float)):
                self.experiment.add_scalar(key, value, step)
            else:
                raise ValueError(f"TensorBoardLogger.log_metrics got {key!r} = {value!r} ({type(value).__name__}); "
                                 "accepted: a number, a one-element tensor or a dict of numbers")

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, metrics: Any = None,
                        step: int | None = None) -> None:
        """Record hyperparameters for the HPARAMS tab and `hparams.yaml`. `metrics` (a dict, or one number for
        `hp_metric`) ties them to results; without it `hp_metric` = -1 is logged unless `default_hp_metric=False`."""
        from tensorboardX.summary import hparams

        params = as_dict(params)
        self.hparams.update(params)
        if metrics is None:
            metrics = {"hp_metric": -1} if self._default_hp_metric else {}
        elif not isinstance(metrics, Mapping):
            metrics = {"hp_metric": metrics}
        if not metrics:
            return
        self.log_metrics(metrics, step)
        flat = {key: _hparam_value(value) for key, value in flatten(params).items()}
        writer = self.experiment._get_file_writer()
        for summary in hparams(flat, dict(metrics)):
            writer.add_summary(summary, step)

    @rank_zero_only
    def log_graph(self, model: Module, input_array: Any = None) -> None:
        """Write the model's graph traced with `input_array`, anywhere (a Trainer is not needed). Without one, with
        `model.example_input_array` when the logger was built with `log_graph=True` (the Trainer calls this as
        each stage starts)."""
        if input_array is None:
            if not self._log_graph:
                return
            input_array = getattr(model, "example_input_array", None)
        if importlib.util.find_spec("tensorboard") is None:  # warned at construction with log_graph=True
            if not self._log_graph:
                warnings.warn("TensorBoardLogger.log_graph writes no graph: tracing the model for TensorBoard needs "
                              "the tensorboard package (pip install tensorboard)", stacklevel=2)
            return
        if not isinstance(input_array, (Tensor, tuple)):
            warnings.warn("TensorBoardLogger.log_graph has no graph to write: pass input_array or set "
                          "model.example_input_array (a tensor or a tuple of forward's arguments); got "
                          f"{type(input_array).__name__}", stacklevel=2)
            return
        parameter = next(model.parameters(), None)
        if parameter is not None:
            input_array = move_to_device(input_array, parameter.device)
        self.experiment.add_graph(model, input_array)

    @rank_zero_only
    def save(self) -> None:
        """Flush the event file; write `hparams.yaml` once the version's folder exists."""
        if self._experiment is not None:
            self._experiment.flush()
        hparams_file = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        if os.path.isdir(self.log_dir) and not os.path.isfile(hparams_file):
            write_hparams_yaml(hparams_file, self.hparams)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush and close the event file (its writer thread ends; a later write opens a new file)."""
        if self._experiment is not None:
            self._experiment.flush()
            self._experiment.close()
            self._experiment = None
        if status == "success":
            self.save()


def _hparam_value(value: Any) -> Any:
    """TensorBoard's HPARAMS tab shows numbers, strings and bools; anything else is shown as its str()."""
    value = plain(value)
    return value if isinstance(value, (bool, int, float, str)) else str(value)
