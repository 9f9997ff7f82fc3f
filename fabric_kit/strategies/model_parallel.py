"""User-defined parallelism over a named device mesh: tensor parallelism (DTensor plans) inside each
`"tensor_parallel"` group and FSDP2 (`fully_shard`) over the `"data_parallel"` dimension, composed by the user's
`parallelize_fn(model, device_mesh)`, as in Lightning's `ModelParallelStrategy`; and, beyond Lightning, pipeline
stages over an outermost `"pipeline_parallel"` dimension (`fabric_kit.strategies.pipeline`)."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor
from torch.nn import Module

from fabric_kit.accelerators import Accelerator
from fabric_kit.checkpoint import sharded as checkpoint
from fabric_kit.checkpoint.state import Filter
from fabric_kit.empty_init import check_materializable, has_meta_tensors
from fabric_kit.environments import ClusterEnvironment
from fabric_kit.memory_estimate import StateLayout
from fabric_kit.precision import Precision
from fabric_kit.precision.amp import LossScaling
from fabric_kit.strategies.fsdp.sharding import (
    materialize,
    without_gradient_sync,
)
from fabric_kit.strategies.parallel import StartMethod
from fabric_kit.strategies.pipeline import (
    PipelinedModel,
    StageSplit,
    check_schedule,
    check_schedule_name,
    rank_stages,
)
from fabric_kit.strategies.pipeline.checkpoint import whole_param_groups
from fabric_kit.strategies.sharded import ShardedStrategy
from fabric_kit.strategies.strategy import BackwardSyncControl, ForwardBackwardControl

Size = int | Literal["auto"]
MESH_DIMS = ("data_parallel", "tensor_parallel")
PIPELINE_DIM = "pipeline_parallel"


class ModelParallelStrategy(ShardedStrategy, BackwardSyncControl, ForwardBackwardControl):
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
        pipeline_parallel_size: pipeline ranks, the outermost mesh dimension "pipeline_parallel" (1: none). Each
            rank then holds only its stage(s) of the model: `setup_module` cuts the model at `pipeline_split`,
            calls `parallelize_fn(stage, device_mesh)` for each of this rank's stages (inside, the "data_parallel"
            and "tensor_parallel" dimensions apply as without a pipeline; returning the stage as it is is fine)
            and the set-up model is trained with `fabric.forward_backward(model, x, y, loss_fn=...)`.
        pipeline_split: module names where stages begin, in the forward's order (`["blocks.2"]`: two stages);
            split points + 1 stages, one per pipeline rank, or several with "interleaved_1f1b". Or a function
            `(model, pipeline_parallel_size) -> stages` for a model whose forward is not one chain of its modules:
            given the whole model (on the meta device under `init_module(empty_init=True)`), it returns the list of
            stage modules, built from the model's own modules, with forwards of their own; every parameter in
            exactly one stage. The model then keeps only this rank's stages (its names stay the whole model's).
        pipeline_schedule: "gpipe", "1f1b" or "interleaved_1f1b" (torch.distributed.pipelining's schedules).
        pipeline_microbatches: micro-batches each batch is split into (dim 0 of every input and the target); None:
            `pipeline_parallel_size`.

    Precision `bf16-mixed` / `16-mixed` is autocast, as in Lightning: half-precision matmuls, float32 parameters
    and gradients, so FSDP reduces gradients in float32. A pipeline runs under the precision as a plain forward
    does (inputs converted, the schedule under its forward context, the last stage's output converted before the
    loss); a precision that scales the loss (`16-mixed`) is refused there: the schedule runs backward itself.
    """

    def __init__(self, parallelize_fn: Callable[[Any, DeviceMesh], Module] | None = None,
                 data_parallel_size: Size = "auto", tensor_parallel_size: Size = "auto",
                 save_distributed_checkpoint: bool = True,
                 process_group_backend: str | None = None, timeout: timedelta | None = None, *,
                 accelerator: Accelerator | None = None, parallel_devices: list[torch.device] | None = None,
                 cluster_environment: ClusterEnvironment | None = None, precision: Precision | None = None,
                 start_method: StartMethod = "popen", collective_timeout: float | timedelta | None = None,
                 pipeline_parallel_size: int = 1, pipeline_split: StageSplit = (),
                 pipeline_schedule: str = "1f1b", pipeline_microbatches: int | None = None) -> None:
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
        microbatches = pipeline_parallel_size if pipeline_microbatches is None else pipeline_microbatches
        for name, number in (("pipeline_parallel_size", pipeline_parallel_size),
                             ("pipeline_microbatches", microbatches)):
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise ValueError(f"{name}={number!r} is not valid; accepted: a positive int")
        if isinstance(pipeline_split, str):
            raise TypeError(f"pipeline_split={pipeline_split!r} is one string; accepted: a list of module names, "
                            f"e.g. [{pipeline_split!r}], or a function `(model, pipeline_parallel_size) -> stages`")
        if callable(pipeline_split):  # the stage count is known when it has run, in `setup_module`
            check_schedule_name(pipeline_schedule)
        else:
            check_schedule(pipeline_schedule, len(pipeline_split) + 1, pipeline_parallel_size)
        if pipeline_parallel_size > 1 and not save_distributed_checkpoint:
            raise ValueError("save_distributed_checkpoint=False with pipeline_parallel_size="
                             f"{pipeline_parallel_size}: no rank holds the whole model to write one full file; "
                             "accepted: save_distributed_checkpoint=True (then `fabric consolidate DIR` writes "
                             "the full file)")
        self.pipeline_parallel_size = pipeline_parallel_size
        self.pipeline_split = pipeline_split if callable(pipeline_split) else list(pipeline_split)
        self.pipeline_schedule = pipeline_schedule
        self.pipeline_microbatches = microbatches
        self.parallelize_fn = parallelize_fn
        self.data_parallel_size = data_parallel_size
        self.tensor_parallel_size = tensor_parallel_size
        self.save_distributed_checkpoint = save_distributed_checkpoint
        self._device_mesh: DeviceMesh | None = None
        self._stage_group: dist.ProcessGroup | None = None
        self._stage_of: dict[str, int] = {}  # parameter name -> stage index, of the last pipelined model set up

    @property
    def full_checkpoints(self) -> bool:
        return not self.save_distributed_checkpoint

    def _checkpoint_io_hint(self) -> str:
        return ", or pass save_distributed_checkpoint=False to save one file through it"

    @property
    def device_mesh(self) -> DeviceMesh:
        """The mesh ("data_parallel", "tensor_parallel"), with "pipeline_parallel" outermost when
        `pipeline_parallel_size > 1`, built when the processes start (`fabric.launch()`)."""
        if self._device_mesh is None:
            raise RuntimeError("ModelParallelStrategy has no device mesh yet: it is built when the processes start; "
                               "call `fabric.launch()` first")
        return self._device_mesh

    def mesh_shape(self) -> tuple[int, ...]:
        """(data_parallel_size, tensor_parallel_size), after pipeline_parallel_size when that is > 1, with "auto"
        resolved for this world; a shape that does not multiply to the world size is a ValueError naming the
        sizes."""
        pp = self.pipeline_parallel_size
        if self.world_size % pp:
            raise ValueError(f"pipeline_parallel_size={pp} does not divide the world size {self.world_size}; "
                             f"accepted: a divisor of {self.world_size}")
        world, dp, tp = self.world_size // pp, self.data_parallel_size, self.tensor_parallel_size
        if dp == "auto":
            dp = self.num_nodes if tp == "auto" else world // tp if world % tp == 0 else 0
        if tp == "auto":
            tp = world // dp if dp and world % dp == 0 else 0
        if dp * tp != world:
            within = f" / pipeline_parallel_size={pp}" if pp > 1 else ""
            raise ValueError(f"data_parallel_size={self.data_parallel_size!r} and tensor_parallel_size="
                             f"{self.tensor_parallel_size!r} do not make a mesh of the world size {world}"
                             f"{within}; accepted: sizes whose product is {world} (either may be 'auto')")
        return (pp, dp, tp) if pp > 1 else (dp, tp)

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        """The data-parallel rank and size: the ranks of one tensor-parallel group get the same batches."""
        mesh = self.device_mesh["data_parallel"]
        return {"num_replicas": mesh.size(), "rank": mesh.get_local_rank()}

    def setup_environment(self) -> None:
        shape = self.mesh_shape()  # before the process group: a bad shape fails without waiting for peers
        super().setup_environment()
        names = (PIPELINE_DIM, *MESH_DIMS) if len(shape) > len(MESH_DIMS) else MESH_DIMS
        self._device_mesh = init_device_mesh(self.root_device.type, shape, mesh_dim_names=names)
        if len(shape) > len(MESH_DIMS):  # the ranks of one stage: where its plain (replicated) tensors agree
            groups = [stage.flatten().tolist() for stage in self._device_mesh.mesh]
            self._stage_group, _ = dist.new_subgroups_by_enumeration(groups)

    # -- modules --------------------------------------------------------------------------------------------------
    def state_layout(self) -> StateLayout:
        """Not known before the model is parallelized: `parallelize_fn` decides each tensor's placement."""
        raise NotImplementedError("estimate_memory cannot lay out ModelParallelStrategy's state: each tensor's "
                                  "placement is what its parallelize_fn makes of it, known only once it ran; "
                                  "estimate the FSDP part alone with strategy='fsdp'")

    def module_to_device(self, module: Module) -> None:
        """Nothing: `parallelize_fn` places each shard on the mesh's device (moving the whole model to one device
        first would need room for all of it)."""

    def setup_module(self, module: Module) -> Module:
        """`parallelize_fn(module, device_mesh)` (or the module as it came, with `parallelize_fn=None`); a model
        created on the meta device then gets storage for this rank's shards only and is initialised by its
        `reset_parameters()`. With a pipeline, the model is first cut down to this rank's stages (in place: the
        user's model keeps only their modules) and each stage is parallelized."""
        pipelined = self.pipeline_parallel_size > 1
        if pipelined and isinstance(self.precision, LossScaling) and self.precision.scaler is not None:
            raise ValueError(f"precision={self.precision.precision!r} scales the loss, which a pipeline schedule "
                             "cannot (it runs backward itself); accepted under pipeline_parallel_size > 1: "
                             "'bf16-mixed', '32-true', 'bf16-true'")
        on_meta = has_meta_tensors(module)
        if on_meta:
            check_materializable(module)
        stages, indices, num_stages = [module], [0], 1
        if pipelined:
            stages, indices, num_stages = rank_stages(module, self.pipeline_split, self.pipeline_schedule,
                                                      self.pipeline_parallel_size,
                                                      self.device_mesh[PIPELINE_DIM].get_local_rank())
        fn = self.parallelize_fn
        source = "the model given to setup_module" if fn is None else f"parallelize_fn {getattr(fn, '__name__', fn)}"
        parallel = [stage if fn is None else fn(stage, self.device_mesh) for stage in stages]
        for stage in parallel:
            if not isinstance(stage, Module):
                raise TypeError(f"{source} returned a {type(stage).__name__}; accepted: the nn.Module it "
                                "parallelized")
        if not pipelined and not any(isinstance(p, DTensor) for p in parallel[0].parameters()):
            raise TypeError(f"{source} {'is' if fn is None else 'returned'} a {type(parallel[0]).__name__} without "
                            "DTensor parameters, so nothing is parallelized; accepted: a model whose parameters "
                            "were turned into DTensors, with `parallelize_module(model, device_mesh["
                            "'tensor_parallel'], plan)` and/or `fully_shard(model, mesh=device_mesh['data_parallel'])`")
        if on_meta:
            materialize(module if pipelined else parallel[0], self.root_device, stream=self.global_rank,
                        sync_replicas=True, group=self._stage_group if pipelined else None)
        if not pipelined:
            return self._set_up(parallel[0])
        index_of = {id(p): index for stage, index in zip(parallel, indices, strict=True) for p in stage.parameters()}
        self._stage_of = {name: index_of[id(p)] for name, p in module.named_parameters()}  # the whole model's names
        return self._set_up(PipelinedModel(
            parallel, indices, num_stages, self.pipeline_schedule, self.pipeline_microbatches,
            self.device_mesh[PIPELINE_DIM].get_group(), self.root_device, self.precision.convert_output))

    # -- the training step ----------------------------------------------------------------------------------------
    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]:
        """The FSDP-sharded submodules skip their gradient reduction inside (tensor parallelism has none to skip);
        the first backward outside reduces what accumulated."""
        return without_gradient_sync(module) if enabled else nullcontext()

    def checkpoint_entries(self, state: dict[str, Any], filter: Filter) -> dict[str, Any]:
        """As for every sharded model; with a pipeline, each optimizer's param groups name every stage's
        parameters (DCP keeps one rank's lists)."""
        entries = super().checkpoint_entries(state, filter)
        if self.pipeline_parallel_size == 1 or self.full_checkpoints:
            return entries
        _, optimizers, _ = checkpoint.split_state(state)
        group = self.device_mesh[PIPELINE_DIM].get_group()
        return {key: whole_param_groups(value, self._stage_of, group) if key in optimizers else value
                for key, value in entries.items()}

    def runs_forward_backward(self, module: Module) -> bool:
        return isinstance(module, PipelinedModel)

    def forward_backward(self, module: Module, inputs: tuple[Any, ...], target: Any,
                         loss_fn: Callable[..., Tensor]) -> Tensor:
        """The pipeline schedule over one batch, under the precision as a plain forward: the inputs converted (float
        ones to the compute dtype), the schedule under its forward context (bf16-mixed: autocast), the last stage's
        output converted for `loss_fn`."""
        if not isinstance(module, PipelinedModel):
            raise TypeError(f"forward_backward runs the pipeline of a model set up with pipeline_parallel_size > 1; "
                            f"got a {type(module).__name__}")
        inputs = self.precision.convert_input(self.batch_to_device(inputs))
        with self.precision.forward_context():
            return module.forward_backward(inputs, self.batch_to_device(target), loss_fn)

    def combine_gradient_norms(self, norm: Tensor, norm_type: float) -> Tensor:
        """Each pipeline rank normed its own stages' gradients: combined over the pipeline into the model's."""
        if self.pipeline_parallel_size == 1:
            return norm
        group = self.device_mesh[PIPELINE_DIM].get_group()
        if norm_type == float("inf"):
            dist.all_reduce(norm, op=dist.ReduceOp.MAX, group=group)
            return norm
        power = norm.pow(norm_type)
        dist.all_reduce(power, group=group)
        return power.pow(1.0 / norm_type)
