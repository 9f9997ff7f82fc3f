"""Validate and normalise Trainer arguments that interact (fast_dev_run, max_time, limits), naming the bad value
and what is accepted."""
from __future__ import annotations

import os
import warnings
from datetime import timedelta
from typing import Any

import torch


def parse_max_time(max_time: str | timedelta | dict[str, int] | None) -> float | None:
    """Seconds from "DD:HH:MM:SS", a timedelta, or a dict of timedelta keywords (e.g. {"hours": 1})."""
    if max_time is None:
        return None
    if isinstance(max_time, timedelta):
        return max_time.total_seconds()
    if isinstance(max_time, dict):
        return timedelta(**max_time).total_seconds()
    if isinstance(max_time, str):
        parts = max_time.split(":")
        if len(parts) == 4 and all(p.strip().isdigit() for p in parts):
            days, hours, minutes, seconds = map(int, parts)
            return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()
    raise ValueError(f"max_time={max_time!r} is not valid; accepted: 'DD:HH:MM:SS', a datetime.timedelta or a dict "
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


def check_val_check_interval(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 \
            or (isinstance(value, float) and value > 1.0):
        raise ValueError(f"val_check_interval={value!r} is not valid; pass a float in (0.0, 1.0] (fraction of the "
                         "training epoch) or a positive int (number of training batches)")


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
