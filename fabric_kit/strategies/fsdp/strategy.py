"""Fully sharded data parallel (FSDP2, `torch.distributed.fsdp.fully_shard`): each rank holds a shard of every
parameter, gradient and optimizer state; parameters are gathered per shard group just for its forward and
backward. Models larger than one process's memory can be created on the meta device and materialise sharded."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any, Literal

import torch
from torch.nn import Module

from fabric_kit.accelerators import Accelerator
from fabric_kit.environments import ClusterEnvironment
from fabric_kit.precision import Precision
from fabric_kit.precision.fsdp import fsdp_precision, mixed_precision_policy
from fabric_kit.strategies.fsdp.sharding import (
    FSDPModule,
    ModulePolicy,
    apply_activation_checkpointing,
    as_predicate,
    build_mesh,
    check_materializable,
    check_sharding_strategy,
    has_meta_tensors,
    materialize,
    shard,
    without_gradient_sync,
)
from fabric_kit.strategies.parallel import StartMethod
from fabric_kit.strategies.sharded import ShardedStrategy
from fabric_kit.strategies.strategy import BackwardSyncControl

StateDictType = Literal["sharded", "full"]


class FSDPStrategy(ShardedStrategy, BackwardSyncControl):
    """Shard the model over all ranks.

    Args:
        auto_wrap_policy: which submodules become their own shard group (gathered and freed one at a time): a set
            of module classes, e.g. `{Block}`, or a function `module -> bool`. The root takes what is left.
        activation_checkpointing_policy: which submodules recompute their activations in backward (same forms).
        cpu_offload: keep sharded parameters, gradients and optimizer state in CPU memory.
        sharding_strategy: "FULL_SHARD" (free gathered parameters after forward), "SHARD_GRAD_OP" (keep them until
            backward), "HYBRID_SHARD" (shard within a node, replicate across nodes), "NO_SHARD" (replicate).
        state_dict_type: "sharded" saves a directory in which every rank writes its shards; "full" gathers one
            file on rank 0 that a single-process run can load.
        start_method: how ranks are started, as for DDP: "popen" (re-run the script), "spawn", "fork".
        collective_timeout: seconds before the collective watchdog ends a hang (see `ParallelStrategy`).
    """

    def __init__(self, accelerator: Accelerator | None = None, parallel_devices: list[torch.device] | None = None,
                 cluster_environment: ClusterEnvironment | None = None, precision: Precision | None = None,
                 process_group_backend: str | None = None, timeout: timedelta | None = None,
                 auto_wrap_policy: ModulePolicy = None, activation_checkpointing_policy: ModulePolicy = None,
                 cpu_offload: bool = False, sharding_strategy: str = "FULL_SHARD",
                 state_dict_type: StateDictType = "sharded", start_method: StartMethod = "popen",
                 collective_timeout: float | timedelta | None = None) -> None:
        super().__init__(accelerator, parallel_devices, cluster_environment, precision, process_group_backend,
                         timeout, start_method, collective_timeout=collective_timeout)
        if state_dict_type not in ("sharded", "full"):
            raise ValueError(f"state_dict_type={state_dict_type!r} is not supported; accepted: 'sharded', 'full'")
        self.auto_wrap_policy = as_predicate(auto_wrap_policy, "auto_wrap_policy")
        self.activation_checkpointing_policy = as_predicate(activation_checkpointing_policy,
                                                            "activation_checkpointing_policy")
        self.cpu_offload = cpu_offload
        self.sharding_strategy = check_sharding_strategy(sharding_strategy)
        self.state_dict_type = state_dict_type
        self._mesh: Any = None

    @property
    def full_checkpoints(self) -> bool:
        return self.state_dict_type == "full"

    @property
    def precision(self) -> Precision:
        return self._precision

    @precision.setter
    def precision(self, precision: Precision) -> None:
        # Mixed precision is FSDP's job (a cast when shards are gathered), not autocast's.
        self._precision = fsdp_precision(precision)

    def setup_environment(self) -> None:
        super().setup_environment()
        self._mesh = build_mesh(self.sharding_strategy, self.root_device.type, self.world_size, self.num_nodes)

    # -- modules and optimizers -----------------------------------------------------------------------------------
    def setup_module(self, module: Module) -> Module:
        if self._mesh is None:
            raise RuntimeError("FSDPStrategy has no device mesh yet: call `fabric.launch()` before setting up models")
        on_meta = has_meta_tensors(module)
        if on_meta:
            check_materializable(module)
        apply_activation_checkpointing(module, self.activation_checkpointing_policy)
        sharded = shard(module, self.auto_wrap_policy, self._mesh,
                        reshard_after_forward=self.sharding_strategy != "SHARD_GRAD_OP",
                        mp_policy=mixed_precision_policy(self.precision), cpu_offload=self.cpu_offload)
        if on_meta:
            materialize(sharded, torch.device("cpu") if self.cpu_offload else self.root_device,
                        stream=self._mesh.get_local_rank("shard"))
        return self._set_up(sharded)

    # -- the training step ----------------------------------------------------------------------------------------
    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]:
        """Gradients accumulate unsharded and unreduced inside; the first backward outside reduces them all."""
        if not enabled:
            return nullcontext()
        if not isinstance(module, FSDPModule):
            raise TypeError(f"no_backward_sync needs the module returned by fabric.setup_module(); got "
                            f"{type(module).__name__}")
        return without_gradient_sync(module)
