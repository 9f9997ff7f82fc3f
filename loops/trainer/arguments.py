"""Validate and normalise Trainer arguments that interact (fast_dev_run, max_time, limits, the default callbacks),
naming the bad value and what is accepted."""
from __future__ import annotations

import os
import warnings
from datetime import timedelta
from typing import Any

import torch

from loops.callbacks.callback import Callback
from loops.callbacks.checkpoint import Checkpoint
from loops.callbacks.model_checkpoint import ModelCheckpoint
from loops.callbacks.model_summary import ModelSummary
from loops.callbacks.progress import ProgressBar, TQDMProgressBar


def parse_duration(name: str, value: str | timedelta | dict[str, int] | None) -> float | None:
    """Seconds from "DD:HH:MM:SS", a timedelta, or a dict of timedelta keywords (e.g. {"hours": 1}); `name` is
    the argument's, for the error."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return timedelta(**value).total_seconds()
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) == 4 and all(p.strip().isdigit() for p in parts):
            days, hours, minutes, seconds = map(int, parts)
            return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()
    raise ValueError(f"{name}={value!r} is not valid; accepted: 'DD:HH:MM:SS', a datetime.timedelta or a dict "
                     "like {'hours': 1}")


def fast_dev_run_batches(fast_dev_run: int | bool) -> int:
    """0 when off; otherwise how many batches each stage runs."""
    if isinstance(fast_dev_run, bool):
        return int(fast_dev_run)
    if not isinstance(fast_dev_run, int) or fast_dev_run < 0:
        raise ValueError(f"fast_dev_run={fast_dev_run!r} is not valid; pass True, False or a positive int")
    return fast_dev_run


def check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not valid; pass a positive int{' or None' if allow_none else ''}")


def val_check_seconds(value: Any) -> float | None:
    """The wall time between validations when `val_check_interval` is one ("DD:HH:MM:SS", a timedelta or a dict
    of its keywords, as Lightning takes it); None for a batch count or fraction, which is checked here."""
    if isinstance(value, (str, dict, timedelta)):
        return parse_duration("val_check_interval", value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 \
            or (isinstance(value, float) and value > 1.0):
        raise ValueError(f"val_check_interval={value!r} is not valid; pass a float in (0.0, 1.0] (fraction of the "
                         "training epoch), a positive int (number of training batches) or a time: 'DD:HH:MM:SS', a "
                         "datetime.timedelta or a dict like {'minutes': 5}")
    return None


def check_clip_algorithm(value: Any) -> str:
    if value is None:
        return "norm"
    if value not in ("norm", "value"):
        raise ValueError(f"gradient_clip_algorithm={value!r} is not valid; accepted: 'norm', 'value'")
    return value


def set_torch_flags(deterministic: bool | str | None, benchmark: bool | None) -> None:
    """Lightning's `deterministic` / `benchmark`: process-wide torch settings. deterministic=True (or "warn", which
    only warns about nondeterministic ops) also turns cuDNN's benchmark off unless it was asked for; None leaves
    torch's current settings alone."""
    if deterministic not in (None, True, False, "warn"):
        raise ValueError(f"deterministic={deterministic!r} is not valid; accepted: None, True, False, 'warn'")
    if deterministic and benchmark:
        warnings.warn("deterministic and benchmark are both on: cuDNN's benchmark picks algorithms by timing, which "
                      "is not deterministic", stacklevel=3)
    if deterministic and benchmark is None:
        benchmark = False
    if benchmark is not None:
        torch.backends.cudnn.benchmark = benchmark
    if deterministic is not None:
        torch.use_deterministic_algorithms(bool(deterministic), warn_only=deterministic == "warn")
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # cuBLAS is deterministic only with a fixed workspace


def with_default_callbacks(given: list[Any], checkpointing: bool, progress_bar: bool,
                           model_summary: bool) -> list[Callback]:
    """`given` plus the defaults the enable_* flags ask for: a ModelCheckpoint, a TQDMProgressBar and a
    ModelSummary, each unless one of its kind was given (callbacks the flags turned off are an error)."""
    bad = [type(c).__name__ for c in given if not isinstance(c, Callback)]
    if bad:
        raise TypeError(f"callbacks must be loops.Callback instances; got {bad}")
    checkpoints = [type(c).__name__ for c in given if isinstance(c, Checkpoint)]
    if not checkpointing and checkpoints:
        raise ValueError(f"enable_checkpointing=False, but callbacks holds {checkpoints}; remove them or enable "
                         "checkpointing")
    bars = [type(c).__name__ for c in given if isinstance(c, ProgressBar)]
    if len(bars) > 1:
        raise ValueError(f"callbacks holds {len(bars)} progress bars {bars}; the Trainer shows one: keep one")
    if bars and not progress_bar:
        raise ValueError(f"enable_progress_bar=False, but callbacks holds {bars}; remove it or enable the progress "
                         "bar")
    defaults: list[Callback] = [ModelCheckpoint()] if checkpointing and not checkpoints else []
    defaults += [TQDMProgressBar()] if progress_bar and not bars else []
    defaults += [ModelSummary()] if model_summary and not any(isinstance(c, ModelSummary) for c in given) else []
    return [*given, *defaults]
