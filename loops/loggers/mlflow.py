"""MLflow through the optional `mlflow` package (mlflow-skinny is enough; imported when the logger is built):
metrics and parameters of one run, checkpoints as run artifacts."""
from __future__ import annotations

import os
import re
import tempfile
import time
import warnings
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from fabric_kit.loggers import Logger, rank_zero_experiment
from fabric_kit.loggers.params import as_dict, flatten, write_hparams_yaml
from fabric_kit.rank_zero import rank_zero_only
from loops.loggers.uploads import checkpoint_metadata, checkpoints_to_upload

_FILE_URI = "file:"
_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_BAD_METRIC_CHARACTERS = re.compile(r"[^a-zA-Z0-9_/. -]+")


def _mlflow_client_class() -> type:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise ImportError("MLFlowLogger needs mlflow: pip install 'fabric_kit[mlflow]'") from err
    return MlflowClient


class MLFlowLogger(Logger):
    """Log to an MLflow tracking store; only global rank 0 talks to it.

    Args:
        experiment_name: created when the store does not have it yet.
        run_name: the run's display name.
        tracking_uri: where the store lives ("http://...", "sqlite:///mlflow.db", "file:/path"); default
            $MLFLOW_TRACKING_URI, else a local folder store in `save_dir`.
        tags: the run's tags.
        save_dir: the local folder store used without a tracking URI. Recent mlflow versions refuse folder stores
            unless MLFLOW_ALLOW_FILE_STORE=true; the logger sets it when it picked the folder store itself.
        log_model: upload checkpoints as run artifacts: True at the end of training (every one as it is written
            when the callback keeps all, save_top_k=-1), "all" as they are written, False never.
        prefix: put in front of every metric name, joined with "-".
        artifact_location: where a newly created experiment stores artifacts.
        run_id: an existing run to log to.
        synchronous: wait for each logging call (True) or let mlflow queue them (False); None: mlflow's default.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(self, experiment_name: str = "lightning_logs", run_name: str | None = None,
                 tracking_uri: str | None = None, tags: dict[str, Any] | None = None,
                 save_dir: str | os.PathLike | None = "./mlruns", log_model: bool | Literal["all"] = False,
                 prefix: str = "", artifact_location: str | None = None, run_id: str | None = None,
                 synchronous: bool | None = None) -> None:
        client_class = _mlflow_client_class()
        if log_model not in (True, False, "all"):
            raise ValueError(f"log_model={log_model!r} is not valid; pass True, False or 'all'")
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not tracking_uri:
            if save_dir is None:
                raise ValueError("MLFlowLogger needs a store: pass tracking_uri, set MLFLOW_TRACKING_URI, or pass "
                                 "save_dir for a local folder store")
            tracking_uri = _FILE_URI + os.path.abspath(os.fspath(save_dir))
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._experiment_name = experiment_name
        self._experiment_id: str | None = None
        self._tracking_uri = tracking_uri
        self._run_name = run_name
        self._run_id = run_id
        self.tags = dict(tags or {})
        self._log_model = log_model
        self._prefix = prefix
        self._artifact_location = artifact_location
        self._batch_kwargs = {} if synchronous is None else {"synchronous": synchronous}
        self._uploaded: dict[str, float] = {}
        self._pending_callback: Any = None
        self._initialized = False
        self._client = client_class(tracking_uri)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The MlflowClient (a no-op stand-in on ranks other than 0); the first use creates the experiment (when
        missing) and the run. Pass `logger.run_id` to its methods."""
        if self._initialized:
            return self._client
        if self._run_id is not None:
            self._experiment_id = self._client.get_run(self._run_id).info.experiment_id
        else:
            found = self._client.get_experiment_by_name(self._experiment_name)
            if found is not None and found.lifecycle_stage != "deleted":
                self._experiment_id = found.experiment_id
            else:
                self._experiment_id = self._client.create_experiment(self._experiment_name,
                                                                     artifact_location=self._artifact_location)
            tags = dict(self.tags)
            if self._run_name is not None:
                tags["mlflow.runName"] = self._run_name
            self._run_id = self._client.create_run(self._experiment_id, tags=tags).info.run_id
        self._initialized = True
        return self._client

    @property
    def run_id(self) -> str | None:
        """The run's id; asking starts the run (on rank 0)."""
        _ = self.experiment
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        """The experiment's id; asking creates it when the store lacks it (on rank 0)."""
        _ = self.experiment
        return self._experiment_id

    @property
    def name(self) -> str | None:
        """The experiment's id (as Lightning's MLFlowLogger)."""
        return self.experiment_id

    @property
    def version(self) -> str | None:
        """The run's id."""
        return self.run_id

    @property
    def save_dir(self) -> str | None:
        """The local folder of a folder store; None for other stores."""
        return self._tracking_uri[len(_FILE_URI):] if self._tracking_uri.startswith(_FILE_URI) else None

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        """Parameters as strings (mlflow's limit: 250 characters), nested dicts flattened with "/"."""
        from mlflow.entities import Param

        entries = [Param(key, str(value)[:250]) for key, value in flatten(as_dict(params)).items()]
        for start in range(0, len(entries), 100):  # mlflow takes at most 100 parameters per batch
            self.experiment.log_batch(self.run_id, params=entries[start:start + 100], **self._batch_kwargs)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        from mlflow.entities import Metric

        timestamp_ms = int(time.time() * 1000)
        entries = []
        for key, value in metrics.items():
            if isinstance(value, str):
                warnings.warn(f"MLFlowLogger skips {key!r}: its value {value!r} is a string, not a number",
                              stacklevel=2)
                continue
            key = f"{self._prefix}{self.LOGGER_JOIN_CHAR}{key}" if self._prefix else key
            clean = _BAD_METRIC_CHARACTERS.sub("", key)
            if clean != key:
                warnings.warn(f"MLflow metric names allow letters, digits and '_', '/', '.', ' ', '-': {key!r} is "
                              f"logged as {clean!r}", RuntimeWarning, stacklevel=2)
            entries.append(Metric(clean, float(value), timestamp_ms, step or 0))
        self.experiment.log_batch(self.run_id, metrics=entries, **self._batch_kwargs)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._log_model == "all" or (self._log_model is True and getattr(checkpoint_callback, "save_top_k", 1)
                                        == -1):
            self._upload(checkpoint_callback)
        elif self._log_model is True:
            self._pending_callback = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Upload pending checkpoints and mark the run FINISHED, FAILED or KILLED."""
        if not self._initialized:
            return
        if self._pending_callback is not None:
            self._upload(self._pending_callback)
        self.experiment.set_terminated(self._run_id, _STATUS.get(status, status))

    @rank_zero_only
    def _upload(self, callback: Any) -> None:
        for mtime, path, score, _ in checkpoints_to_upload(callback, self._uploaded):
            folder = Path(path).stem
            self.experiment.log_artifact(self.run_id, path, folder)
            with tempfile.TemporaryDirectory() as scratch:
                write_hparams_yaml(os.path.join(scratch, "metadata.yaml"), checkpoint_metadata(callback, path, score))
                aliases = ["latest", "best"] if path == getattr(callback, "best_model_path", None) else ["latest"]
                Path(scratch, "aliases.txt").write_text(str(aliases))
                self.experiment.log_artifacts(self.run_id, scratch, folder)
            self._uploaded[path] = mtime

    def __getstate__(self) -> dict[str, Any]:
        # The client holds a store connection: a spawned process builds its own.
        return {**self.__dict__, "_client": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = _mlflow_client_class()(self._tracking_uri)
