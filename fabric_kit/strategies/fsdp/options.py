"""`FSDPStrategy`'s arguments in every form users pass them (Lightning's FSDP1-style objects and enums, FSDP2's
policies, booleans, strings in any case), each turned into the one FSDP2 value it means, or refused with what is
accepted."""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffload, CPUOffloadPolicy, MixedPrecision, MixedPrecisionPolicy, ShardingStrategy

from fabric_kit.strategies.fsdp.sharding import ModulePolicy

SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")

CPUOffloadArgument = bool | CPUOffload | CPUOffloadPolicy | None
"""True / False (None: False), torch's FSDP1 `CPUOffload(offload_params=...)` or FSDP2's `CPUOffloadPolicy()`."""
MixedPrecisionArgument = MixedPrecisionPolicy | MixedPrecision | None
"""FSDP2's `MixedPrecisionPolicy`, or the FSDP1 `MixedPrecision` object Lightning takes; None: from the precision."""
DeviceMeshArgument = DeviceMesh | tuple[int, int] | None
"""A `DeviceMesh` (1-D: shard; 2-D: replicate x shard), or `(replicas, shard size)`; None: from sharding_strategy."""


def offload_policy(cpu_offload: CPUOffloadArgument) -> CPUOffloadPolicy | None:
    """The FSDP2 offload policy `cpu_offload` asks for, None for none."""
    if cpu_offload is None or cpu_offload is False:
        return None
    if cpu_offload is True:
        return CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    if isinstance(cpu_offload, CPUOffloadPolicy):
        return cpu_offload
    if isinstance(cpu_offload, CPUOffload):
        return CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload.offload_params else None
    raise TypeError(f"cpu_offload={cpu_offload!r} is not supported; accepted: True, False, "
                    "torch.distributed.fsdp.CPUOffload(offload_params=...) or CPUOffloadPolicy()")


def mixed_precision_policy(mixed_precision: MixedPrecisionArgument) -> MixedPrecisionPolicy | None:
    """FSDP2's policy for `mixed_precision`. Of FSDP1's `MixedPrecision`, param_dtype, reduce_dtype and the forward
    input casts map; FSDP2 casts no buffers and keeps no low-precision gradients, so those settings are refused."""
    if mixed_precision is None or isinstance(mixed_precision, MixedPrecisionPolicy):
        return mixed_precision
    if not isinstance(mixed_precision, MixedPrecision):
        raise TypeError(f"mixed_precision={mixed_precision!r} is not supported; accepted: "
                        "torch.distributed.fsdp.MixedPrecisionPolicy(...) or MixedPrecision(...), or None to "
                        "follow Fabric's precision")
    unmapped = {"buffer_dtype": mixed_precision.buffer_dtype is not None,
                "keep_low_precision_grads": mixed_precision.keep_low_precision_grads}
    refused = [name for name, set_ in unmapped.items() if set_]
    if refused:
        raise ValueError(f"mixed_precision={mixed_precision!r} sets {', '.join(refused)}, which FSDP2 (fully_shard) "
                         "has no counterpart for: it casts no buffers (create them in the dtype you want) and "
                         "reduces gradients in reduce_dtype; leave them unset or pass a MixedPrecisionPolicy")
    return MixedPrecisionPolicy(param_dtype=mixed_precision.param_dtype, reduce_dtype=mixed_precision.reduce_dtype,
                                cast_forward_inputs=mixed_precision.cast_forward_inputs
                                or mixed_precision.cast_root_forward_inputs)


def sharding_strategy_name(value: str | ShardingStrategy) -> str:
    """"FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD" or "NO_SHARD", from a name in any case or the enum."""
    name = value.name if isinstance(value, ShardingStrategy) else str(value).upper()
    if name not in SHARDING_STRATEGIES:
        raise ValueError(f"sharding_strategy={value!r} is not supported; accepted: {', '.join(SHARDING_STRATEGIES)} "
                         "(in any case, or as torch.distributed.fsdp.ShardingStrategy members)")
    return name


def check_device_mesh(device_mesh: DeviceMeshArgument, sharding_strategy: str) -> None:
    """Refuse a mesh that is neither a DeviceMesh nor two positive ints, or one that contradicts NO_SHARD."""
    if device_mesh is None:
        return
    if not isinstance(device_mesh, DeviceMesh) and not (
            isinstance(device_mesh, tuple) and len(device_mesh) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in device_mesh)):
        raise TypeError(f"device_mesh={device_mesh!r} is not supported; accepted: a torch DeviceMesh (1-D: "
                        "shard; 2-D: replicate x shard) or a tuple (replicas, shard size) of positive ints")
    if sharding_strategy == "NO_SHARD":
        raise ValueError(f"device_mesh={device_mesh!r} and sharding_strategy='NO_SHARD' contradict each other: the "
                         "mesh says how to shard; pass one of them")


def build_mesh(device_mesh: DeviceMeshArgument, sharding_strategy: str, device_type: str, world_size: int,
               num_nodes: int) -> DeviceMesh:
    """The mesh to shard over: the user's; else from `sharding_strategy`: 1-D for FULL_SHARD / SHARD_GRAD_OP,
    HYBRID_SHARD shards within a node and replicates across nodes, NO_SHARD replicates everywhere (a shard
    dimension of 1), i.e. DDP through FSDP's machinery."""
    if isinstance(device_mesh, DeviceMesh):
        return device_mesh
    if device_mesh is not None:
        replicas, shards = device_mesh
        if replicas * shards != world_size:
            raise ValueError(f"device_mesh={device_mesh} holds {replicas * shards} processes but the job runs "
                             f"{world_size}; pass (replicas, shard size) whose product is {world_size}")
        return init_device_mesh(device_type, device_mesh, mesh_dim_names=("replicate", "shard"))
    if sharding_strategy == "HYBRID_SHARD":
        return init_device_mesh(device_type, (num_nodes, world_size // num_nodes),
                                mesh_dim_names=("replicate", "shard"))
    if sharding_strategy == "NO_SHARD":
        return init_device_mesh(device_type, (world_size, 1), mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(device_type, (world_size,), mesh_dim_names=("shard",))


def activation_checkpointing_policy(activation_checkpointing: Any, policy: ModulePolicy) -> ModulePolicy:
    """Lightning's older `activation_checkpointing=` (a module class or a list of them), accepted with a
    deprecation warning as `activation_checkpointing_policy`; giving both is an error."""
    if activation_checkpointing is None:
        return policy
    if policy is not None:
        raise ValueError("FSDPStrategy got both activation_checkpointing and activation_checkpointing_policy; pass "
                         "only activation_checkpointing_policy")
    classes = set(activation_checkpointing) if isinstance(activation_checkpointing, (list, tuple, set)) else {
        activation_checkpointing}
    warnings.warn(f"FSDPStrategy(activation_checkpointing={activation_checkpointing!r}) is deprecated; use "
                  f"FSDPStrategy(activation_checkpointing_policy={classes!r})", DeprecationWarning, stacklevel=3)
    return classes
