"""Metrics to `metrics.csv` (one row per `log_metrics` call, one column per key ever logged) and hyperparameters
to `hparams.yaml`, with nothing beyond the base install: the logger that always works."""
from __future__ import annotations

import csv
import os
import warnings
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from fabric_kit.loggers.folder import FolderLogger
from fabric_kit.loggers.logger import rank_zero_experiment
from fabric_kit.loggers.params import as_dict, write_hparams_yaml
from fabric_kit.rank_zero import rank_zero_only


class CSVWriter:
    """Rows kept in memory until `save()`; a key first seen later rewrites the file with the wider header."""

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self.metrics: list[dict[str, Any]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        if os.path.isfile(self.metrics_file_path):
            warnings.warn(f"{self.metrics_file_path} exists from an earlier run with the same version; it is "
                          "replaced by this run's metrics", stacklevel=2)
            os.remove(self.metrics_file_path)
        os.makedirs(log_dir, exist_ok=True)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        row = {key: value.item() if isinstance(value, Tensor) else value for key, value in metrics.items()}
        row["step"] = len(self.metrics) if step is None else step
        self.metrics.append(row)

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        self.hparams.update(params)
        write_hparams_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)

    def save(self) -> None:
        if not self.metrics:
            return
        new_keys = sorted({key for row in self.metrics for key in row} - set(self.metrics_keys))
        exists = os.path.isfile(self.metrics_file_path)
        if new_keys:
            self.metrics_keys = sorted(self.metrics_keys + new_keys)
        if new_keys and exists:
            with open(self.metrics_file_path, newline="") as file:
                self.metrics = list(csv.DictReader(file)) + self.metrics
            exists = False
        with open(self.metrics_file_path, "a" if exists else "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            if not exists:
                writer.writeheader()
            writer.writerows(self.metrics)
        self.metrics = []


class CSVLogger(FolderLogger):
    """Write `metrics.csv` and `hparams.yaml` to `save_dir/name/version_N`; only global rank 0 writes.

    Args:
        save_dir: the folder holding every experiment (`root_dir=` is accepted as well).
        name: the experiment's folder ("lightning_logs"); "" or None writes versions directly in `save_dir`.
        version: None picks the next free `version_N`; an int N gives `version_N`; a string is the folder name.
        prefix: put in front of every metric name, joined with "-".
        flush_logs_every_n_steps: write buffered rows to disk when `(step + 1)` is a multiple of this (and at
            `save()` / `finalize()`).
    """

    def __init__(self, save_dir: str | os.PathLike[str] | None = None, name: str | None = "lightning_logs",
                 version: int | str | None = None, prefix: str = "", flush_logs_every_n_steps: int = 100, *,
                 root_dir: str | os.PathLike[str] | None = None) -> None:
        if isinstance(flush_logs_every_n_steps, bool) or not isinstance(flush_logs_every_n_steps, int) \
                or flush_logs_every_n_steps < 1:
            raise ValueError(f"flush_logs_every_n_steps={flush_logs_every_n_steps!r} is not valid; pass an int >= 1")
        super().__init__(save_dir, name, version, prefix, root_dir=root_dir)
        self._flush_logs_every_n_steps = flush_logs_every_n_steps

    _experiment: CSVWriter | None

    @property
    @rank_zero_experiment
    def experiment(self) -> CSVWriter:
        """The CSVWriter holding unsaved rows (a no-op stand-in on ranks other than 0), created on first use."""
        if self._experiment is None:
            self._experiment = CSVWriter(self.log_dir)
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        experiment = self.experiment
        if step is None:
            step = len(experiment.metrics)
        experiment.log_metrics(self._with_prefix(dict(metrics)), step)
        if (step + 1) % self._flush_logs_every_n_steps == 0:
            self.save()

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None = None) -> None:
        self.experiment.log_hparams(as_dict(params))

    @rank_zero_only
    def save(self) -> None:
        self.experiment.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self._experiment.save()
