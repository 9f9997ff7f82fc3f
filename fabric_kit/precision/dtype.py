"""Precisions that run the whole model in one dtype: `64-true` (`DoublePrecision`), `16-true` / `bf16-true`
(`HalfPrecision`)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch

from fabric_kit.collections import apply_to_collection, convert_tensors
from fabric_kit.precision.precision import Precision

HALF_PRECISIONS = {"16-true": torch.float16, "bf16-true": torch.bfloat16}


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Tensors and parameters created inside get `dtype`; the previous default comes back afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def to_floating_dtype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`module` with its floating-point parameters and buffers in `dtype`; complex ones are left as they are
    (`module.to(dtype=...)` would cast them to real, dropping the imaginary part), integer ones too."""
    converters = {torch.float64: module.double, torch.float32: module.float, torch.float16: module.half,
                  torch.bfloat16: module.bfloat16}
    return converters[dtype]()


def to_floating_dtype_tensor(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` in `dtype` if it is floating-point (complex and integer tensors are left alone)."""
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def floating_inputs_to(data: Any, dtype: torch.dtype) -> Any:
    """Every floating-point tensor in `data` (float64 from numpy too) in `dtype`, as Lightning converts a model's
    inputs; integer labels and masks are left alone."""
    return apply_to_collection(data, torch.Tensor, to_floating_dtype_tensor, dtype)


class TruePrecision(Precision):
    """Parameters, inputs and computation all in `dtype`; outputs come back in float32 for the loss code. The shared
    base of `DoublePrecision`, `HalfPrecision` and `BitsandbytesPrecision`."""

    transforms_io = True

    def __init__(self, dtype: torch.dtype, precision: str) -> None:
        self.dtype = dtype
        self.precision = precision

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return to_floating_dtype(module, self.dtype)

    def tensor_init_context(self) -> AbstractContextManager[Any]:
        return default_dtype(self.dtype)

    def forward_context(self) -> AbstractContextManager[Any]:
        return default_dtype(self.dtype)

    def convert_input(self, data: Any) -> Any:
        return floating_inputs_to(data, self.dtype)

    def convert_output(self, data: Any) -> Any:
        return convert_tensors(data, self.dtype, torch.float32)


class DoublePrecision(TruePrecision):
    """`64-true`: parameters, inputs and computation in float64 (Lightning's `DoublePrecision()`)."""

    def __init__(self) -> None:
        super().__init__(torch.float64, "64-true")


class HalfPrecision(TruePrecision):
    """`16-true` / `bf16-true`: parameters, inputs and computation in float16 or bfloat16, no loss scaling
    (Lightning's `HalfPrecision(precision="16-true")`)."""

    def __init__(self, precision: str = "16-true") -> None:
        if precision not in HALF_PRECISIONS:
            raise ValueError(f"HalfPrecision(precision={precision!r}) is not supported; accepted: "
                             f"{', '.join(HALF_PRECISIONS)}")
        super().__init__(HALF_PRECISIONS[precision], precision)
