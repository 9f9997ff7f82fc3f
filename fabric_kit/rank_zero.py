"""Doing something once per job: printing, warning, writing logs.

`rank_zero_only` works as a decorator from import time on, before any Fabric exists: its `rank` is read from the
variables every launcher exports (Lightning's order: `RANK`, `LOCAL_RANK`, `SLURM_PROCID`, `JSM_NAMESPACE_RANK`,
then MPI's), unless a program assigns `rank_zero_only.rank` itself, as Lightning programs may."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, overload

__all__ = ["global_rank", "rank_zero_info", "rank_zero_only", "rank_zero_warn", "share_rank"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# LOCAL_RANK before SLURM_PROCID: SLURM exports its variable into processes it did not start (an `salloc` shell),
# while LOCAL_RANK is set only by the launcher that started this very process.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
LIGHTNING_UTILITIES = "lightning_utilities.core.rank_zero"


def global_rank() -> int:
    """This process's rank as every launcher exports it (torchrun, SLURM, LSF, MPI, our own); 0 when alone."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None:
            return int(value)
    return 0


class RankZeroOnly:
    """`@rank_zero_only` runs the decorated function on global rank 0 only and returns `default` (None) elsewhere.

    `rank_zero_only.rank` is the rank it compares with: the launcher's variables (`global_rank()`) until a program
    assigns it an int, as Lightning's own code and programs do."""

    def __init__(self) -> None:
        self._rank: int | None = None

    @property
    def rank(self) -> int:
        return global_rank() if self._rank is None else self._rank

    @rank.setter
    def rank(self, value: int) -> None:
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"rank_zero_only.rank={value!r} is not a rank: assign an integer >= 0")
        self._rank = value

    @overload
    def __call__(self, fn: F) -> F: ...

    @overload
    def __call__(self, fn: Callable[..., T], default: T) -> Callable[..., T]: ...

    def __call__(self, fn: Callable[..., Any], default: Any = None) -> Callable[..., Any]:
        @wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            rank = self._rank
            if (global_rank() if rank is None else rank) == 0:
                return fn(*args, **kwargs)
            return default

        return wrapped


rank_zero_only = RankZeroOnly()


def share_rank(rank: int | None = None, load: bool = False) -> None:
    """Give lightning_utilities' `rank_zero_only.rank` (which raises until set, and which code written for
    Lightning decorates with) this process's rank, as Lightning does at import and again once the strategy knows
    the rank. `load=True` imports that package if it is installed (a tenth of a second, so `import fabric_kit`
    shares only with one already imported; `import loops` and every strategy's `setup_environment` load it)."""
    module = sys.modules.get(LIGHTNING_UTILITIES)
    if module is None and load and importlib.util.find_spec("lightning_utilities") is not None:
        module = importlib.import_module(LIGHTNING_UTILITIES)
    if module is not None:
        module.rank_zero_only.rank = rank_zero_only.rank if rank is None else rank


@rank_zero_only
def rank_zero_warn(message: str, category: type[Warning] = UserWarning, stacklevel: int = 3) -> None:
    warnings.warn(message, category, stacklevel=stacklevel)


@rank_zero_only
def rank_zero_info(*args: Any, **kwargs: Any) -> None:
    print(*args, **kwargs)


share_rank()
