"""torch.profiler set up to write a Chrome trace: what `fabric.profile()` returns for raw loops and what loops'
`PyTorchProfiler` records with, so both leave the same trace files. torch.profiler is imported on first use
(`import fabric_kit` does not load it)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch.profiler import ProfilerActivity, profile


def default_activities() -> list[ProfilerActivity]:
    """The CPU, and CUDA where a GPU is available."""
    from torch.profiler import ProfilerActivity

    return [ProfilerActivity.CPU, ProfilerActivity.CUDA] if torch.cuda.is_available() else [ProfilerActivity.CPU]


def torch_profiler(dirpath: str | Path, worker_name: str, **profiler_kwargs: Any) -> profile:
    """A `torch.profiler.profile` (a context manager: `with torch_profiler(...) as prof: ... prof.step()`) that
    records `default_activities()` and tensor memory (`profile_memory=True` unless given), and writes a Chrome trace
    `<dirpath>/<worker_name>.<time ns>.pt.trace.json` each time a recording ends: at the end of the context, or of
    each active window of a `schedule`. `profiler_kwargs` are torch.profiler.profile's (`schedule`,
    `record_shapes`, `with_stack`, ..., an `on_trace_ready` of your own replaces the trace file)."""
    from torch.profiler import profile, tensorboard_trace_handler

    kwargs: dict[str, Any] = {"activities": default_activities(), "profile_memory": True, **profiler_kwargs}
    if kwargs.get("on_trace_ready") is None:
        kwargs["on_trace_ready"] = tensorboard_trace_handler(str(dirpath), worker_name)
    return profile(**kwargs)


__all__ = ["default_activities", "torch_profiler"]
