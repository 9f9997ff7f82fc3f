"""Resolve `Fabric(...)` arguments — and what `fabric run` passed through the environment — into an accelerator,
a precision, a cluster environment and a strategy. Every argument error is raised here, naming the bad value and
what is accepted."""
from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import torch

from fabric_kit.accelerators import Accelerator, accelerator_names, create_accelerator
from fabric_kit.checkpoint.checkpoint_io import CheckpointIO
from fabric_kit.environments import ClusterEnvironment, detect_environment
from fabric_kit.precision import Precision, create_precision, normalize_precision, precision_names
from fabric_kit.rank_zero import rank_zero_warn
from fabric_kit.strategies.parallel import ParallelStrategy
from fabric_kit.strategies.registry import strategy_class, strategy_names
from fabric_kit.strategies.single_device import SingleDeviceStrategy
from fabric_kit.strategies.strategy import Strategy
from fabric_kit.watchdog import collective_timeout_seconds

__all__ = ["Connector", "accelerator_names", "precision_names", "strategy_names"]

# `fabric run --flag` exports FABRIC_KIT_<NAME>; the script's own explicit argument must agree with it.
CLI_FLAGS = {"accelerator": "--accelerator", "strategy": "--strategy", "devices": "--devices",
             "num_nodes": "--num-nodes", "precision": "--precision", "collective_timeout": "--collective-timeout"}
XLA_STRATEGIES = ("single_xla", "xla", "xla_fsdp")  # they imply accelerator="xla" when it is left to "auto"
DEFAULTS: dict[str, Any] = {"accelerator": "auto", "strategy": "auto", "devices": "auto", "num_nodes": 1,
                            "precision": None, "collective_timeout": None}


