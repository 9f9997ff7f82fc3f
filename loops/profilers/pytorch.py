"""torch.profiler over a Trainer stage: operator times (and memory) per profiled action, and a Chrome trace in
the log directory. The trace is fabric_kit's (`fabric_kit.profiling.torch_profiler`), the one `fabric.profile()`
writes for a raw loop."""
from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.autograd.profiler_util import EventList
from torch.profiler import ProfilerActivity, profile, record_function

from fabric_kit.profiling import default_activities, torch_profiler
from loops.profilers.profiler import Profiler

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

_PROFILE_KEYS = frozenset(inspect.signature(profile.__init__).parameters) - {"self"}

_TABLE_KEYS = frozenset(inspect.signature(EventList.table).parameters) - {"self", "sort_by", "row_limit"}


class PyTorchProfiler(Profiler):
    """Records the stage with `torch.profiler` from its first profiled action until its report: each action as a
    `[pl][profile]<action>` range, each submodule's forward as `[pl][module]<class>: <name>`
    (`record_module_names`), and a profiler step after each `*_step`. The report is the operators' table
    (`key_averages().table`); the Chrome trace (`export_to_chrome`) is written to `dirpath` (the Trainer's
    log_dir) as `<stage>-<filename>-<local rank>.<time ns>.pt.trace.json`, once at the end of the stage, or at
    the end of each active window of a `schedule` you pass. CPU activity is recorded, CUDA's where available,
    and tensor memory unless `profile_memory=False`.

    Args:
        dirpath, filename: as `Profiler`'s.
        group_by_input_shapes: one table row per operator and input shapes (needs `record_shapes=True`).
        emit_nvtx: not supported (NVTX ranges for nsys); False only.
        export_to_chrome: write the Chrome trace.
        row_limit: the table's rows (-1: all).
        sort_by_key: the table's order, one of `AVAILABLE_SORT_KEYS`; default the total CPU time (the device's
            with CUDA).
        record_module_names: name each submodule's forward in the trace.
        table_kwargs: more keyword arguments of `EventList.table` (`max_name_column_width`, ...).
        **profiler_kwargs: `torch.profiler.profile`'s (`schedule`, `record_shapes`, `with_stack`,
            `activities`, `profile_memory`, ...).
    """

    STEP_FUNCTIONS = ("training_step", "validation_step", "test_step", "predict_step")
    AVAILABLE_SORT_KEYS = frozenset({
        "cpu_time", "cuda_time", "cpu_time_total", "cuda_time_total", "cpu_memory_usage", "cuda_memory_usage",
        "self_cpu_memory_usage", "self_cuda_memory_usage", "count", "device_time", "device_time_total",
        "device_memory_usage", "self_device_memory_usage"})

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None,
                 group_by_input_shapes: bool = False, emit_nvtx: bool = False, export_to_chrome: bool = True,
                 row_limit: int = 20, sort_by_key: str | None = None, record_module_names: bool = True,
                 table_kwargs: dict[str, Any] | None = None, **profiler_kwargs: Any) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        if emit_nvtx:
            raise ValueError("PyTorchProfiler(emit_nvtx=True) is not supported: record NVTX ranges with "
                             "torch.autograd.profiler.emit_nvtx() around your own code, or use emit_nvtx=False")
        unknown = sorted(set(profiler_kwargs) - _PROFILE_KEYS)
        if unknown:
            raise TypeError(f"PyTorchProfiler got {unknown}, which torch.profiler.profile does not take; accepted: "
                            f"{sorted(_PROFILE_KEYS)}")
        schedule = profiler_kwargs.get("schedule")
        if schedule is not None and not callable(schedule):
            raise ValueError(f"schedule={schedule!r} is not callable; pass torch.profiler.schedule(...) or None")
        self._group_by_input_shapes = group_by_input_shapes and bool(profiler_kwargs.get("record_shapes"))
        self._export_to_chrome = export_to_chrome
        self._row_limit = row_limit
        self._sort_by_key = sort_by_key or ("device_time_total" if _records_cuda(profiler_kwargs)
                                            else "cpu_time_total")
        if self._sort_by_key not in self.AVAILABLE_SORT_KEYS:
            raise ValueError(f"sort_by_key={self._sort_by_key!r} is not one of {sorted(self.AVAILABLE_SORT_KEYS)}")
        self._table_kwargs = dict(table_kwargs or {})
        unknown = sorted(set(self._table_kwargs) - _TABLE_KEYS)
        if unknown:
            raise KeyError(f"table_kwargs {unknown} are not arguments of EventList.table (sort_by and row_limit "
                           f"are this profiler's own); accepted: {sorted(_TABLE_KEYS)}")
        self._record_module_names = record_module_names
        self._profiler_kwargs = profiler_kwargs
        self.profiler: profile | None = None
        self._records: dict[str, record_function] = {}
        self._module_records: dict[str, record_function] = {}
        self._hooks: list[RemovableHandle] = []

    def start(self, action_name: str) -> None:
        if self.profiler is None:
            self.profiler = self._create_profiler()
            self.profiler.start()
            if self._record_module_names and self._lightning_module is not None:
                self._name_modules(self._lightning_module)
        if action_name not in self._records:
            record = self._records[action_name] = record_function("[pl][profile]" + action_name)
            record.__enter__()

    def stop(self, action_name: str) -> None:
        record = self._records.pop(action_name, None)
        if record is not None:
            record.__exit__(None, None, None)
        if self.profiler is not None and action_name.endswith(self.STEP_FUNCTIONS):
            self.profiler.step()

    def summary(self) -> str:
        if self.profiler is None:
            return ""
        self._close_records()
        self.profiler.stop()  # writes the trace
        events = self.profiler.key_averages(group_by_input_shape=self._group_by_input_shapes)
        self.profiler = None
        table = events.table(sort_by=self._sort_by_key, row_limit=self._row_limit, **self._table_kwargs)
        return self._stats_to_str({"records": table})

    def teardown(self, stage: str | None) -> None:
        self._close_records()
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None
        super().teardown(stage)

    def __getstate__(self) -> dict[str, Any]:
        """A spawned process gets the settings, not a running recording."""
        return {**super().__getstate__(), "profiler": None, "_records": {}, "_module_records": {}, "_hooks": []}

    def _create_profiler(self) -> profile:
        kwargs = dict(self._profiler_kwargs)
        if not self._export_to_chrome:
            kwargs.setdefault("on_trace_ready", _no_trace)
        elif self.dirpath is None and kwargs.get("on_trace_ready") is None:
            warnings.warn("PyTorchProfiler writes no Chrome trace: it has no dirpath (pass dirpath=..., or run it "
                          "in a Trainer, whose log_dir it then uses)", stacklevel=3)
            kwargs["on_trace_ready"] = _no_trace
        return torch_profiler(self.dirpath or ".", self._prepare_filename(extension=""), **kwargs)

    def _name_modules(self, module: nn.Module) -> None:
        """Forward hooks that open a `[pl][module]` range around each submodule's forward."""
        def before(name: str) -> Any:
            def hook(submodule: nn.Module, args: Any) -> None:
                kind = type(submodule)
                record = self._module_records[name] = record_function(
                    f"[pl][module]{kind.__module__}.{kind.__name__}: {name}")
                record.__enter__()
            return hook

        def after(name: str) -> Any:
            def hook(submodule: nn.Module, args: Any, output: Any) -> None:
                record = self._module_records.pop(name, None)
                if record is not None:
                    record.__exit__(None, None, None)
            return hook

        for name, submodule in module.named_modules():
            if name:
                self._hooks += [submodule.register_forward_pre_hook(before(name)),
                                submodule.register_forward_hook(after(name))]

    def _close_records(self) -> None:
        for record in [*self._records.values(), *self._module_records.values()]:
            record.__exit__(None, None, None)
        self._records.clear()
        self._module_records.clear()
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()


def _records_cuda(profiler_kwargs: dict[str, Any]) -> bool:
    activities = profiler_kwargs.get("activities") or default_activities()
    return ProfilerActivity.CUDA in activities


def _no_trace(profiler: Any) -> None:
    """An `on_trace_ready` that writes nothing."""
