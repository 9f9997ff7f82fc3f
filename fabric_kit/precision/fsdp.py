"""Mixed precision under FSDP. FSDP itself casts each shard's parameters to the compute dtype when it gathers them
and reduces gradients in float32, so no autocast is needed; the fp16 loss scaler must agree across ranks on
whether any rank's gradient shard overflowed."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy

from fabric_kit.precision.amp import MixedPrecision
from fabric_kit.precision.precision import Precision


class FSDPMixedPrecision(MixedPrecision):
    """`16-mixed` / `bf16-mixed` for FSDP: float32 master shards, `dtype` compute, float32 gradient reduction."""

    def __init__(self, dtype: torch.dtype, device_type: str, name: str) -> None:
        super().__init__(dtype, device_type, name)
        if self.scaler is not None:
            # Each rank sees only its shard of the gradients: the overflow check is all-reduced.
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
            self.scaler = ShardedGradScaler(device_type)

    @property
    def mixed_precision_policy(self) -> MixedPrecisionPolicy:
        return MixedPrecisionPolicy(param_dtype=self.dtype, reduce_dtype=torch.float32)

    def forward_context(self) -> AbstractContextManager[Any]:
        return nullcontext()


def fsdp_precision(precision: Precision) -> Precision:
    """The FSDP counterpart of `precision`: mixed precision becomes an FSDP policy; true precisions (the module is
    converted before sharding) and float32 need nothing different."""
    if isinstance(precision, MixedPrecision) and not isinstance(precision, FSDPMixedPrecision):
        return FSDPMixedPrecision(precision.dtype, precision.device_type, precision.name)
    return precision


def mixed_precision_policy(precision: Precision) -> MixedPrecisionPolicy:
    """The policy `fully_shard` gets for `precision` (no casting unless it is FSDP mixed precision)."""
    if isinstance(precision, FSDPMixedPrecision):
        return precision.mixed_precision_policy
    return MixedPrecisionPolicy()
