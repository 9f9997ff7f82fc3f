"""What `self.log` accumulates during one stage's epoch: the latest step value of each key and its running
reduction (batch-size weighted mean, sum, max or min), synced over processes on request."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

_REDUCTIONS = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min",
               torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min",
               sum: "sum", max: "max", min: "min"}


def reduction_name(reduce_fx: str | Callable) -> str:
    """The epoch reduction `reduce_fx` names. Other callables are refused, as Lightning refuses them: a running
    reduction must be known to merge per step and over processes, which a torchmetrics Metric provides."""
    name = _REDUCTIONS.get(reduce_fx.lower() if isinstance(reduce_fx, str) else reduce_fx)
    if name is None:
        raise ValueError(f"reduce_fx={reduce_fx!r} is not supported; accepted: 'mean' (or 'avg'), 'sum', 'max', "
                         "'min', torch.mean / torch.sum / torch.max / torch.min or the built-in sum / max / min; "
                         "for another reduction log a torchmetrics Metric that computes it")
    return name


class Entry:
    """One logged key. `value` is the latest step value; `total`/`weight` hold the epoch reduction so far."""

    __slots__ = ("name", "suffix", "on_step", "on_epoch", "prog_bar", "logger", "reduce", "sync_dist", "group",
                 "value", "total", "weight", "metric")

    def __init__(self, name: str, suffix: str, on_step: bool, on_epoch: bool, prog_bar: bool, logger: bool,
                 reduce: str, sync_dist: bool, group: Any) -> None:
        self.name, self.suffix, self.on_step, self.on_epoch = name, suffix, on_step, on_epoch
        self.prog_bar, self.logger, self.reduce = prog_bar, logger, reduce
        self.sync_dist, self.group = sync_dist, group
        self.value: Any = None
        self.total: Any = None
        self.weight = 0
        self.metric: Any = None  # a torchmetrics-style object: reduced by its own compute()

    def key(self, fork: str) -> str:
        """The published name: `name_step` / `name_epoch` (`fork`) when logged both per step and per epoch, then
        the "/dataloader_idx_N" suffix, as Lightning names them."""
        return f"{self.name}_{fork}{self.suffix}" if self.on_step and self.on_epoch else self.name + self.suffix

    def update(self, value: Tensor, batch_size: int) -> None:
        self.value = value
        if not self.on_epoch:
            return
        reduce, total = self.reduce, self.total
        if reduce == "mean":
            weighted = value * batch_size
            self.total = weighted if total is None else total + weighted
            self.weight += batch_size
        elif total is None:
            self.total = value
        elif reduce == "sum":
            self.total = total + value
        elif reduce == "max":
            self.total = torch.maximum(total, value)
        else:
            self.total = torch.minimum(total, value)

    def epoch_value(self, fabric: Any) -> Tensor:
        if self.metric is not None:
            value = self.metric.compute()
            self.metric.reset()
            return value
        if self.sync_dist and fabric.world_size > 1:
            if self.reduce == "mean":
                total, weight = fabric.all_reduce(
                    [self.total, torch.tensor(float(self.weight), device=self.total.device)], reduce_op="sum")
                return total / weight
            return fabric.all_reduce(self.total, reduce_op=self.reduce)
        return self.total / self.weight if self.reduce == "mean" else self.total


class Results:
    """The keys logged in one stage ("train", "validate", "test") since the epoch started."""

    def __init__(self, fabric: Any, training: bool = True) -> None:
        """`training=False`, for evaluation: `sync_dist` values are synced at the epoch's end only (its shards are
        uneven, each sample once, so processes run different numbers of steps and a per-step collective hangs),
        and step values go to the loggers and the bar but not to the callback metrics (Lightning's rule)."""
        self.fabric = fabric
        self.training = training
        self.entries: dict[str, Entry] = {}
        self.step_logged = False  # something was logged per step since the last `step_metrics()`

    def log(self, name: str, suffix: str, value: Any, prog_bar: bool, logger: bool, on_step: bool, on_epoch: bool,
            reduce_fx: str | Callable, enable_graph: bool, sync_dist: bool, group: Any, batch_size: int | None,
            batch: Any) -> None:
        """Record `value` under `name` + `suffix` (the "/dataloader_idx_N" of the running loader, or "")."""
        entry = self.entries.get(name + suffix)
        if entry is None:
            if not (on_step or on_epoch):
                raise ValueError(f"self.log({name!r}) with on_step=False and on_epoch=False would record nothing; "
                                 "set at least one to True")
            entry = self.entries[name + suffix] = Entry(name, suffix, on_step, on_epoch, prog_bar, logger,
                                                        reduction_name(reduce_fx), sync_dist, group)
        if hasattr(value, "compute") and hasattr(value, "reset"):
            entry.metric = value
            value = getattr(value, "_forward_cache", None)
            if value is None:
                return
        value = _as_scalar(name, value, self.fabric.device)
        if not enable_graph:
            value = value.detach()
        if on_step and sync_dist and self.training and self.fabric.world_size > 1:
            value = self.fabric.all_reduce(value, group=group, reduce_op=entry.reduce)
        if on_epoch and batch_size is None and entry.reduce == "mean" and entry.metric is None:
            batch_size = extract_batch_size(batch)
        entry.update(value, batch_size or 1)
        if on_step:
            self.step_logged = True

    def reset_metrics(self) -> None:
        """Reset the logged metric objects once their epoch is over (also a discarded one, like the sanity
        check's), so the next epoch's `compute()` sees only its own updates."""
        for entry in self.entries.values():
            if entry.metric is not None:
                entry.metric.reset()

    def step_metrics(self, consume: bool = True, suffix: str = "") -> tuple[dict[str, Tensor], dict[str, Tensor],
                                                                         dict[str, Tensor]]:
        """(callback metrics, logger metrics, progress-bar metrics) of the latest step; `consume=False` peeks
        (the step's hooks may still log more before it is published). With a loader's `suffix`
        ("/dataloader_idx_N"), the other loaders' keys are left out."""
        self.step_logged = self.step_logged and not consume
        callback, logged, bar = {}, {}, {}
        for name, entry in self.entries.items():
            if not entry.on_step or entry.value is None or entry.suffix not in ("", suffix):
                continue
            key = entry.key("step")
            if self.training:
                callback[key] = callback[name] = entry.value
            if entry.logger:
                logged[key] = entry.value
            if entry.prog_bar:
                bar[key] = entry.value
        return callback, logged, bar

    def epoch_metrics(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """(callback metrics, logger metrics, progress-bar metrics) reduced over the epoch."""
        callback, logged, bar = {}, {}, {}
        for name, entry in self.entries.items():
            if not entry.on_epoch or (entry.total is None and entry.metric is None):
                continue
            value = entry.epoch_value(self.fabric)
            key = entry.key("epoch")
            callback[key] = callback[name] = value
            if entry.logger:
                logged[key] = value
            if entry.prog_bar:
                bar[key] = value
        return callback, logged, bar


def _as_scalar(name: str, value: Any, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"self.log({name!r}) got a tensor of shape {tuple(value.shape)}; log one number (e.g. "
                             "its mean) or several keys with log_dict")
        return value.squeeze() if value.dim() else value
    if isinstance(value, (int, float, bool)):
        return torch.tensor(float(value), device=device)
    raise TypeError(f"self.log({name!r}) got a {type(value).__name__}; accepted: a number, a one-element tensor or "
                    "a torchmetrics Metric")


def extract_batch_size(batch: Any) -> int:
    """The first dimension of the first tensor found in `batch` (1 when it holds none)."""
    if isinstance(batch, Tensor):
        return batch.size(0) if batch.dim() else 1
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = extract_batch_size(item)
            if size != 1 or isinstance(item, Tensor):
                return size
    elif isinstance(batch, dict):
        for item in batch.values():
            size = extract_batch_size(item)
            if size != 1 or isinstance(item, Tensor):
                return size
    return 1
