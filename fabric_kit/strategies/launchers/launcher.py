"""A launcher starts the processes a strategy needs when nobody else (torchrun, SLURM, MPI) did."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any


class Launcher(ABC):
    # False for launchers that start fresh processes (spawn, fork, XLA): those only run the function handed to
    # `launch`, so the script's own code after `fabric.launch()` would never run in them.
    reruns_script: bool = False

    @property
    @abstractmethod
    def is_interactive_compatible(self) -> bool:
        """Whether it works from a notebook / REPL, where there is no script to re-run."""

    @abstractmethod
    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `function(*args, **kwargs)` in every process and return rank 0's result."""
