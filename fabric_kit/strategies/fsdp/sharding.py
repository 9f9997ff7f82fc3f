"""How a module is cut into FSDP shards: which submodules become their own shard group, which recompute their
activations in backward, over which device mesh, and how a model created on the meta device gets real storage."""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.nn import Module
from torch.optim import Optimizer

try:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import FSDPModule as FSDPModule  # for the strategy, behind this import's error
    from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy, fully_shard
except ImportError as error:  # FSDP2 is public from torch 2.6
    raise ImportError(f"strategy 'fsdp' needs torch>=2.6 (FSDP2 `fully_shard`); this is torch {torch.__version__}"
                      ) from error
from torch.utils.checkpoint import checkpoint

from fabric_kit.empty_init import owns_meta_tensors

ModulePolicy = Iterable[type] | Callable[[Module], bool] | None
"""A set of module classes, or a function `module -> bool`; None selects nothing."""

def as_predicate(policy: ModulePolicy, name: str) -> Callable[[Module], bool]:
    """Turn a policy argument into `module -> bool`, rejecting anything else with what is accepted."""
    if policy is None:
        return lambda module: False
    if isinstance(policy, type) and issubclass(policy, Module):
        policy = {policy}
    if isinstance(policy, (set, frozenset, list, tuple)):
        classes = tuple(policy)
        bad = [c for c in classes if not (isinstance(c, type) and issubclass(c, Module))]
        if bad:
            raise TypeError(f"{name}={policy!r} holds {bad}, which are not nn.Module classes; accepted: a set of "
                            "nn.Module classes, or a function `module -> bool`")
        return lambda module: isinstance(module, classes)
    if callable(policy) and not isinstance(policy, type):  # a class other than a module's is no predicate
        return policy
    raise TypeError(f"{name}={policy!r} is not supported; accepted: a set of nn.Module classes, or a function "
                    "`module -> bool`")


def apply_activation_checkpointing(module: Module, selects: Callable[[Module], bool]) -> None:
    """Selected submodules keep no activations from forward; backward recomputes them. The forward is wrapped in
    place (no wrapper module), so parameter names and checkpoints keep their plain keys."""
    for submodule in module.modules():
        if selects(submodule) and not getattr(submodule, "_fabric_kit_checkpointed", False):
            submodule.forward = functools.partial(checkpoint, submodule.forward, use_reentrant=False)
            submodule._fabric_kit_checkpointed = True  # type: ignore[assignment]  # a plain flag, not a tensor


def shard(module: Module, selects: Callable[[Module], bool], mesh: DeviceMesh, reshard_after_forward: bool,
          mp_policy: MixedPrecisionPolicy, offload: OffloadPolicy | None) -> Module:
    """`fully_shard` every selected submodule, innermost first, then the root (which takes every parameter left)."""
    options: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward,
                               "mp_policy": mp_policy, "offload_policy": offload or OffloadPolicy()}
    # named_modules lists parents before their children: reversed, every child comes before its parent.
    for _, submodule in reversed(list(module.named_modules())):
        if submodule is not module and selects(submodule) and not isinstance(submodule, FSDPModule):
            fully_shard(submodule, **options)
    fully_shard(module, **options)
    return module  # an FSDPModule now: fully_shard changes the module's class in place


def check_stateless(optimizer: Optimizer) -> None:
    """An optimizer to re-point must have no state yet: its state would belong to the replaced parameters."""
    if optimizer.state:
        raise ValueError(f"the {type(optimizer).__name__} already holds state for {len(optimizer.state)} parameters "
                         "(it has stepped, or its state was loaded), which FSDP cannot carry over to the sharded "
                         "parameters: set the model and optimizer up before the first step and load their "
                         "checkpoint afterwards with `fabric.load`")


def materialize(module: Module, device: torch.device, stream: int, sync_replicas: bool = False,
                group: dist.ProcessGroup | None = None) -> None:
    """Give the sharded meta tensors storage on `device` (each rank only its shards) and initialise them.

    On CPU, DTensor draws each shard from the process's own generator: ranks seeded alike would fill every shard
    with the same numbers (rows repeated across shards). Each rank draws from random stream `stream` instead: ranks
    holding the same shards may share one (FSDP's replicas of one shard index). Where they cannot (tensor parallel:
    a row-wise layer's bias is replicated over the ranks that split its weight), `sync_replicas` copies every
    initialised tensor from the first rank of each mesh dimension it is replicated over (plain tensors: from the
    first rank of `group`, default the world), once, so replicas start equal.
    """
    owners = [m for m in module.modules() if owns_meta_tensors(m)]
    for owner in owners:  # only these: layers created with storage keep their values
        owner.to_empty(device=device, recurse=False)
    seed = int(torch.randint(0, 2**62, ()))  # drawn alike on every rank, advancing every rank's generator alike
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        if device.type == "cpu":
            torch.manual_seed(seed + stream)
        for owner in owners:
            owner.reset_parameters()  # type: ignore[operator]  # checked by check_materializable
    if sync_replicas:
        with torch.no_grad():
            for owner in owners:
                for tensor in (*owner.parameters(recurse=False), *owner.buffers(recurse=False)):
                    _copy_from_first_replica(tensor, group)


def _copy_from_first_replica(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> None:
    if not isinstance(tensor, DTensor):
        dist.broadcast(tensor, group=group, group_src=0)
        return
    local = tensor.to_local()
    for dim, placement in enumerate(tensor.placements):
        if placement.is_replicate():
            dist.broadcast(local, group=tensor.device_mesh.get_group(dim), group_src=0)


@contextmanager
def without_gradient_sync(module: Module) -> Iterator[None]:
    """Backward inside leaves gradients unsharded and unreduced in every FSDP-sharded submodule of `module`; the
    first backward outside reduces them all."""
    sharded = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for submodule in sharded:
        submodule.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for submodule in sharded:
            submodule.set_requires_gradient_sync(True, recurse=False)
