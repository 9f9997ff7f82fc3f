"""Precision under FSDP (`FSDPPrecision`). FSDP itself casts each shard's parameters to the compute dtype when it
gathers them and reduces gradients in float32, so mixed precision needs no autocast; the fp16 loss scaler must agree
across ranks on whether any rank's gradient shard overflowed. The `-true` precisions convert the module before it is
sharded, as on one device."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy

from fabric_kit.collections import convert_tensors
from fabric_kit.precision.amp import MIXED_PRECISIONS, LossScaling, MixedPrecision, check_scaler
from fabric_kit.precision.dtype import (
    HALF_PRECISIONS,
    HalfPrecision,
    default_dtype,
    floating_inputs_to,
    to_floating_dtype,
)
from fabric_kit.precision.precision import Precision

if TYPE_CHECKING:
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

FSDP_PRECISIONS = ("32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed")


class FSDPPrecision(LossScaling):
    """Lightning's `FSDPPrecision(precision, scaler=None)`. `"16-mixed"` / `"bf16-mixed"`: float32 master shards,
    compute in the half dtype through FSDP's `MixedPrecisionPolicy`, float32 gradient reduction, and for fp16 a
    `ShardedGradScaler` (on CUDA when there is one, else on the CPU) unless `scaler` is given. `"16-true"` /
    `"bf16-true"`: the module is converted to the half dtype before sharding. `"32-true"`: float32 throughout."""

    def __init__(self, precision: str, scaler: ShardedGradScaler | None = None) -> None:
        if precision not in FSDP_PRECISIONS:
            raise ValueError(f"FSDPPrecision(precision={precision!r}) is not supported; accepted: "
                             f"{', '.join(FSDP_PRECISIONS)}")
        check_scaler("FSDPPrecision", precision, scaler)
        self.precision = precision
        self.dtype = {**MIXED_PRECISIONS, **HALF_PRECISIONS}.get(precision, torch.float32)
        self.transforms_io = precision != "32-true"
        self._converts_module = precision in HALF_PRECISIONS
        if scaler is None and precision == "16-mixed":
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
            # Each rank sees only its shard of the gradients: the scaler all-reduces the overflow check.
            scaler = ShardedGradScaler("cuda" if torch.cuda.is_available() else "cpu")
        self.scaler = scaler

    @property
    def mixed_precision_policy(self) -> MixedPrecisionPolicy:
        """The policy `fully_shard` gets: a compute dtype for the mixed precisions, no casting otherwise."""
        if self.precision in MIXED_PRECISIONS:
            return MixedPrecisionPolicy(param_dtype=self.dtype, reduce_dtype=torch.float32)
        return MixedPrecisionPolicy()

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return to_floating_dtype(module, self.dtype) if self._converts_module else module

    def tensor_init_context(self) -> AbstractContextManager[Any]:
        return default_dtype(self.dtype) if self._converts_module else nullcontext()

    def forward_context(self) -> AbstractContextManager[Any]:
        return self.tensor_init_context()  # mixed precision is FSDP's cast when shards are gathered, not autocast

    def convert_input(self, data: Any) -> Any:
        return floating_inputs_to(data, self.dtype)

    def convert_output(self, data: Any) -> Any:
        return convert_tensors(data, self.dtype, torch.get_default_dtype())


def fsdp_precision(precision: Precision) -> Precision:
    """The FSDP counterpart of one of the plain precisions, as Lightning chooses it under FSDP; any other precision
    (`DoublePrecision`, `BitsandbytesPrecision`, an `FSDPPrecision` already) is kept as given."""
    if type(precision) not in (Precision, HalfPrecision, MixedPrecision):
        return precision
    scaler = None
    if isinstance(precision, MixedPrecision) and precision.scaler is not None:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
        scaler = ShardedGradScaler(precision.device)
    return FSDPPrecision(precision.precision, scaler)


def mixed_precision_policy(precision: Precision) -> MixedPrecisionPolicy:
    """The policy `fully_shard` gets for `precision` (no casting unless it is FSDP mixed precision)."""
    if isinstance(precision, FSDPPrecision):
        return precision.mixed_precision_policy
    return MixedPrecisionPolicy()
