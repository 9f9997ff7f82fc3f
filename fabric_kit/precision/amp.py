"""Automatic mixed precision (`16-mixed`, `bf16-mixed`): float32 weights, autocast compute, a GradScaler for fp16."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from fabric_kit.collections import apply_to_collection, convert_tensors
from fabric_kit.precision.dtype import to_floating_dtype_tensor
from fabric_kit.precision.precision import Precision


class MixedPrecision(Precision):
    """Runs forward under `torch.autocast`. With fp16 the loss is scaled, so `fabric.backward(loss)` is required:
    a plain `loss.backward()` would leave unscaled gradients that the scaler then divides again."""

    transforms_io = True

    def __init__(self, dtype: torch.dtype, device_type: str, name: str) -> None:
        self.dtype = dtype
        self.device_type = device_type
        self.name = name
        self.scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None
        self._backward_seen = False

    def forward_context(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device_type, dtype=self.dtype)

    def convert_input(self, data: Any) -> Any:
        # Floating-point inputs take the autocast dtype, as in Lightning; integer labels and masks are left alone.
        return apply_to_collection(data, Tensor, to_floating_dtype_tensor, self.dtype)

    def convert_output(self, data: Any) -> Any:
        return convert_tensors(data, self.dtype, torch.get_default_dtype())

    def backward(self, tensor: Tensor, module: torch.nn.Module | None, *args: Any, **kwargs: Any) -> None:
        if self.scaler is not None:
            tensor = self.scaler.scale(tensor)
            self._backward_seen = True
        tensor.backward(*args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        if self.scaler is None:
            return optimizer.step(**kwargs)
        closure = kwargs.pop("closure", None)
        if closure is not None:
            # The scaler cannot step with a closure: run it first so gradients exist, then step.
            closure()
        if not self._backward_seen:
            raise RuntimeError(f"precision={self.name!r} scales the loss: call `fabric.backward(loss)` instead of "
                               "`loss.backward()` before `optimizer.step()`")
        self._backward_seen = False
        result = self.scaler.step(optimizer, **kwargs)
        self.scaler.update()
        return result

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.scaler is not None and "scaler" in state_dict:
            self.scaler.load_state_dict(state_dict["scaler"])
