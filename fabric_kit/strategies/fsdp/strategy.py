"""Fully sharded data parallel (FSDP2, `torch.distributed.fsdp.fully_shard`): each rank holds a shard of every
parameter, gradient and optimizer state; parameters are gathered per shard group just for its forward and
backward. Models larger than one process's memory can be created on the meta device and materialise sharded."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import timedelta
from typing import Any, Literal

import torch
from torch.distributed.fsdp import ShardingStrategy
from torch.nn import Module
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from fabric_kit.accelerators import Accelerator
from fabric_kit.empty_init import check_materializable, has_meta_tensors
from fabric_kit.environments import ClusterEnvironment
from fabric_kit.memory_estimate import StateLayout
from fabric_kit.precision import Precision
from fabric_kit.precision.fsdp import fsdp_precision, mixed_precision_policy
from fabric_kit.repointing import parameter_names, repoint_optimizer
from fabric_kit.strategies.fsdp import options
from fabric_kit.strategies.fsdp.options import CPUOffloadArgument, DeviceMeshArgument, MixedPrecisionArgument
from fabric_kit.strategies.fsdp.sharding import (
    FSDPModule,
    ModulePolicy,
    apply_activation_checkpointing,
    as_predicate,
    check_stateless,
    materialize,
    shard,
    without_gradient_sync,
)
from fabric_kit.strategies.parallel import StartMethod
from fabric_kit.strategies.sharded import OPTIMIZER_AFTER_SETUP, ShardedStrategy
from fabric_kit.strategies.strategy import BackwardSyncControl

StateDictType = Literal["sharded", "full"]


class FSDPStrategy(ShardedStrategy, BackwardSyncControl):
    """Shard the model over all ranks.

    Args:
        auto_wrap_policy: which submodules become their own shard group (gathered and freed one at a time): a set
            of module classes, e.g. `{Block}`, or a function `module -> bool`. The root takes what is left.
        activation_checkpointing_policy: which submodules recompute their activations in backward (same forms).
        activation_checkpointing: Lightning's older name (a module class or a list of them); deprecated.
        cpu_offload: keep sharded parameters, gradients and optimizer state in CPU memory: True / False, or
            torch's `CPUOffload(offload_params=...)` / `CPUOffloadPolicy()`.
        mixed_precision: the dtypes FSDP casts to, overriding those of Fabric's precision: FSDP2's
            `MixedPrecisionPolicy`, or FSDP1's `MixedPrecision` (param_dtype, reduce_dtype and the forward input
            casts map; buffer_dtype and keep_low_precision_grads have no FSDP2 counterpart and are refused).
        sharding_strategy: "FULL_SHARD" (free gathered parameters after forward), "SHARD_GRAD_OP" (keep them until
            backward), "HYBRID_SHARD" (shard within a node, replicate across nodes), "NO_SHARD" (replicate); in
            any case, or a `torch.distributed.fsdp.ShardingStrategy` member.
        device_mesh: the mesh to shard over instead of the one sharding_strategy implies: a `DeviceMesh` (1-D:
            shard; 2-D: replicate x shard) or a tuple `(replicas, shard size)`.
        state_dict_type: "sharded" saves a directory in which every rank writes its shards; "full" gathers one
            file on rank 0 that a single-process run can load.
        start_method: how ranks are started, as for DDP: "popen" (re-run the script), "spawn", "fork".
        collective_timeout: seconds before the collective watchdog ends a hang (see `ParallelStrategy`).
    """

    def __init__(self, accelerator: Accelerator | None = None, parallel_devices: list[torch.device] | None = None,
                 cluster_environment: ClusterEnvironment | None = None, precision: Precision | None = None,
                 process_group_backend: str | None = None, timeout: timedelta | None = None,
                 auto_wrap_policy: ModulePolicy = None, activation_checkpointing_policy: ModulePolicy = None,
                 cpu_offload: CPUOffloadArgument = False, mixed_precision: MixedPrecisionArgument = None,
                 sharding_strategy: str | ShardingStrategy = "FULL_SHARD", state_dict_type: StateDictType = "sharded",
                 device_mesh: DeviceMeshArgument = None, start_method: StartMethod = "popen",
                 collective_timeout: float | timedelta | None = None,
                 activation_checkpointing: type[Module] | list[type[Module]] | None = None) -> None:
        super().__init__(accelerator, parallel_devices, cluster_environment, precision, process_group_backend,
                         timeout, start_method, collective_timeout=collective_timeout)
        if state_dict_type not in ("sharded", "full"):
            raise ValueError(f"state_dict_type={state_dict_type!r} is not supported; accepted: 'sharded', 'full'")
        self.auto_wrap_policy = as_predicate(auto_wrap_policy, "auto_wrap_policy")
        self.activation_checkpointing_policy = as_predicate(
            options.activation_checkpointing_policy(activation_checkpointing, activation_checkpointing_policy),
            "activation_checkpointing_policy")
        self._offload_policy = options.offload_policy(cpu_offload)
        self.cpu_offload = self._offload_policy is not None
        self.mixed_precision = options.mixed_precision_policy(mixed_precision)
        self.sharding_strategy = options.sharding_strategy_name(sharding_strategy)
        options.check_device_mesh(device_mesh, self.sharding_strategy)
        self.device_mesh = device_mesh
        self.state_dict_type = state_dict_type
        self._mesh: Any = None
        self._out_of_memory_check: Callable[[], None] | None = None  # while an out-of-memory attempt runs
        self._out_of_memory_hooks: list[RemovableHandle] = []
        self._forwarded_in_attempt: list[Module] = []

    @property
    def full_checkpoints(self) -> bool:
        return self.state_dict_type == "full"

    def _checkpoint_io_hint(self) -> str:
        return ", or pass state_dict_type='full' to save one file through it"

    @property
    def precision(self) -> Precision:
        return self._precision

    @precision.setter
    def precision(self, precision: Precision) -> None:
        # Mixed precision is FSDP's job (a cast when shards are gathered), not autocast's.
        self._precision = fsdp_precision(precision)

    def setup_environment(self) -> None:
        super().setup_environment()
        self._mesh = options.build_mesh(self.device_mesh, self.sharding_strategy, self.root_device.type,
                                        self.world_size, self.num_nodes)

    # -- modules and optimizers -----------------------------------------------------------------------------------
    def setup_module_and_optimizers(self, module: Module, optimizers: list[Optimizer],
                                    scheduler: Any = None) -> tuple[Module, list[Optimizer], Any]:
        """`fabric.setup(model, optimizer)`, as in every other strategy: the optimizers were built from the
        unsharded model, so their parameter groups are re-pointed to the sharded parameters (while they have no
        state; a scheduler holds the optimizer, not the parameters, and needs nothing)."""
        names = parameter_names(module)
        for optimizer in optimizers:
            check_stateless(optimizer)
        module = self.setup_module(module)
        for optimizer in optimizers:
            repoint_optimizer(optimizer, names, module)
        return module, [self.setup_optimizer(opt) for opt in optimizers], scheduler

    def _create_optimizer_after(self, problem: str) -> str:
        """FSDP also takes the optimizer at joint setup (re-pointed to the shards), so its advice offers both."""
        return (f"{problem}. FSDP replaces every parameter with a sharded one when it sets up the model, so the "
                "optimizer must update that model's parameters: set both up together, `model, optimizer = "
                "fabric.setup(model, optimizer)` with the optimizer built from that model, or create it afterwards: "
                f"{OPTIMIZER_AFTER_SETUP}")

    def setup_module(self, module: Module) -> Module:
        if self._mesh is None:
            raise RuntimeError("FSDPStrategy has no device mesh yet: call `fabric.launch()` before setting up models")
        on_meta = has_meta_tensors(module)
        if on_meta:
            check_materializable(module)
        apply_activation_checkpointing(module, self.activation_checkpointing_policy)
        sharded = shard(module, self.auto_wrap_policy, self._mesh,
                        reshard_after_forward=self.sharding_strategy != "SHARD_GRAD_OP",
                        mp_policy=self.mixed_precision or mixed_precision_policy(self.precision),
                        offload=self._offload_policy)
        if on_meta:
            materialize(sharded, torch.device("cpu") if self.cpu_offload else self.root_device,
                        stream=self._mesh.get_local_rank(self._mesh.ndim - 1))  # the shard dimension is the last
        self._check_before_gathering(sharded)
        return self._set_up(sharded)

    def state_layout(self) -> StateLayout:
        """Each parameter, its gradient and its optimizer states cut by rows over the ranks (within each node under
        HYBRID_SHARD); a full copy of each under NO_SHARD."""
        if self.sharding_strategy == "NO_SHARD":
            return StateLayout()
        return StateLayout("rows", "rows", "rows", shard_over_nodes=self.sharding_strategy != "HYBRID_SHARD")

    # -- the training step ----------------------------------------------------------------------------------------
    def discard_backward(self) -> None:
        """A forward that stopped midway on one rank (an out-of-memory error) leaves its shard groups gathered and
        their training state in mid-forward, and a finished forward on the others leaves the root's parameters
        gathered for the backward that never runs: the next forward would all-gather on some ranks only. FSDP2's
        `reset_iter_state` on each model set up whose forward began in the attempt (`out_of_memory_checks` notes
        them; one never run has no state to reset, and torch's call fails on it) reshards every group and clears
        that state, on every rank alike."""
        if not hasattr(FSDPModule, "reset_iter_state"):
            raise RuntimeError(f"FSDP on torch {torch.__version__} cannot drop a forward that stopped midway "
                               "(FSDPModule.reset_iter_state is missing), so the ranks cannot continue after an "
                               "out-of-memory error agreed on: upgrade torch")
        for module in self._forwarded_in_attempt:
            module.reset_iter_state()  # type: ignore[operator]  # an FSDPModule: every module set up here is one

    @contextmanager
    def out_of_memory_checks(self, check: Callable[[], None]) -> Iterator[None]:
        """Every shard group all-gathers its parameters as its forward starts: a rank that ran out of memory in
        an earlier group's forward (or since the last backward) has left, so `check` runs first in each (one flag
        all-reduce per shard group and forward, while an attempt runs), also in models set up during the attempt
        (inside the function `find_executable_batch_size` retries)."""
        self._out_of_memory_check = check
        for module in self._set_up_modules:
            self._check_before_gathering(module)
        try:
            yield
        finally:
            self._out_of_memory_check = None
            for handle in self._out_of_memory_hooks:
                handle.remove()
            self._out_of_memory_hooks.clear()
            self._forwarded_in_attempt.clear()

    def _check_before_gathering(self, module: Module) -> None:
        check = self._out_of_memory_check
        if check is None:
            return

        def check_first(submodule: Module, args: Any) -> None:
            check()
            if submodule is module and module not in self._forwarded_in_attempt:
                self._forwarded_in_attempt.append(module)

        # Prepended: it runs before FSDP's own pre-forward hook, the one that all-gathers.
        self._out_of_memory_hooks += [submodule.register_forward_pre_hook(check_first, prepend=True)
                                      for submodule in module.modules() if isinstance(submodule, FSDPModule)]

    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]:
        """Gradients accumulate unsharded and unreduced inside; the first backward outside reduces them all."""
        if not enabled:
            return nullcontext()
        if not isinstance(module, FSDPModule):
            raise TypeError(f"no_backward_sync needs the module returned by fabric.setup_module(); got "
                            f"{type(module).__name__}")
        return without_gradient_sync(module)