class Connector:
    """Turns user arguments into components; `strategy` is the result everything else asks."""

    def __init__(self, accelerator: str | Accelerator = "auto", strategy: str | Strategy = "auto",
                 devices: int | str | list[int] = "auto", num_nodes: int = 1,
                 precision: str | int | Precision | None = None,
                 plugins: Any = None, collective_timeout: float | timedelta | None = None) -> None:
        accelerator = _merge_cli("accelerator", accelerator)
        strategy = _merge_cli("strategy", strategy)
        strategy = strategy.lower() if isinstance(strategy, str) else strategy  # names are case-insensitive
        devices = _merge_cli("devices", devices)
        num_nodes = _merge_cli("num_nodes", num_nodes)
        precision = _merge_cli("precision", precision)
        collective_timeout = _merge_cli("collective_timeout", collective_timeout)
        collective_timeout_seconds(collective_timeout)  # a bad value fails here, naming the argument

        precision_plugin, environment, checkpoint_io = _split_plugins(plugins)
        self.accelerator = _resolve_accelerator(accelerator, strategy)
        if strategy == "dp" and self.accelerator.name == "cpu":  # Lightning's fallback: DataParallel needs GPUs
            rank_zero_warn("strategy='dp' (DataParallel) does not run on CPUs: using strategy='ddp' instead")
            strategy = "ddp"
        self.cluster_environment = environment or detect_environment()
        self.num_nodes = _check_num_nodes(num_nodes)
        parallel_devices = self._parallel_devices(devices)
        self.precision = _resolve_precision(precision, precision_plugin, parallel_devices[0].type)
        self.strategy = self._resolve_strategy(strategy, parallel_devices)
        if checkpoint_io is not None:
            self.strategy.checkpoint_io = checkpoint_io
        _set_collective_timeout(self.strategy, collective_timeout)

    def _parallel_devices(self, devices: int | str | list[int]) -> list[torch.device]:
        """The device of each local process, through the accelerator's `parse_devices` and `get_parallel_devices`
        (Lightning's protocol; "auto" is its `auto_device_count()`)."""
        environment, accelerator, requested = self.cluster_environment, self.accelerator, devices
        external_auto = environment.creates_processes_externally and devices == "auto"
        if external_auto:
            # torchrun / srun decided how many processes there are; one device per local process.
            devices = int(os.environ.get("LOCAL_WORLD_SIZE", 0)) or max(1, environment.world_size() // self.num_nodes)
        elif devices == "auto":
            devices = accelerator.auto_device_count()
        parallel = accelerator.get_parallel_devices(accelerator.parse_devices(devices)) if devices else []
        if not parallel:
            raise ValueError(f"devices={requested!r} found no {accelerator.name} device on this machine")
        if environment.creates_processes_externally and not external_auto:
            environment.validate_settings(len(parallel), self.num_nodes)
        return list(parallel)

    def _resolve_strategy(self, strategy: str | Strategy, devices: list[torch.device]) -> Strategy:
        many = len(devices) * self.num_nodes > 1 or self.cluster_environment.world_size() > 1
        if isinstance(strategy, Strategy):
            instance = strategy
        else:
            single, multiple = ("single_xla", "xla") if self.accelerator.name == "xla" else ("single_device", "ddp")
            if multiple == "ddp" and is_interactive():
                multiple = "ddp_fork"  # a notebook has no script for `ddp` to run again in each rank
            name = strategy if strategy != "auto" else (multiple if many else single)
            cls, preset = strategy_class(name)
            if issubclass(cls, SingleDeviceStrategy):
                if many:
                    raise ValueError(f"strategy={name!r} runs one process, but devices={len(devices)} and "
                                     f"num_nodes={self.num_nodes} ask for more; use strategy='ddp' or one device")
                instance = cls(device=devices[0], **preset)
            else:
                instance = cls(**preset)
        if instance.accelerator is None:
            instance.accelerator = self.accelerator
        if instance.precision_is_default:
            instance.precision = self.precision
        if isinstance(instance, ParallelStrategy):
            if not instance.parallel_devices:
                instance.parallel_devices = devices
            if instance.cluster_environment is None:
                instance.cluster_environment = self.cluster_environment
            instance.num_nodes = self.num_nodes
            if not self.cluster_environment.creates_processes_externally:
                self.cluster_environment.set_world_size(len(instance.parallel_devices) * self.num_nodes)
                self.cluster_environment.set_global_rank(self.cluster_environment.node_rank() * len(devices))
        instance.configure_launcher()
        if instance.launcher is not None and not instance.launcher.is_interactive_compatible and is_interactive():
            shown = strategy if isinstance(strategy, str) else type(strategy).__name__
            raise RuntimeError(f"strategy={shown!r} starts its ranks by running the script again, which an "
                               "interactive session (a notebook, `python -i`) does not have: use strategy='ddp_fork' "
                               "(or 'ddp_notebook'), or run the code as a script")
        return instance


def is_interactive() -> bool:
    """Whether this is an interactive session, as Lightning detects one: a Jupyter/IPython kernel or the Python
    prompt sets `sys.ps1`, `python -i` sets the interactive flag."""
    return hasattr(sys, "ps1") or bool(sys.flags.interactive)


def _merge_cli(name: str, value: Any) -> Any:
    """Take the value `fabric run` exported unless the script passed a different explicit one (an error)."""
    exported = os.environ.get("FABRIC_KIT_" + name.upper())
    if exported is None or exported == "auto":
        return value
    default = DEFAULTS[name]
    if value == default or value is default:
        return int(exported) if name == "num_nodes" else exported
    if _agrees(name, value, exported):
        return value
    shown = value if isinstance(value, (str, int, list, type(None))) else type(value).__name__
    raise ValueError(f"`fabric run {CLI_FLAGS[name]}={exported}` disagrees with `Fabric({name}={shown!r})` in the "
                     "script; remove one of the two")


def _agrees(name: str, value: Any, exported: str) -> bool:
    if name == "precision":
        setting = value.precision if isinstance(value, Precision) else normalize_precision(value)
        return setting == normalize_precision(exported)
    if name == "collective_timeout":
        return collective_timeout_seconds(value) == collective_timeout_seconds(exported)
    if name == "strategy" and isinstance(value, Strategy):
        return isinstance(value, strategy_class(exported)[0])
    if name == "accelerator" and isinstance(value, Accelerator):
        return value.name == ("cuda" if exported == "gpu" else exported)
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return str(value) == exported


def _set_collective_timeout(strategy: Strategy, value: float | timedelta | str | None) -> None:
    """Hand Fabric's `collective_timeout` (or `fabric run --collective-timeout`) to a multi-process strategy; the
    same setting given to both with different values is an error."""
    if value is None or not isinstance(strategy, ParallelStrategy):
        return
    if isinstance(value, str):  # exported by `fabric run`, checked by `_merge_cli`
        value = float(value)
    if strategy.collective_timeout is None:
        strategy.collective_timeout = value
    elif collective_timeout_seconds(strategy.collective_timeout) != collective_timeout_seconds(value):
        raise ValueError(f"collective_timeout={value!r} disagrees with {type(strategy).__name__}("
                         f"collective_timeout={strategy.collective_timeout!r}); set it in one place")


def _split_plugins(plugins: Any) -> tuple[Precision | None, ClusterEnvironment | None, CheckpointIO | None]:
    """The precision, cluster environment and CheckpointIO among `plugins` (one plugin or a list), at most one of
    each kind."""
    found: dict[type, Any] = {}
    for plugin in plugins if isinstance(plugins, (list, tuple)) else ([plugins] if plugins is not None else []):
        kind = next((k for k in (Precision, ClusterEnvironment, CheckpointIO) if isinstance(plugin, k)), None)
        if kind is None:
            raise TypeError(f"plugin {plugin!r} is not supported; accepted: a Precision, a ClusterEnvironment or "
                            "a CheckpointIO instance")
        if kind in found:
            raise ValueError(f"plugins= holds two {kind.__name__} plugins, {type(found[kind]).__name__} and "
                             f"{type(plugin).__name__}; pass at most one of each kind")
        found[kind] = plugin
    return found.get(Precision), found.get(ClusterEnvironment), found.get(CheckpointIO)


def _resolve_precision(precision: str | int | Precision | None, plugin: Precision | None,
                       device_type: str) -> Precision:
    """The precision plugin: one given as `precision=` or in `plugins=`, else the one the setting names."""
    if isinstance(precision, Precision):
        if plugin is not None:
            raise ValueError(f"precision={type(precision).__name__}(...) and the plugin {type(plugin).__name__} in "
                             "plugins= both set the precision; pass one of the two")
        return precision
    if plugin is not None:
        if precision is not None:
            raise ValueError(f"precision={precision!r} and the plugin {type(plugin).__name__}"
                             f"(precision={plugin.precision!r}) in plugins= both set the precision; pass one of the "
                             "two")
        return plugin
    return create_precision(normalize_precision(precision), device_type)


def _resolve_accelerator(accelerator: str | Accelerator, strategy: str | Strategy) -> Accelerator:
    if isinstance(accelerator, Accelerator):
        return accelerator
    if isinstance(strategy, Strategy) and strategy.accelerator is not None:
        return strategy.accelerator
    if not isinstance(accelerator, str):
        raise ValueError(f"accelerator={accelerator!r} is not known; accepted: {', '.join(accelerator_names())} "
                         "or an Accelerator instance")
    if accelerator == "auto" and strategy in XLA_STRATEGIES:
        accelerator = "xla"
    return create_accelerator(accelerator)


def _check_num_nodes(num_nodes: Any) -> int:
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ValueError(f"num_nodes={num_nodes!r} is not valid: pass a positive integer")
    return num_nodes


