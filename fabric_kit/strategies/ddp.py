"""Distributed data parallel: a full replica per process, gradients all-reduced during backward."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any

import torch
from torch.nn import Module
from torch.nn.parallel import DistributedDataParallel

from fabric_kit.accelerators import Accelerator
from fabric_kit.environments import ClusterEnvironment
from fabric_kit.precision import Precision
from fabric_kit.strategies.parallel import ParallelStrategy, StartMethod
from fabric_kit.strategies.strategy import BackwardSyncControl


class DDPStrategy(ParallelStrategy, BackwardSyncControl):
    """`start_method="popen"` re-runs the script for each rank (the default, `ddp`); "spawn"/"fork" start ranks
    with torch.multiprocessing (`ddp_spawn`, `ddp_fork`, `ddp_notebook`). `collective_timeout`: see
    `ParallelStrategy`. Extra keyword arguments go to `DistributedDataParallel` (e.g. `find_unused_parameters=True`)."""

    def __init__(self, accelerator: Accelerator | None = None, parallel_devices: list[torch.device] | None = None,
                 cluster_environment: ClusterEnvironment | None = None, precision: Precision | None = None,
                 process_group_backend: str | None = None, timeout: timedelta | None = None,
                 start_method: StartMethod = "popen", collective_timeout: float | timedelta | None = None,
                 **ddp_kwargs: Any) -> None:
        super().__init__(accelerator, parallel_devices, cluster_environment, precision, process_group_backend,
                         timeout, start_method, collective_timeout=collective_timeout)
        self.ddp_kwargs = ddp_kwargs

    def setup_module(self, module: Module) -> DistributedDataParallel:
        device_ids = [self.root_device.index] if self.root_device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, **self.ddp_kwargs)

    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]:
        if not enabled:
            return nullcontext()
        if not isinstance(module, DistributedDataParallel):
            raise TypeError(f"no_backward_sync needs the module returned by fabric.setup(); got "
                            f"{type(module).__name__}")
        return module.no_sync()
