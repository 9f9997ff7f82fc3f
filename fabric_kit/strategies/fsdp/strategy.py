"""Fully sharded data parallel (FSDP2, `torch.distributed.fsdp.fully_shard`): each rank holds a shard of every
parameter, gradient and optimizer state; parameters are gathered per shard group just for its forward and
backward. Models larger than one process's memory can be created on the meta device and materialise sharded."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.nn import Module
from torch.optim import Optimizer

from fabric_kit.accelerators import Accelerator
from fabric_kit.checkpoint import sharded as checkpoint
from fabric_kit.checkpoint.directory import Records
from fabric_kit.checkpoint.errors import reported_write_errors
from fabric_kit.checkpoint.sharded import PLAIN_ENTRIES, ShardedStateDict, is_sharded_checkpoint
from fabric_kit.checkpoint.sharded_reading import load_sharded
from fabric_kit.checkpoint.state import Filter
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
)
from fabric_kit.strategies.fsdp.writer import ReportingFileSystemWriter
from fabric_kit.strategies.parallel import ParallelStrategy, StartMethod
from fabric_kit.strategies.strategy import BackwardSyncControl

StateDictType = Literal["sharded", "full"]


class FSDPStrategy(ParallelStrategy, BackwardSyncControl):
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

    setup_module_first = True
    shards_parameters = True

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
        self._modules_sharded = 0

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
    def module_init_context(self, empty_init: bool | None = None) -> AbstractContextManager[Any]:
        """`empty_init=True` creates the model on the meta device (no memory); it materialises shard by shard in
        `setup_module`, each rank allocating only its shards."""
        if not empty_init:
            return super().module_init_context(empty_init)
        stack = ExitStack()
        stack.enter_context(torch.device("meta"))
        stack.enter_context(self.precision.module_init_context())
        return stack

    def module_to_device(self, module: Module) -> None:
        if not has_meta_tensors(module):  # meta tensors get their storage after sharding
            module.to(self.root_device)

    def setup_module_and_optimizers(self, module: Module, optimizers: list[Optimizer],
                                    scheduler: Any = None) -> tuple[Module, list[Optimizer], Any]:
        if optimizers:
            raise ValueError(_CREATE_OPTIMIZER_AFTER.format(
                problem=f"fabric.setup(model, optimizer) got {len(optimizers)} optimizer(s) created from the "
                        "unsharded model"))
        return super().setup_module_and_optimizers(module, optimizers, scheduler)

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
            materialize(sharded, torch.device("cpu") if self.cpu_offload else self.root_device, self._mesh)
        self._modules_sharded += 1
        return sharded

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        unsharded = sum(not isinstance(p, DTensor) for p in params)
        if self._modules_sharded == 0:
            raise ValueError(_CREATE_OPTIMIZER_AFTER.format(
                problem="fabric.setup_optimizers() was called before any model was set up"))
        if unsharded:
            raise ValueError(_CREATE_OPTIMIZER_AFTER.format(
                problem=f"the {type(optimizer).__name__} holds {unsharded} of its {len(params)} parameters from "
                        "a model that is not sharded (created before `fabric.setup_module(model)`?)"))
        return optimizer

    # -- the training step ----------------------------------------------------------------------------------------
    def clip_gradients_norm(self, module: Module, optimizer: Optimizer, max_norm: float, norm_type: float = 2.0,
                            error_if_nonfinite: bool = True) -> Tensor:
        """The norm over all ranks' gradient shards, returned as a plain tensor (the same on every rank)."""
        norm = super().clip_gradients_norm(module, optimizer, max_norm, norm_type, error_if_nonfinite)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]:
        """Gradients accumulate unsharded and unreduced inside; the first backward outside reduces them all."""
        if not enabled:
            return nullcontext()
        if not isinstance(module, FSDPModule):
            raise TypeError(f"no_backward_sync needs the module returned by fabric.setup_module(); got "
                            f"{type(module).__name__}")
        return _without_gradient_sync(module)

    # -- checkpoints: full state in one file, or every rank's shards in a DCP directory -------------------------
    def checkpoint_entries(self, state: dict[str, Any], filter: Filter) -> dict[str, Any]:
        """Models and optimizers through torch's state-dict API: full on rank 0 (`state_dict_type="full"`) or each
        rank's shards (`"sharded"`); the other entries as on one process."""
        modules, optimizers, rest = checkpoint.split_state(state)
        tensors = checkpoint.state_dicts(modules, optimizers, full=self.state_dict_type == "full", filter=filter)
        plain = super().checkpoint_entries(rest, {key: keep for key, keep in filter.items() if key in rest})
        return {key: tensors[key] if key in tensors else plain[key] for key in state}

    def write_entries(self, path: str, entries: dict[str, Any], state: dict[str, Any]) -> None:
        """`"sharded"`: a directory of DCP's files, every rank writing its shards, and one file for the other
        entries, swapped in once every rank wrote (a full disk is a `CheckpointWriteError` on every rank and leaves
        the previous checkpoint as it was). `"full"`: one file, from rank 0."""
        if self.state_dict_type == "full":
            super().write_entries(path, entries, state)
            return
        shards = {key: value for key, value in entries.items() if isinstance(value, ShardedStateDict)}
        written: Records = {}  # DCP's files, checksummed as they are written: the manifest needs no second read
        with self.checkpoint_directory(path, known=written) as staging:
            with reported_write_errors(path):
                dcp.save(shards, storage_writer=ReportingFileSystemWriter(staging, written))
            super().write_entries(str(staging / PLAIN_ENTRIES),
                                  {key: value for key, value in entries.items() if key not in shards}, state)

    def read_entries(self, path: str, state: dict[str, Any] | None, strict: bool, weights_only: bool) -> Any:
        """A full file (also one a single-process run wrote), or a sharded directory, whose shards are read into
        those of `state`'s models and optimizers."""
        if not is_sharded_checkpoint(path):
            return super().read_entries(path, state, strict, weights_only)
        if state is None:
            raise ValueError(f"loading the sharded checkpoint {path!r} needs the objects to restore, e.g. "
                             "`fabric.load(path, {'model': model, 'optimizer': optimizer})`; to read it as plain "
                             f"tensors, run `fabric consolidate {path} --output FILE` and load FILE")
        self.verify_checkpoint_directory(path)
        # The other entries first: a refused or damaged file stops the load before any shard is overwritten.
        entries = super().read_entries(str(Path(path) / PLAIN_ENTRIES), state, strict, weights_only)
        modules, optimizers, _ = checkpoint.split_state(state)
        shards = checkpoint.state_dicts(modules, optimizers, full=False)
        load_sharded(shards, path, strict=strict, weights_only=weights_only)
        return {**entries, **shards}

    def restore_entries(self, state: dict[str, Any], entries: dict[str, Any], strict: bool) -> dict[str, Any]:
        """Models and optimizers through torch's state-dict API (full state is sliced into this rank's shards);
        the other entries as on one process."""
        modules, optimizers, rest = checkpoint.split_state(state)
        # Placeholders for the sharded objects, so strict loading names every missing entry in one place.
        placeholders = {**rest, **{key: None for key in (*modules, *optimizers)}}
        remainder = super().restore_entries(placeholders, entries, strict)
        checkpoint.load_state_dicts(modules, optimizers, entries, strict=strict)
        state.update({key: placeholders[key] for key in rest})
        return remainder


@contextmanager
def _without_gradient_sync(module: FSDPModule) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


_CREATE_OPTIMIZER_AFTER = ("{problem}. FSDP replaces every parameter with a sharded one when it sets up the model, "
                           "so the optimizer must be created afterwards: `model = fabric.setup_module(model)`, then "
                           "`optimizer = torch.optim.AdamW(model.parameters())` and "
                           "`optimizer = fabric.setup_optimizers(optimizer)`")
