"""Distributed data parallel: a full replica per process, gradients all-reduced during backward."""
from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor, distributed
from torch.nn import Module
from torch.nn.parallel import DistributedDataParallel

from fabric_kit.accelerators import Accelerator
from fabric_kit.checkpoint.checkpoint_io import CheckpointIO
from fabric_kit.environments import ClusterEnvironment
from fabric_kit.precision import Precision
from fabric_kit.strategies.parallel import ParallelStrategy, StartMethod
from fabric_kit.strategies.strategy import BackwardSyncControl
from fabric_kit.wrappers import unwrap


class DDPStrategy(ParallelStrategy, BackwardSyncControl):
    """`start_method="popen"` re-runs the script for each rank (the default, `ddp`); "spawn"/"fork" start ranks
    with torch.multiprocessing (`ddp_spawn`, `ddp_fork`, `ddp_notebook`). `collective_timeout`: see
    `ParallelStrategy`. Extra keyword arguments go to `DistributedDataParallel` (e.g. `find_unused_parameters=True`)."""

    def __init__(self, accelerator: Accelerator | None = None, parallel_devices: list[torch.device] | None = None,
                 cluster_environment: ClusterEnvironment | None = None, precision: Precision | None = None,
                 process_group_backend: str | None = None, timeout: timedelta | None = None,
                 start_method: StartMethod = "popen", collective_timeout: float | timedelta | None = None,
                 checkpoint_io: CheckpointIO | None = None, **ddp_kwargs: Any) -> None:
        super().__init__(accelerator, parallel_devices, cluster_environment, precision, process_group_backend,
                         timeout, start_method, collective_timeout=collective_timeout, checkpoint_io=checkpoint_io)
        self.ddp_kwargs = ddp_kwargs
        self._syncing_each_backward: DistributedDataParallel | None = None
        self._set_up: weakref.WeakSet[DistributedDataParallel] = weakref.WeakSet()

    def __getstate__(self) -> dict[str, Any]:
        # Spawned ranks get a pickled copy before any module is set up; a weak set cannot be pickled.
        return {**self.__dict__, "_set_up": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _set_up=weakref.WeakSet())

    def setup_module(self, module: Module) -> DistributedDataParallel:
        device_ids = [self.root_device.index] if self.root_device.type == "cuda" else None
        ddp = DistributedDataParallel(module, device_ids=device_ids, **self.ddp_kwargs)
        self._set_up.add(ddp)
        return ddp

    def discard_backward(self) -> None:
        """A DDP forward that syncs prepares its reducer for the backward that follows; when that backward never
        runs, the reducer would all-reduce in the next backward even under `no_sync`, on this rank alone. torch has
        no public call to drop the prepared backward: this is what DDP's own `_update_process_group` does to start
        over (the buckets are rebuilt after the next synced backward, on every rank alike)."""
        for module in self._set_up:
            module._has_rebuilt_buckets = False
            module.reducer._reset_state()

    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        return super().get_module_state_dict(_inside_ddp(module))

    def load_module_state_dict(self, module: Module, state_dict: dict[str, Any], strict: bool = True) -> None:
        super().load_module_state_dict(_inside_ddp(module), state_dict, strict)

    def backward(self, tensor: Tensor, module: Module | None, *args: Any, **kwargs: Any) -> None:
        super().backward(tensor, module, *args, **kwargs)
        if self._syncing_each_backward is not None:
            all_reduce_gradients(self._syncing_each_backward)

    @contextmanager
    def backward_inside_forward(self, module: Module) -> Iterator[None]:
        """DDP's forward prepares its reducer for one backward that follows the forward; backward passes inside the
        forward (several per step in manual optimization) would find it unprepared: DDP's own sync fails, or
        skips the second one and the replicas diverge. Inside this context the forward arms nothing (`no_sync`)
        and each backward averages the gradients over the ranks itself, which gives what DDP would."""
        if not isinstance(module, DistributedDataParallel):
            raise TypeError(f"backward_inside_forward needs the module returned by fabric.setup(); got "
                            f"{type(module).__name__}")
        self._syncing_each_backward = module
        try:
            with module.no_sync():
                yield
        finally:
            self._syncing_each_backward = None

    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]:
        if not enabled:
            return nullcontext()
        if not isinstance(module, DistributedDataParallel):
            raise TypeError(f"no_backward_sync needs the module returned by fabric.setup(); got "
                            f"{type(module).__name__}")
        return module.no_sync()


def all_reduce_gradients(module: DistributedDataParallel) -> None:
    """Average the gradients of `module`'s parameters over its process group in one collective, as DDP's reducer
    would: a parameter with a gradient on any rank gets the mean (zeros from the ranks without); one without a
    gradient anywhere keeps None. Gradients that were already equal on every rank stay what they were."""
    parameters = [p for p in module.module.parameters() if p.requires_grad]
    if not parameters:
        return
    group = module.process_group
    has_grad = torch.tensor([p.grad is not None for p in parameters], dtype=torch.uint8,
                            device=parameters[0].device)
    distributed.all_reduce(has_grad, distributed.ReduceOp.MAX, group=group)
    synced = [p for p, any_rank in zip(parameters, has_grad.tolist(), strict=True) if any_rank]
    if not synced:
        return
    for param in synced:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    flat = torch.cat([p.grad.reshape(-1) for p in synced])
    distributed.all_reduce(flat, group=group)
    flat /= distributed.get_world_size(group)
    for param, mean in zip(synced, flat.split([p.numel() for p in synced]), strict=True):
        param.grad.copy_(mean.view_as(param))


def _inside_ddp(module: Module) -> Module:
    """The module a `DistributedDataParallel` wraps (also behind fabric_kit's wrapper), else `module`."""
    module = unwrap(module)
    return module.module if isinstance(module, DistributedDataParallel) else module
