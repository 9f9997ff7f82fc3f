"""Doing something once per job: printing, warning, writing logs."""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

__all__ = ["global_rank", "rank_zero_info", "rank_zero_only", "rank_zero_warn"]

F = TypeVar("F", bound=Callable[..., Any])


def global_rank() -> int:
    """This process's rank as every launcher exports it (torchrun, SLURM, our own); 0 when alone."""
    for name in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        value = os.environ.get(name)
        if value is not None:
            return int(value)
    return 0


def rank_zero_only(fn: F) -> F:
    """Run `fn` on global rank 0 only; elsewhere it returns None."""

    @wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if global_rank() == 0:
            return fn(*args, **kwargs)
        return None

    return wrapped  # type: ignore[return-value]


@rank_zero_only
def rank_zero_warn(message: str, category: type[Warning] = UserWarning, stacklevel: int = 3) -> None:
    warnings.warn(message, category, stacklevel=stacklevel)


@rank_zero_only
def rank_zero_info(*args: Any, **kwargs: Any) -> None:
    print(*args, **kwargs)
