"""Automatic mixed precision (`16-mixed`, `bf16-mixed`): float32 weights, autocast compute, a GradScaler for fp16."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from fabric_kit.collections import convert_tensors
from fabric_kit.precision.dtype import floating_inputs_to
from fabric_kit.precision.precision import Precision

MIXED_PRECISIONS = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


class LossScaling(Precision):
    """The fp16 loss scaler's part of a precision, shared by `MixedPrecision` and `FSDPPrecision`: with a `scaler`
    the loss is scaled, so `fabric.backward(loss)` is required (a plain `loss.backward()` would leave unscaled
    gradients that the scaler then divides again); without one every method is the base class's."""

    scaler: torch.amp.GradScaler | None = None
    _backward_seen = False

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
            raise RuntimeError(f"precision={self.precision!r} scales the loss: call `fabric.backward(loss)` instead "
                               "of `loss.backward()` before `optimizer.step()`")
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


def check_scaler(owner: str, precision: str, scaler: object) -> None:
    """Only fp16 needs a loss scaler: one given with another precision is a mistake, not something to ignore."""
    if scaler is not None and precision != "16-mixed":
        raise ValueError(f"{owner}(precision={precision!r}) takes no scaler (only '16-mixed' scales the loss), "
                         f"got {scaler!r}")


class MixedPrecision(LossScaling):
    """Lightning's `MixedPrecision(precision, device, scaler=None)`: forward under `torch.autocast(device)` in
    float16 (`"16-mixed"`, with a `torch.amp.GradScaler(device)` unless `scaler` is given) or bfloat16
    (`"bf16-mixed"`, no scaler). Floating-point inputs take the autocast dtype; outputs come back in float32."""

    transforms_io = True

    def __init__(self, precision: str, device: str, scaler: torch.amp.GradScaler | None = None) -> None:
        if precision not in MIXED_PRECISIONS:
            raise ValueError(f"MixedPrecision(precision={precision!r}) is not supported; accepted: "
                             f"{', '.join(MIXED_PRECISIONS)}")
        check_scaler("MixedPrecision", precision, scaler)
        self.precision = precision
        self.device = device
        self.dtype = MIXED_PRECISIONS[precision]
        if scaler is None and precision == "16-mixed":
            scaler = torch.amp.GradScaler(device)
        self.scaler = scaler

    def forward_context(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device, dtype=self.dtype)

    def convert_input(self, data: Any) -> Any:
        return floating_inputs_to(data, self.dtype)

    def convert_output(self, data: Any) -> Any:
        return convert_tensors(data, self.dtype, torch.get_default_dtype())
