"""Precision on XLA devices: float32, or bfloat16 (the TPU's native half type).

bf16 is applied to the model itself — converting the module for `bf16-true`, autocast on the "xla" device type
for `bf16-mixed` — never through the process-wide env variable XLA_USE_BF16, which torch_xla deprecated and which
silently retypes every float tensor, the optimizer state included. float16 has no native TPU support and no
working loss scaler on XLA, and float64 is emulated, so those are refused rather than run badly."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from fabric_kit.collections import convert_tensors
from fabric_kit.precision.dtype import default_dtype
from fabric_kit.precision.precision import Precision

XLA_PRECISIONS = ("32-true", "bf16-true", "bf16-mixed")


class XLAPrecision(Precision):
    """`32-true`: plain float32. `bf16-true`: parameters, inputs and compute in bfloat16. `bf16-mixed`: float32
    parameters, forward under `torch.autocast("xla", bfloat16)`. Outputs come back in float32 for the loss code.
    No loss scaling: bfloat16 has float32's exponent range."""

    def __init__(self, precision: str = "32-true") -> None:
        if precision not in XLA_PRECISIONS:
            raise ValueError(f"XLAPrecision(precision={precision!r}) is not supported; accepted: "
                             f"{', '.join(XLA_PRECISIONS)}")
        self.precision = precision
        self.transforms_io = precision != "32-true"
        self._true_bf16 = precision == "bf16-true"

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.bfloat16() if self._true_bf16 else module  # complex tensors are left alone

    def tensor_init_context(self) -> AbstractContextManager[Any]:
        return default_dtype(torch.bfloat16) if self._true_bf16 else nullcontext()

    def forward_context(self) -> AbstractContextManager[Any]:
        if self._true_bf16:
            return default_dtype(torch.bfloat16)
        if self.precision == "bf16-mixed":
            return torch.autocast("xla", dtype=torch.bfloat16)
        return nullcontext()

    def convert_input(self, data: Any) -> Any:
        return convert_tensors(data, torch.float32, torch.bfloat16) if self._true_bf16 else data

    def convert_output(self, data: Any) -> Any:
        return convert_tensors(data, torch.bfloat16, torch.float32)
