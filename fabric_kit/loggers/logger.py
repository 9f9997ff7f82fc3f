"""The logger interface `Fabric(loggers=...)` and the loops Trainer talk to (Lightning's `Logger` API), and the
stand-in experiment that processes other than global rank 0 receive, so user code calling
`logger.experiment.add_image(...)` runs unchanged on every rank while only rank 0 writes."""
from __future__ import annotations

from abc import ABC, abstractmethod
from argparse import Namespace
from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any

from torch.nn import Module

from fabric_kit.rank_zero import global_rank


class Logger(ABC):
    """Base class of experiment loggers. Subclasses write on global rank 0 only."""

    @property
    @abstractmethod
    def name(self) -> str | None:
        """The experiment's name."""

    @property
    @abstractmethod
    def version(self) -> int | str | None:
        """The experiment's version (`version_N` directories use the int)."""

    @property
    def root_dir(self) -> str | None:
        """The folder holding every version of the experiment; None for loggers that keep nothing locally."""
        return None

    @property
    def log_dir(self) -> str | None:
        """This version's folder; None for loggers that keep nothing locally."""
        return None

    @property
    def save_dir(self) -> str | None:
        """The folder the logger was given to write under; None for loggers that keep nothing locally."""
        return None

    @property
    def group_separator(self) -> str:
        """Joins a metric's group and name ("train/loss")."""
        return "/"

    @property
    def experiment(self) -> Any:
        """The backend object (a SummaryWriter, a wandb run, ...) for what `log_metrics` cannot express."""
        return None

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record scalar metrics at `step`."""

    @abstractmethod
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Record the run's hyperparameters."""

    def log_graph(self, model: Module, input_array: Any = None) -> None:
        """Record the model's graph where the backend can show one."""

    def save(self) -> None:
        """Flush what was logged so far to storage."""

    def finalize(self, status: str) -> None:
        """Close the experiment; `status` is "success", "failed" or "interrupted"."""
        self.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called after a checkpoint callback wrote a checkpoint (loggers that upload models use it)."""


def rank_zero_experiment(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Decorates a logger's `experiment` property: the real object on global rank 0, a no-op stand-in elsewhere."""

    @wraps(fn)
    def experiment(self: Any) -> Any:
        return fn(self) if global_rank() == 0 else DummyExperiment()

    return experiment


class DummyExperiment:
    """Accepts any method call, item access or assignment and does nothing."""

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[..., None]:
        return self._nothing

    def __getitem__(self, index: Any) -> DummyExperiment:
        return self

    def __setitem__(self, index: Any, value: Any) -> None:
        pass
