"""User-defined parallelism over a named 2-D device mesh: tensor parallelism (DTensor plans) inside each
`"tensor_parallel"` group and FSDP2 (`fully_shard`) over the `"data_parallel"` dimension, composed by the user's
`parallelize_fn(model, device_mesh)`, as in Lightning's `ModelParallelStrategy`."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any, Literal

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor
from torch.nn import Module

from fabric_kit.accelerators import Accelerator
from fabric_kit.environments import ClusterEnvironment
from fabric_kit.precision import Precision
from fabric_kit.strategies.fsdp.sharding import (
    check_materializable,
    has_meta_tensors,
    materialize,
    without_gradient_sync,
)
from fabric_kit.strategies.parallel import StartMethod
from fabric_kit.strategies.sharded import ShardedStrategy
from fabric_kit.strategies.strategy import BackwardSyncControl

Size = int | Literal["auto"]
MESH_DIMS = ("data_parallel", "tensor_parallel")


class ModelParallelStrategy(ShardedStrategy, BackwardSyncControl):
    """Apply the parallelism `parallelize_fn(model, device_mesh)` chooses, over a mesh of shape
    `(data_parallel_size, tensor_parallel_size)` whose dimensions are named "data_parallel" and "tensor_parallel"
    (`fabric.strategy.device_mesh`). Inside it, apply TP plans over `device_mesh["tensor_parallel"]` and
    `fully_shard` over `device_mesh["data_parallel"]`; the model it returns must hold DTensor parameters.

    Args:
        parallelize_fn: `(model, device_mesh) -> model`, called by `fabric.setup_module(model)`; None: the model
            arrives parallelized (`LightningModule.configure_model` under the Trainer, using `self.device_mesh`).
        data_parallel_size: ranks that hold different batches: an int, or "auto" (the number of nodes, or the world
            size divided by an int `tensor_parallel_size`).
        tensor_parallel_size: ranks that split each layer and see the same batches: an int, or "auto" (the
            processes per node, or the world size divided by an int `data_parallel_size`).
        save_distributed_checkpoint: True: `fabric.save` writes a directory of every rank's shards (loadable into
            any other layout); False: one full file gathered on rank 0.
        process_group_backend: "gloo", "nccl", ...; None picks by device.
        timeout: the process group's timeout (torch's default when None).
        start_method, collective_timeout: as for `ParallelStrategy`.

    Precision `bf16-mixed` / `16-mixed` is autocast, as in Lightning: half-precision matmuls, float32 parameters
    and gradients, so FSDP reduces gradients in float32.
    """

    def __init__(self, parallelize_fn: Callable[[Any, DeviceMesh], Module] | None = None,
                 data_parallel_size: Size = "auto", tensor_parallel_size: Size = "auto",
                 save_distributed_checkpoint: bool = True,
                 process_group_backend: str | None = None, timeout: timedelta | None = None, *,
                 accelerator: Accelerator | None = None, parallel_devices: list[torch.device] | None = None,
                 cluster_environment: ClusterEnvironment | None = None, precision: Precision | None = None,
                 start_method: StartMethod = "popen", collective_timeout: float | timedelta | None = None) -> None:
        super().__init__(accelerator, parallel_devices, cluster_environment, precision, process_group_backend,
                         timeout, start_method, collective_timeout=collective_timeout)
        if parallelize_fn is not None and not callable(parallelize_fn):
            raise TypeError(f"parallelize_fn={parallelize_fn!r} is not callable; accepted: a function "
                            "`(model, device_mesh) -> model` that applies the parallelism, or None for a model "
                            "parallelized before `setup_module` (the Trainer's `configure_model`)")
        for name, value in (("data_parallel_size", data_parallel_size),
                            ("tensor_parallel_size", tensor_parallel_size)):
            if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} is not valid; accepted: a positive int or 'auto'")
        self.parallelize_fn = parallelize_fn
        self.data_parallel_size = data_parallel_size
        self.tensor_parallel_size = tensor_parallel_size
        self.save_distributed_checkpoint = save_distributed_checkpoint
        self._device_mesh: DeviceMesh | None = None

    @property
    def full_checkpoints(self) -> bool:
        return not self.save_distributed_checkpoint

    @property
    def device_mesh(self) -> DeviceMesh:
        """The 2-D mesh ("data_parallel", "tensor_parallel"), built when the processes start (`fabric.launch()`)."""
        if self._device_mesh is None:
            raise RuntimeError("ModelParallelStrategy has no device mesh yet: it is built when the processes start; "
                               "call `fabric.launch()` first")
        return self._device_mesh

    def mesh_shape(self) -> tuple[int, int]:
        """(data_parallel_size, tensor_parallel_size) with "auto" resolved for this world; a shape that does not
        multiply to the world size is a ValueError naming both sizes."""
        world, dp, tp = self.world_size, self.data_parallel_size, self.tensor_parallel_size
        if dp == "auto":
            dp = self.num_nodes if tp == "auto" else world // tp if world % tp == 0 else 0
        if tp == "auto":
            tp = world // dp if dp and world % dp == 0 else 0
        if dp * tp != world:
            raise ValueError(f"data_parallel_size={self.data_parallel_size!r} and tensor_parallel_size="
                             f"{self.tensor_parallel_size!r} do not make a mesh of the world size {world}; accepted: "
                             f"sizes whose product is {world} (either may be 'auto')")
        return dp, tp

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        """The data-parallel rank and size: the ranks of one tensor-parallel group get the same batches."""
        mesh = self.device_mesh["data_parallel"]
        return {"num_replicas": mesh.size(), "rank": mesh.get_local_rank()}

    def setup_environment(self) -> None:
        shape = self.mesh_shape()  # before the process group: a bad shape fails without waiting for peers
        super().setup_environment()
        self._device_mesh = init_device_mesh(self.root_device.type, shape, mesh_dim_names=MESH_DIMS)

    # -- modules --------------------------------------------------------------------------------------------------
    def module_to_device(self, module: Module) -> None:
        """Nothing: `parallelize_fn` places each shard on the mesh's device (moving the whole model to one device
        first would need room for all of it)."""

    def setup_module(self, module: Module) -> Module:
        """`parallelize_fn(module, device_mesh)` (or the module as it came, with `parallelize_fn=None`); a model
        created on the meta device then gets storage for this rank's shards only and is initialised by its
        `reset_parameters()`."""
        on_meta = has_meta_tensors(module)
        if on_meta:
            check_materializable(module)
        fn = self.parallelize_fn
        parallel = module if fn is None else fn(module, self.device_mesh)
        source = "the model given to setup_module" if fn is None else f"parallelize_fn {getattr(fn, '__name__', fn)}"
        if not isinstance(parallel, Module):
            raise TypeError(f"{source} returned a {type(parallel).__name__}; accepted: the nn.Module it parallelized")
        if not any(isinstance(p, DTensor) for p in parallel.parameters()):
            raise TypeError(f"{source} {'is' if fn is None else 'returned'} a {type(parallel).__name__} without "
                            "DTensor parameters, so nothing is parallelized; accepted: a model whose parameters "
                            "were turned into DTensors, with `parallelize_module(model, device_mesh["
                            "'tensor_parallel'], plan)` and/or `fully_shard(model, mesh=device_mesh['data_parallel'])`")
        if on_meta:
            materialize(parallel, self.root_device, stream=self.global_rank, sync_replicas=True)
        return self._set_up(parallel)

    # -- the training step ----------------------------------------------------------------------------------------
    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]:
        """The FSDP-sharded submodules skip their gradient reduction inside (tensor parallelism has none to skip);
        the first backward outside reduces what accumulated."""
        return without_gradient_sync(module) if enabled else nullcontext()
