"""Turn whatever `configure_optimizers` returned into optimizers plus scheduler configs, and step schedulers."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

ACCEPTED_FORMS = """configure_optimizers may return:
  - None (no optimizer: training_step runs without stepping)
  - one optimizer
  - a list or tuple of optimizers
  - two lists: ([optimizers], [schedulers or scheduler configs])
  - a dict {"optimizer": opt, "lr_scheduler": scheduler or config} (config keys: scheduler, interval "step" or
    "epoch", frequency, monitor, strict, name)
  - a list or tuple of such dicts"""

_CONFIG_KEYS = {"scheduler", "interval", "frequency", "monitor", "strict", "name", "reduce_on_plateau", "opt_idx"}


@dataclass
class SchedulerConfig:
    """How the Trainer steps one scheduler: every `frequency` optimizer steps or epochs, with the `monitor`ed
    metric for ReduceLROnPlateau (a missing metric is an error when `strict`)."""

    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    strict: bool = True
    name: str | None = None
    reduce_on_plateau: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def parse_optimizers(returned: Any) -> tuple[list[Optimizer], list[SchedulerConfig]]:
    """Validate `configure_optimizers`' return value; errors name the value and list the accepted forms."""
    if returned is None:
        return [], []
    if isinstance(returned, Optimizer):
        return [returned], []
    if isinstance(returned, Mapping):
        return _from_dicts([returned])
    if isinstance(returned, (list, tuple)):
        if len(returned) == 2 and isinstance(returned[0], (list, tuple)) and not isinstance(returned[1], Mapping):
            optimizers = list(returned[0])
            schedulers = returned[1] if isinstance(returned[1], (list, tuple)) else [returned[1]]
            _check_optimizers(optimizers, returned)
            return optimizers, [_scheduler_config(s, returned) for s in schedulers]
        if all(isinstance(item, Mapping) for item in returned) and returned:
            return _from_dicts(list(returned))
        if all(isinstance(item, Optimizer) for item in returned):
            return list(returned), []
    raise _unsupported(returned)


def _from_dicts(configs: list[Mapping[str, Any]]) -> tuple[list[Optimizer], list[SchedulerConfig]]:
    optimizers, schedulers = [], []
    for config in configs:
        unknown = set(config) - {"optimizer", "lr_scheduler", "monitor"}
        if "optimizer" not in config or unknown:
            raise _unsupported(config, f"a dict needs the key 'optimizer' and may have 'lr_scheduler' and "
                                       f"'monitor'; got keys {sorted(config)}")
        optimizers.append(config["optimizer"])
        if config.get("lr_scheduler") is not None:
            scheduler = _scheduler_config(config["lr_scheduler"], config)
            if scheduler.monitor is None and "monitor" in config:
                scheduler.monitor = config["monitor"]
            schedulers.append(scheduler)
    _check_optimizers(optimizers, configs)
    for scheduler in schedulers:
        if scheduler.reduce_on_plateau and scheduler.monitor is None:
            raise ValueError(f"scheduler {type(scheduler.scheduler).__name__} (ReduceLROnPlateau) needs the "
                             "metric it watches: return {'optimizer': opt, 'lr_scheduler': {'scheduler': sched, "
                             "'monitor': 'val_loss'}}")
    return optimizers, schedulers


def _scheduler_config(value: Any, returned: Any) -> SchedulerConfig:
    if isinstance(value, Mapping):
        if "scheduler" not in value:
            raise _unsupported(returned, f"a scheduler config dict needs the key 'scheduler'; got keys "
                                         f"{sorted(value)}")
        unknown = set(value) - _CONFIG_KEYS
        if unknown:
            raise ValueError(f"scheduler config has unknown keys {sorted(unknown)}; accepted: {sorted(_CONFIG_KEYS)}")
        config = SchedulerConfig(**{k: v for k, v in value.items() if k in _CONFIG_KEYS and k != "opt_idx"})
    else:
        if not hasattr(value, "step"):
            raise _unsupported(returned, f"{type(value).__name__} is not a learning-rate scheduler (no step())")
        config = SchedulerConfig(scheduler=value)
    if config.interval not in ("step", "epoch"):
        raise ValueError(f"scheduler interval must be 'step' or 'epoch'; got {config.interval!r}")
    if not isinstance(config.frequency, int) or config.frequency < 1:
        raise ValueError(f"scheduler frequency must be a positive int; got {config.frequency!r}")
    config.reduce_on_plateau = config.reduce_on_plateau or isinstance(config.scheduler, ReduceLROnPlateau)
    return config


def _check_optimizers(optimizers: list[Any], returned: Any) -> None:
    bad = [type(o).__name__ for o in optimizers if not isinstance(o, Optimizer)]
    if bad:
        raise _unsupported(returned, f"these are not torch optimizers: {bad}")


def _unsupported(returned: Any, detail: str = "") -> ValueError:
    shown = repr(returned)
    shown = shown if len(shown) < 200 else shown[:200] + "..."
    return ValueError(f"unsupported return value of configure_optimizers: {shown}"
                      f"{' (' + detail + ')' if detail else ''}\n{ACCEPTED_FORMS}")


def step_schedulers(configs: list[SchedulerConfig], interval: str, count: int, metrics: Mapping[str, Any],
                    step: Callable[[Any, Any], None], plateau: bool = True) -> None:
    """Step the `interval` schedulers due at `count` (batches that stepped, or epochs completed) through `step`
    (the module's `lr_scheduler_step(scheduler, metric)`); ReduceLROnPlateau gets its monitored metric, whose
    absence is an error naming the logged metrics (a warning when not strict); `plateau=False` leaves
    ReduceLROnPlateau out."""
    for config in configs:
        if config.interval != interval or count % config.frequency or (config.reduce_on_plateau and not plateau):
            continue
        if not config.reduce_on_plateau:
            step(config.scheduler, None)
            continue
        value = metrics.get(config.monitor) if config.monitor is not None else None
        if value is None:
            message = (f"ReduceLROnPlateau conditioned on metric {config.monitor!r}, which was not logged; logged "
                       f"metrics: {sorted(metrics)}")
            if config.strict:
                raise RuntimeError(message + " (set 'strict': False in the scheduler config to skip the step)")
            warnings.warn(message, stacklevel=2)
            continue
        step(config.scheduler, value)
